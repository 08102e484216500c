"""A deploy's resume state (experiments/deploy_resume.py, deploy_journal.py), driven in this process: a comparison
interrupted mid-run and resumed from the state folder writes the run directory an uninterrupted one writes (timings
aside), reruns nothing that finished, and bad resumes are refused by name before anything starts. The Flower side
(a killed ServerApp on loopback) is tests/flower/test_resume_deploy.py."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from fedarena import config as cfg
from fedarena.cli import app
from fedarena.core.types import ClientState, FedarenaError
from fedarena.experiments.compare import InProcess, run_experiment
from fedarena.experiments.deploy_journal import Journal, _decode_states, _encode_states
from fedarena.experiments.deploy_resume import check, state_dir
from fedarena.experiments.rundir import RUN_STATE


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


class Crash(Exception):
    """The ServerApp dies."""


def make_config(rounds: int = 4, **sets) -> cfg.Config:
    base = {"data": {"name": "digits", "partition": "dirichlet", "alpha": 0.5, "num_clients": 6},
            "train": {"rounds": rounds, "clients_per_round": 3, "eval_every": 2}, "model": {"name": "mlr"},
            "run": {"algorithms": "fedavg,fedper", "seed": 5, "engine": "reference"}}
    for key, value in sets.items():
        section, name = key.split("__")
        base.setdefault(section, {})[name] = value
    return cfg.build(None, base, [])


def crash_at(algorithm: str, count: int, seen: list):
    def on_round(name: str, n: int) -> None:
        seen.append((name, n))
        if (name, n) == (algorithm, count):
            raise Crash
    return on_round


def untimed(value):
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != RUN_STATE}


def assert_same_run(a: Path, b: Path) -> None:
    """The same run directory, timings aside (summary.json's seconds, run-state.json's clock)."""
    nan = lambda rows: [{k: "nan" if v != v else v for k, v in r.items()} for r in rows]  # noqa: E731
    assert nan(pq.read_table(a / "metrics.parquet").to_pylist()) == nan(pq.read_table(b / "metrics.parquet").to_pylist())
    assert untimed(json.loads((a / "summary.json").read_text())) == untimed(json.loads((b / "summary.json").read_text()))
    assert digest(a / "models") == digest(b / "models") and digest(a / "forget") == digest(b / "forget")
    assert (a / "config.toml").read_text() == (b / "config.toml").read_text()
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())


def interrupt(config: cfg.Config, out: Path, algorithm: str, count: int) -> list:
    seen: list = []
    with pytest.raises(Crash):
        run_experiment(config, InProcess("reference"), out, crash_at(algorithm, count, seen),
                       train=Journal(out, config, False).train)
    assert not out.exists()  # the run directory is written at the end only
    return seen


def resume(config: cfg.Config, out: Path) -> list:
    seen: list = []
    journal = Journal(out, config, True)
    run_experiment(config, InProcess("reference"), out, lambda n, r: seen.append((n, r)), train=journal.train)
    journal.close()
    return seen


def test_an_interrupted_comparison_resumes_to_the_uninterrupted_run_directory(tmp_path):
    config = make_config(run__seeds=2)
    out = tmp_path / "run"
    seen = interrupt(config, out, "fedper", 4 + 3)  # seed 6 (the second), fedper, round 3 (rounds count across seeds)
    assert seen[-1] == ("fedper", 7) and len(seen) == 4 + 4 + 4 + 3
    state = state_dir(out)
    assert state == tmp_path / "run.resume"
    progress = {f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text())
                for p in state.glob("seed-*/*/progress.json")}
    assert {k: (v["round"], v["finished"]) for k, v in progress.items()} == {
        "seed-5/fedavg": (4, True), "seed-5/fedper": (4, True), "seed-6/fedavg": (4, True), "seed-6/fedper": (3, False)}
    # one checkpoint per (algorithm, seed): the last one; the server's forget material kept once per round
    assert sorted(p.name for p in (state / "seed-6" / "fedper").glob("*.safetensors")) == ["clients-r0003.safetensors",
                                                                                           "server-r0003.safetensors"]
    assert sorted(p.name for p in (state / "seed-6" / "fedper" / "kept").iterdir()) == [
        "norms.json", *(f"server-r{r:04d}.safetensors" for r in range(4))]
    assert resume(config, out) == [("fedper", 8)]  # only round 4 of the one in progress is trained again
    run_experiment(config, InProcess("reference"), tmp_path / "fresh")
    assert_same_run(out, tmp_path / "fresh")
    assert not state.exists()  # a finished run leaves no state behind


@pytest.mark.parametrize("sets", [
    {"privacy__dp_clip": 1.0, "privacy__dp_noise": 1.0, "privacy__dp_mode": "central"},
    {"privacy__dp_clip": 1.0, "privacy__dp_noise": 1.0, "privacy__dp_mode": "local"},
    {"privacy__sgd_noise": 1.0, "privacy__sgd_clip": 1.0},
], ids=["central-dp", "local-dp", "dp-sgd"])
def test_the_privacy_budget_continues_across_the_restart(tmp_path, sets):
    config = make_config(**sets)
    out = tmp_path / "run"
    interrupt(config, out, "fedavg", 2)  # checkpoint of round 2 committed, then the crash
    assert resume(config, out) == [("fedavg", 3), ("fedavg", 4), *(("fedper", r) for r in range(1, 5))]
    fresh = run_experiment(config, InProcess("reference"), tmp_path / "fresh")
    assert_same_run(out, tmp_path / "fresh")
    assert all(r["privacy"] is not None for r in fresh["runs"])


class DiesInItsFirstRound(InProcess):
    def prepare(self, config: cfg.Config):
        p = super().prepare(config)

        def runtime(*args):
            clients = p.runtime(*args)
            clients.train = lambda *_, **__: (_ for _ in ()).throw(Crash())
            return clients

        return dataclasses.replace(p, runtime=runtime)


def test_a_crash_before_the_first_checkpoint_leaves_nothing_to_resume(tmp_path):
    config = make_config()
    out = tmp_path / "run"
    with pytest.raises(Crash):
        run_experiment(config, DiesInItsFirstRound("reference"), out, train=Journal(out, config, False).train)
    with pytest.raises(FedarenaError, match="no resumable deploy state"):
        check(out, config, True)
    check(out, config, False)  # a fresh deploy may start


def test_bad_resumes_are_refused_by_name(tmp_path):
    config = make_config(run__algorithms="fedavg")
    out = tmp_path / "run"
    with pytest.raises(FedarenaError, match=r"--resume .*run: no resumable deploy state"):
        check(out, config, True)
    interrupt(config, out, "fedavg", 2)
    with pytest.raises(FedarenaError, match=r"holds the state of an interrupted deploy of .*: finish it with --resume"):
        check(out, config, False)
    other = make_config(run__algorithms="fedavg", train__rounds=5, train__lr=0.5)
    with pytest.raises(FedarenaError, match=r"config differs .*train\.lr is 0\.5, was .*; train\.rounds is 5, was 4"):
        check(out, other, True)
    check(out, config, True)
    (state_dir(out) / "journal.json").write_text('{"format": "something else"}')
    with pytest.raises(FedarenaError, match="journal.json is not a deploy state"):
        check(out, config, True)


def test_a_damaged_progress_file_is_refused_by_name(tmp_path):
    config = make_config(run__algorithms="fedavg")
    out = tmp_path / "run"
    interrupt(config, out, "fedavg", 2)
    progress = state_dir(out) / "seed-5" / "fedavg" / "progress.json"
    good = json.loads(progress.read_text())
    for damage in ({"round": "x"}, {"server": "../../elsewhere.safetensors"}, {"clients": "../x.safetensors"},
                   {"run": {**good["run"], "nope": 1}}, {"kept": ["missing.safetensors"]}, {"format": "other/1"}):
        progress.write_text(json.dumps(good | damage))
        with pytest.raises(FedarenaError, match="progress.json cannot be resumed"):
            resume(config, out)


def test_client_states_held_by_the_server_round_trip():
    head = torch.arange(6.0).reshape(2, 3)
    states = {3: ClientState(params={"head.weight": head.t()}, extra={"c": torch.ones(1)}),  # not contiguous
              0: ClientState(), 5: ClientState(params={"head.weight": head})}  # a tensor shared with client 3
    back = _decode_states(_encode_states(states))
    assert sorted(back) == [0, 3, 5] and back[0] == ClientState()
    assert torch.equal(back[3].params["head.weight"], head.t()) and torch.equal(back[5].params["head.weight"], head)
    assert torch.equal(back[3].extra["c"], torch.ones(1))


def test_cli_resume_exits_2_with_one_line_before_any_process_starts(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(app, ["deploy", "--local", "2", "--resume", str(out)])
    assert res.exit_code == 2 and "no resumable deploy state" in res.output and len(res.output.strip().splitlines()) <= 3
    # the config `deploy --local 2 --rounds 2` builds, interrupted after its first round
    config = cfg.with_clients_per_round(cfg.build(None, {"data": {"num_clients": 2}, "train": {"rounds": 2},
                                                         "run": {"algorithms": "fedavg", "engine": "reference"}}, []), 2)
    interrupt(config, out, "fedavg", 1)
    res = runner.invoke(app, ["deploy", "--local", "2", "--rounds", "3", "--resume", str(out)])
    assert res.exit_code == 2 and "train.rounds is 3, was 2" in res.output, res.output
    res = runner.invoke(app, ["deploy", "--local", "2", "--resume", str(out), "--out", str(tmp_path / "elsewhere")])
    assert res.exit_code == 2 and "give no other --out" in res.output
    # the same config (read back from the state: no flags needed) but no node states to restart the SuperNodes on
    res = runner.invoke(app, ["deploy", "--local", "2", "--resume", str(out)])
    assert res.exit_code == 2 and "node states are not in" in res.output, res.output
    res = runner.invoke(app, ["deploy", "--local", "2", "--rounds", "2", "--out", str(out)])
    assert res.exit_code == 2 and "finish it with --resume" in res.output
    assert not out.exists() and (state_dir(out) / "journal.json").is_file()
