"""`fedarena continue`: a run continued from its checkpoints equals a run of that length from the start, its
privacy budget continues, and bad input is refused without writing anything."""

import dataclasses
import hashlib
import json
from importlib import resources
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from fedarena import config as cfg
from fedarena.cli import app
from fedarena.core.types import FedarenaError
from fedarena.experiments.compare import run_compare
from fedarena.experiments.continuation import continue_run
from fedarena.experiments.rundir import RUN_STATE

ALGOS = "fedavg,fedper,ditto,scaffold,local,centralized"
CLOCK = ("train_seconds", "wall_seconds", "seconds_to_target")  # the only values that may differ: time


def make_config(rounds: int, **sets):
    base = {"data": {"name": "digits", "partition": "dirichlet", "alpha": 0.5, "num_clients": 8},
            "train": {"rounds": rounds, "clients_per_round": 3, "eval_every": 2}, "model": {"name": "mlr"},
            "run": {"algorithms": ALGOS, "seed": 5, "engine": "reference"}}
    for key, value in sets.items():
        section, name = key.split("__")
        base.setdefault(section, {})[name] = value
    return cfg.build(None, base, [])


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def untimed(value):
    """A summary without its clock readings (and without where it was continued from)."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k not in CLOCK and k != "continued_from"}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def rows(run: Path) -> list[dict]:
    """metrics.parquet rows, NaN written as "nan" so that equal runs compare equal."""
    return [{k: "nan" if v != v else v for k, v in r.items()} for r in pq.read_table(run / "metrics.parquet").to_pylist()]


def assert_same_run(a: Path, b: Path) -> None:
    assert rows(a) == rows(b)
    models = sorted(p.relative_to(a) for p in (a / "models").rglob("*.safetensors"))
    assert models == sorted(p.relative_to(b) for p in (b / "models").rglob("*.safetensors"))
    for rel in models:
        x, y = load_file(a / rel), load_file(b / rel)
        assert x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x), rel
    kept = {k: v for k, v in digest(a / "forget").items() if not k.endswith(RUN_STATE)}
    assert kept == {k: v for k, v in digest(b / "forget").items() if not k.endswith(RUN_STATE)}
    assert untimed(json.loads((a / "summary.json").read_text())) == untimed(json.loads((b / "summary.json").read_text()))


@pytest.mark.parametrize("engine", ["reference", "vectorized"])
def test_continued_run_equals_a_run_of_that_length(tmp_path, engine):
    short = make_config(4, run__engine=engine)
    run_compare(short, tmp_path / "r4")
    before = digest(tmp_path / "r4")
    continue_run(tmp_path / "r4", 8, tmp_path / "r4-to-8")
    run_compare(dataclasses.replace(short, train=dataclasses.replace(short.train, rounds=8)), tmp_path / "r8")
    assert_same_run(tmp_path / "r4-to-8", tmp_path / "r8")
    assert digest(tmp_path / "r4") == before  # the original run is never modified
    summary = json.loads((tmp_path / "r4-to-8" / "summary.json").read_text())
    assert summary["continued_from"] == {"run": str(tmp_path / "r4"), "rounds": 4, "engine": engine}
    jsonschema.validate(summary, json.loads(resources.files("fedarena").joinpath("schemas/summary.schema.json").read_text()))
    clock = [h["train_seconds"] for h in summary["runs"][0]["history"]]
    assert clock == sorted(clock) and len(clock) == 4  # rounds 2, 4, 6, 8 on one clock


@pytest.mark.parametrize("mode", ["central", "local"])
def test_privacy_budget_continues_and_never_resets(tmp_path, mode):
    sets = dict(privacy__dp_clip=1.0, privacy__dp_noise=1.0, privacy__dp_mode=mode, run__algorithms="fedavg,ditto")
    run_compare(make_config(4, **sets), tmp_path / "r4")
    continue_run(tmp_path / "r4", 6, tmp_path / "r4-to-6")
    run_compare(make_config(6, **sets), tmp_path / "r6")
    assert_same_run(tmp_path / "r4-to-6", tmp_path / "r6")
    eps = [r["privacy"]["epsilon"] for r in json.loads((tmp_path / "r4-to-6" / "summary.json").read_text())["runs"]]
    first = [r["privacy"]["epsilon"] for r in json.loads((tmp_path / "r4" / "summary.json").read_text())["runs"]]
    assert all(e > f > 0 for e, f in zip(eps, first))  # more rounds, more epsilon: counted from round 1


def test_dp_sgd_steps_continue(tmp_path):
    sets = dict(privacy__sgd_noise=1.0, privacy__sgd_clip=1.0, run__algorithms="fedavg,fedper")
    run_compare(make_config(2, **sets), tmp_path / "r2")
    continue_run(tmp_path / "r2", 4, tmp_path / "r2-to-4")
    run_compare(make_config(4, **sets), tmp_path / "r4")
    assert_same_run(tmp_path / "r2-to-4", tmp_path / "r4")
    short = json.loads((tmp_path / "r2" / "summary.json").read_text())["runs"][0]["privacy"]["sample_level"]
    longer = json.loads((tmp_path / "r2-to-4" / "summary.json").read_text())["runs"][0]["privacy"]["sample_level"]
    assert longer["epsilon_max"] > short["epsilon_max"] > 0


def test_target_epsilon_stops_the_continuation_where_a_fresh_run_stops(tmp_path):
    sets = dict(privacy__dp_clip=1.0, privacy__dp_noise=0.8, run__algorithms="fedavg")
    fresh = run_compare(make_config(12, privacy__target_epsilon=1e9, **sets), tmp_path / "probe")
    eps = {h["round"]: h["epsilon"] for h in fresh["runs"][0]["history"]}
    target = (eps[4] + eps[6]) / 2  # allows 4 or 5 rounds, not 6
    run_compare(make_config(3, privacy__target_epsilon=target, **sets), tmp_path / "r3")
    summary = continue_run(tmp_path / "r3", 12, tmp_path / "r3-to-12")
    stopped = run_compare(make_config(12, privacy__target_epsilon=target, **sets), tmp_path / "r12")
    assert summary["runs"][0]["rounds"] == stopped["runs"][0]["rounds"] in (4, 5)
    assert summary["runs"][0]["privacy"]["epsilon"] == stopped["runs"][0]["privacy"]["epsilon"] <= target


def test_bad_input_is_refused_and_writes_nothing(tmp_path):
    run_compare(make_config(2, run__algorithms="fedavg"), tmp_path / "r2")
    cases = [
        (tmp_path / "r2", 2, "already trained 2 rounds"),
        (tmp_path / "nowhere", 4, "not a fedarena run directory"),
    ]
    for run, rounds, message in cases:
        with pytest.raises(FedarenaError, match=message):
            continue_run(run, rounds, tmp_path / "out")
        assert not (tmp_path / "out").exists()
    run_compare(make_config(2, run__algorithms="fedavg", forget__keep="none"), tmp_path / "none")
    with pytest.raises(FedarenaError, match="forget.keep=none"):
        continue_run(tmp_path / "none", 4, tmp_path / "out")
    (tmp_path / "r2" / "forget" / "fedavg" / RUN_STATE).write_text("{}")
    with pytest.raises(FedarenaError, match="run-state.json"):
        continue_run(tmp_path / "r2", 4, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_continue_exits_2_naming_the_problem(tmp_path):
    run_compare(make_config(2, run__algorithms="fedavg"), tmp_path / "r2")
    result = CliRunner().invoke(app, ["continue", str(tmp_path / "r2"), "--rounds", "1"])
    assert result.exit_code == 2 and "already trained 2 rounds" in result.output
    result = CliRunner().invoke(app, ["continue", str(tmp_path / "r2"), "--rounds", "3", "--out", str(tmp_path / "r3")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r3" / "summary.json").read_text())["runs"][0]["rounds"] == 3


def test_a_damaged_run_directory_is_refused_by_name(tmp_path):
    run_compare(make_config(2, run__algorithms="fedavg"), tmp_path / "r2")
    (tmp_path / "r2" / "metrics.parquet").write_bytes(b"not parquet")
    with pytest.raises(FedarenaError, match="metrics.parquet cannot be read"):
        continue_run(tmp_path / "r2", 4, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", [
    {"round": 2.0}, {"round": 0}, {"train_seconds": [0.1]}, {"wall_seconds": "x"}, {"privacy": 3},
    "drop:privacy", "drop:sample_level",
])
def test_a_malformed_run_state_is_refused_by_name(tmp_path, damage):
    run_compare(make_config(2, run__algorithms="fedavg"), tmp_path / "r2")
    path = tmp_path / "r2" / "forget" / "fedavg" / RUN_STATE
    state = json.loads(path.read_text())
    if isinstance(damage, str):
        del state[damage.split(":")[1]]
    else:
        state.update(damage)
    path.write_text(json.dumps(state))
    with pytest.raises(FedarenaError, match="run-state.json"):
        continue_run(tmp_path / "r2", 4, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("summary", ["[]", '{"runs": 3}', '{"runs": [{"algorithm": "fedavg", "history": [{}]}]}'])
def test_a_malformed_summary_is_refused_by_name(tmp_path, summary):
    run_compare(make_config(2, run__algorithms="fedavg"), tmp_path / "r2")
    (tmp_path / "r2" / "summary.json").write_text(summary)
    with pytest.raises(FedarenaError, match="malformed"):
        continue_run(tmp_path / "r2", 4, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage, match", [
    ({"train_seconds": [float("nan"), 1.0]}, "train_seconds must list one time >= 0 per round"),
    ({"train_seconds": [10**400, 1.0]}, "train_seconds must list one time >= 0 per round"),
    ({"train_seconds": [-1.0, 1.0]}, "train_seconds must list one time >= 0 per round"),
    ({"wall_seconds": float("inf")}, "wall_seconds must be a number >= 0"),
])
def test_a_run_state_clock_that_is_not_a_time_is_refused(tmp_path, damage, match):
    """Found by fuzzing (tests/fuzz/test_fuzz_rundir.py): NaN or Infinity in the clock passed and the continued
    run's summary.json then failed to be written (ValueError: not JSON compliant); an integer beyond any float
    raised OverflowError."""
    from fedarena.experiments.continuation import _run_state

    state = {"format": "fedarena-run-state/1", "round": 2, "train_seconds": [0.5, 1.0], "wall_seconds": 1.5,
             "privacy": None, "sample_level": None}
    (tmp_path / RUN_STATE).write_text(json.dumps({**state, **damage}))
    with pytest.raises(FedarenaError, match=f"run-state.json: {match}"):
        _run_state(tmp_path)


def test_summary_json_nested_too_deep_is_refused(tmp_path):
    """Found by fuzzing: JSON nested deeper than Python's parser recurses raised RecursionError."""
    from fedarena.experiments.rundir import read_json

    (tmp_path / "summary.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(FedarenaError, match=r"summary.json cannot be read as JSON: RecursionError"):
        read_json(tmp_path / "summary.json")


@pytest.mark.parametrize("change, match", [
    ({"global_acc": []}, r"summary.json: the history of 'fedavg' at round 1 has global_acc \[\]"),
    ({"test_acc": "x"}, r"column 'test_acc' must be a number in \[0, 1\] or null, got 'x'"),
    ({"test_acc": float("nan")}, r"column 'test_acc' must be a number in \[0, 1\] or null, got nan"),
    ({"test_loss": None}, r"column 'test_loss' must be a number where test_acc is one"),
    ({"bytes_up": 1.5}, r"column 'bytes_up' must be an integer >= 0, got 1.5"),
    ({"round": "1"}, r"column 'round' must be an integer, got '1'"),
])
def test_finished_rounds_of_other_types_are_refused(change, match):
    """Found by fuzzing: a summary history or metrics.parquet rows of other types passed `_history`, and the
    continued run then raised TypeError building its summary, wrote NaN into it (ValueError), or kept them."""
    from toy import federation

    from fedarena.experiments.continuation import _history

    data = federation([4, 5], [2, 3])
    summary = {"runs": [{"algorithm": "fedavg", "history": [{"round": 1, "global_acc": change.get("global_acc", 0.5)}]}]}
    row = {"algorithm": "fedavg", "round": 1, "client": "0", "sampled": True, "train_loss": 0.5, "test_acc": 0.5,
           "test_loss": 1.0, "bytes_up": 10, "bytes_down": 20}
    rows = [{**row, **{k: v for k, v in change.items() if k != "global_acc"}}, {**row, "client": "1"}]
    state = {"round": 1, "train_seconds": [0.5], "wall_seconds": 0.5}
    with pytest.raises(FedarenaError, match=match):
        _history("fedavg", summary, rows, data, state)
    run = _history("fedavg", {"runs": [{"algorithm": "fedavg", "history": []}]}, [row, {**row, "client": "1"}], data, state)
    assert run.evaluations[0].per_client_acc == [0.5, 0.5] and run.ledger.up == {(1, 0): 10, (1, 1): 10}
