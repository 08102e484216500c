"""The default study (a bare `fedarena compare`): every claims row measured, each step reproducible by its command,
nothing left behind when it fails, and only a bare compare runs it."""

import json
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedarena.algorithms import REGISTRY
from fedarena.cli import app
from fedarena.core.types import FedarenaError
from fedarena.experiments import study
from fedarena.report.claims import claim_table
from fedarena.report.recommend import recommend
from fedarena.report.render import load_summary
from fedarena.report.verdicts import Verdict

runner = CliRunner()
TIMINGS = ("wall_seconds", "seconds_to_target", "train_seconds")
TINY = study.Plan("tiny", rounds=3, seeds=2, sub_seeds=2, cells=("iid", "shards-2"))


def strip_timings(obj):
    if isinstance(obj, dict):
        return {k: strip_timings(v) for k, v in obj.items() if k not in TIMINGS}
    if isinstance(obj, list):
        return [strip_timings(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def quick(tmp_path_factory, one_torch_thread):
    """`fedarena compare --quick --report`, as a user types it."""
    out = tmp_path_factory.mktemp("study") / "quick"
    result = runner.invoke(app, ["compare", "--quick", "--report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_quick_study_measures_every_row(quick):
    out, output = quick
    summary = load_summary(out)
    table = claim_table(summary)
    for row in table.rows:
        assert row.verdict is not Verdict.NOT_MEASURED, (row.key, row.measured)
        assert "not measured" not in row.measured.lower(), (row.key, row.measured)
    assert "**not measured**" not in (out / "report.md").read_text()  # no verdict cell reads it
    meta = json.loads((out / "study.json").read_text())
    assert [s["name"] for s in meta["steps"]] == ["comparison", "sweep", "privacy", "attack", "forget"]
    assert meta["plan"] == {**study.QUICK.__dict__, "cells": list(study.QUICK.cells)}
    for step in meta["steps"]:
        assert (out / step["dir"]).is_dir() and step["seconds"] > 0
    assert {r["algorithm"] for r in summary["runs"]} == set(study.ALGORITHMS)
    assert summary["config"]["data"]["new_clients"] == study.QUICK.new_clients
    assert f"study directory: {out}" in output
    assert not list(out.parent.glob(".quick.partial-*"))


def test_best_pfl_is_personalized_where_one_wins(quick):
    out, _ = quick
    summary = load_summary(out)
    table = claim_table(summary)
    pfl_means = {a: sum(r["final"]["personal_acc_mean"] for r in rs) / len(rs) for a, rs in table.groups.items()
                 if a in table.sides.pfl_candidates}
    personalized = [a for a in pfl_means if table.groups[a][0]["family"] == "personalized"]
    winner = max(personalized, key=pfl_means.get)
    assert pfl_means[table.sides.pfl] == max(pfl_means.values())
    if pfl_means[winner] >= max(pfl_means.values()):
        assert table.sides.pfl == winner
    assert json.loads((out / "study.json").read_text())["best_pfl"] == table.sides.pfl


def test_sub_studies_run_the_two_sides_and_the_report_reads_them(quick):
    out, _ = quick
    summary = load_summary(out)
    meta, block = json.loads((out / "study.json").read_text()), summary["study"]
    sides = {meta["best_pfl"], meta["best_global"]}
    assert set(block["sweep"]["algorithms"]) == sides
    assert [c["cell"] for c in block["sweep"]["cells"]] == list(study.QUICK.cells)
    assert set(block["privacy"]["algorithms"]) == sides and block["privacy"]["cells"][0]["epsilon_target"] == 8.0
    assert block["attack"]["attack"]["kind"] == "sign-flip" and block["attack"]["malicious_clients"]
    assert {r["algorithm"] for r in block["attack"]["runs"]} == sides
    probe = study.probe_client(summary)
    assert summary["forget"][0]["forgotten"] == [probe]
    assert probe not in (summary["runs"][0]["new_clients"] or {}).get("clients", [])
    rows = {r.key: r for r in claim_table(summary).rows}
    assert "without the attack" in rows["robustness"].measured
    assert "central user-level DP" in rows["privacy"].measured
    assert "iid (JS" in rows["data_similarity"].measured


def test_a_step_command_reproduces_its_numbers(quick, tmp_path):
    """study.json's command for the attack step, run as printed (to another --out), gives the same numbers."""
    out, _ = quick
    step = next(s for s in json.loads((out / "study.json").read_text())["steps"] if s["name"] == "attack")
    args = shlex.split(step["command"])
    assert args[:2] == ["fedarena", "compare"]
    args[args.index("--out") + 1] = str(tmp_path / "again")
    result = runner.invoke(app, args[1:])
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    first = json.loads((out / "study" / "attack" / "summary.json").read_text())
    assert strip_timings(again["runs"]) == strip_timings(first["runs"])


def test_recommendation_for_privacy_uses_the_measured_budget(quick):
    out, _ = quick
    summary = load_summary(out)
    rec = recommend(summary, priority="privacy")
    assert "DP budget" in rec.rule and "not measured" not in " ".join(rec.watch)
    cell = next(c for c in summary["study"]["privacy"]["cells"] if c["epsilon_target"] is not None)
    under = {n: a["personal_acc_mean"] for n, a in cell["algorithms"].items()}
    local = [r["final"]["personal_acc_mean"] for r in summary["runs"] if r["algorithm"] == "local"]
    assert rec.numbers.get("personal_acc_under_dp", sum(local) / len(local)) == max(
        [*under.values(), sum(local) / len(local)])


def test_a_failed_step_leaves_nothing(tmp_path, monkeypatch, one_torch_thread):
    real = study._run_step

    def failing(step, config, out, plan):
        if step.name == "attack":
            raise FedarenaError("attack step failed")
        return real(step, config, out, plan)

    monkeypatch.setattr(study, "_run_step", failing)
    with pytest.raises(FedarenaError, match="attack step failed"):
        study.run_study(TINY, 0, tmp_path / "s")
    assert list(tmp_path.iterdir()) == []


def test_only_a_bare_compare_runs_the_study(tmp_path, monkeypatch):
    calls = []

    def recorded(plan, seed, out, *args):
        calls.append((plan, seed))
        raise FedarenaError("stopped after the call")

    monkeypatch.setattr(study, "run_study", recorded)
    assert runner.invoke(app, ["compare", "--out", str(tmp_path / "a"), "--seed", "4", "--threads", "1"]).exit_code == 2
    assert runner.invoke(app, ["compare", "--quick", "--out", str(tmp_path / "b")]).exit_code == 2
    assert calls == [(study.FULL, 4), (study.QUICK, 0)]
    # any data, algorithm, client or round flag runs exactly what it names
    named = runner.invoke(app, ["compare", "--rounds", "1", "--clients", "4", "--algorithms", "fedavg", "--model", "mlr",
                                "--out", str(tmp_path / "c")])
    assert named.exit_code == 0, named.output
    assert len(calls) == 2 and not (tmp_path / "c" / "study.json").exists()
    assert [r["algorithm"] for r in json.loads((tmp_path / "c" / "summary.json").read_text())["runs"]] == ["fedavg"]
    refused = runner.invoke(app, ["compare", "--quick", "--rounds", "3", "--out", str(tmp_path / "d")])
    assert refused.exit_code == 2 and "--quick shortens the default study" in refused.output
    assert not (tmp_path / "d").exists()


def test_plans_and_steps():
    assert set(study.ALGORITHMS) <= set(REGISTRY)
    families = {REGISTRY[a].family for a in study.ALGORITHMS}
    assert families == {"global", "personalized", "baseline"}
    steps = study.steps(study.FULL, "fedper", "fedadam", "3")
    assert [s.name for s in steps] == ["sweep", "privacy", "attack", "forget"]
    forget = steps[-1]
    assert forget.flags == {"run": {"algorithms": "fedper,fedadam", "seeds": 1}, "forget": {"probe": "3"}}
    assert "--forget-probe 3 --out /r/study/forget-again" in forget.cli(Path("/r"))


@pytest.mark.slow
def test_full_study_measures_every_row(tmp_path):
    """The README's first command: a bare `fedarena compare --report` (the full study, about 2 minutes)."""
    out = tmp_path / "full"
    result = runner.invoke(app, ["compare", "--report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = load_summary(out)
    assert summary["seeds"] == [0, 1, 2]
    for row in claim_table(summary).rows:
        assert row.verdict is not Verdict.NOT_MEASURED and "not measured" not in row.measured.lower(), row
    block = summary["study"]
    assert len(block["sweep"]["seeds"]) == len(summary["study"]["attack"]["seeds"]) == study.FULL.sub_seeds
    assert [c["cell"] for c in block["sweep"]["cells"]] == list(study.FULL.cells)
    assert "**not measured**" not in (out / "report.md").read_text()
