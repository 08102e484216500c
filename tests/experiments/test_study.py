"""The default study (a bare `fedarena compare`): every claims row measured, each step reproducible by its command,
nothing left behind when it fails, and only a bare compare runs it."""

import json
import shlex
from pathlib import Path

import pytest
from running import strip_timings
from typer.testing import CliRunner

from fedarena.algorithms import REGISTRY
from fedarena.cli import app
from fedarena.core.types import FedarenaError
from fedarena.experiments import study
from fedarena.report import render
from fedarena.report.claims import claim_table
from fedarena.report.recommend import recommend
from fedarena.report.render import load_summary
from fedarena.report.verdicts import Verdict

runner = CliRunner()
TINY = study.Plan("tiny", rounds=3, seeds=2, sub_seeds=2, cells=("iid", "shards-2"))


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
    assert [s["name"] for s in meta["steps"]] == list(study.STEPS) == ["comparison", "sweep", "privacy", "attack", "forget"]
    assert meta["plan"] == {**study.QUICK.__dict__, "cells": list(study.QUICK.cells)}
    for step in meta["steps"]:
        assert (out / step["dir"]).is_dir() and step["seconds"] > 0
    assert {r["algorithm"] for r in summary["runs"]} == set(study.ALGORITHMS)
    assert summary["config"]["data"]["new_clients"] == study.QUICK.new_clients
    assert f"study directory: {out}" in output
    assert not list(out.parent.glob(".quick.partial-*"))


def test_best_pfl_is_personalized_where_one_wins(quick):
    """Best pFL is the most accurate pFL candidate; here (seed 0) FedPer beats FedAvg-FT, so a personalized
    algorithm is named."""
    out, _ = quick
    table = claim_table(load_summary(out))
    pfl_means = {a: sum(r["final"]["personal_acc_mean"] for r in rs) / len(rs) for a, rs in table.groups.items()
                 if a in table.sides.pfl_candidates}
    assert pfl_means[table.sides.pfl] == max(pfl_means.values())
    assert pfl_means["fedper"] > pfl_means["fedavg-ft"]
    assert table.groups[table.sides.pfl][0]["family"] == "personalized"
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
    assert "accuracy drop against the same clients without the attack" in rows["robustness"].measured
    assert "central user-level DP" in rows["privacy"].measured
    assert "iid (JS" in rows["data_similarity"].measured
    assert "one seed and one client" in rows["forgetting"].note
    assert "--seeds" not in " ".join(r.note for r in rows.values())  # a flag that would switch the study off
    assert "the full study (fedarena compare without --quick) runs 3 seeds" in rows["accuracy_mean"].note
    setup = dict(render._setup(summary))
    assert f"best pFL ({meta['best_pfl']})" in setup["study"] and f"client {probe}" in setup["study"]
    # nothing keeps per-round forget material but the comparison and the forget probe
    assert not list((out / "study").glob("sweep/cells/*/forget")) and not (out / "study" / "attack" / "forget").exists()
    assert (out / "forget").is_dir() and (out / "study" / "forget" / "forget").is_dir()


def test_robustness_drop_is_paired_on_the_benign_clients(quick):
    """The robustness row's drops, recomputed by hand from the two summaries' per-client accuracies."""
    out, _ = quick
    summary = load_summary(out)
    attacked = summary["study"]["attack"]
    pfl = json.loads((out / "study.json").read_text())["best_pfl"]
    clean = next(r for r in summary["runs"] if r["algorithm"] == pfl)["final"]["personal_acc_per_client"]
    after = next(r for r in attacked["runs"] if r["algorithm"] == pfl)["final"]["personal_acc_per_client"]
    assert set(after) == set(clean) - set(attacked["malicious_clients"])
    drop = sum(clean[c] - a for c, a in after.items()) / len(after)
    row = next(r for r in claim_table(summary).rows if r.key == "robustness")
    assert f"{pfl} {100 * drop:.1f} pp" in row.measured


def rerun(step: dict, out: Path) -> None:
    args = shlex.split(step["command"])
    assert args[0] == "fedarena" and args[args.index("--out") + 1].endswith("-again")
    args[args.index("--out") + 1] = str(out)
    result = runner.invoke(app, args[1:])
    assert result.exit_code == 0, result.output


def test_step_commands_reproduce_their_numbers(quick, tmp_path):
    """study.json's commands for the attack and the forget steps, run as printed (to another --out), give the same
    numbers; the forget audit names the study's final directory, not its temporary one."""
    out, _ = quick
    steps = {s["name"]: s for s in json.loads((out / "study.json").read_text())["steps"]}
    assert all("--threads" in s["command"] for s in steps.values())
    rerun(steps["attack"], tmp_path / "attack")
    again = json.loads((tmp_path / "attack" / "summary.json").read_text())
    first = json.loads((out / "study" / "attack" / "summary.json").read_text())
    assert strip_timings(again["runs"]) == strip_timings(first["runs"])
    rerun(steps["forget"], tmp_path / "forget")
    probe = json.loads((out / "study.json").read_text())["forget_probe"]
    first = json.loads((out / "study" / "forget" / f"forget-{probe}" / "forget.json").read_text())
    again = json.loads((tmp_path / "forget" / f"forget-{probe}" / "forget.json").read_text())
    assert first["source"] == str((out / "study" / "forget").resolve())
    audit = json.loads((out / "study" / "forget" / f"forget-{probe}" / "audit.json").read_text())
    assert audit["source"] == first["source"] and ".partial-" not in json.dumps(audit)

    def numbers(rows):
        return [{k: v for k, v in r.items() if k != "storage_bytes" and "seconds" not in k} for r in rows]

    assert numbers(again["runs"]) == numbers(first["runs"])


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

    def failing(step, *args):
        if step.name == "attack":
            raise FedarenaError("attack step failed")
        return real(step, *args)

    monkeypatch.setattr(study, "_run_step", failing)
    with pytest.raises(FedarenaError, match="attack step failed"):
        study.run_study(TINY, 0, tmp_path / "s")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, study_runs", [
    ([], True), (["--report", "--seed", "4", "--threads", "1"], True), (["--track", "tensorboard"], True),
    (["--rounds", "3"], False), (["--algorithms", "fedavg"], False), (["--clients", "4"], False),
    (["--data", "synthetic"], False), (["--engine", "reference"], False), (["--device", "cpu"], False),
    (["--set", "train.lr=0.1"], False), (["--dp-clip", "1"], False), (["--attack", "sign-flip"], False),
    (["--forget-probe", "3"], False), (["--seeds", "2"], False), (["--secagg"], False), (["--tune", "quick"], False),
    (["--preset", "mobile-iid"], False), (["--target", "0.5"], False), (["--new-clients", "0.2"], False),
])
def test_only_a_bare_compare_runs_the_study(tmp_path, monkeypatch, flags, study_runs):
    """A bare compare (output, thread and seed flags aside) runs the study; any other flag runs only what it names.
    Both entry points are replaced by recorders that stop the command."""
    import fedarena.experiments.compare as compare

    calls = []

    def recorder(kind):
        def stop(*args, **kwargs):
            calls.append(kind)
            raise FedarenaError("stopped after the call")
        return stop

    monkeypatch.setattr(study, "run_study", recorder("study"))
    monkeypatch.setattr(compare, "run_compare", recorder("compare"))
    result = runner.invoke(app, ["compare", *flags, "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "stopped after the call" in result.output, result.output
    assert calls == (["study"] if study_runs else ["compare"])


def test_the_study_gets_its_plan_and_seed(tmp_path, monkeypatch):
    calls = []

    def recorded(plan, seed, out, *args):
        calls.append((plan, seed))
        raise FedarenaError("stopped after the call")

    monkeypatch.setattr(study, "run_study", recorded)
    assert runner.invoke(app, ["compare", "--out", str(tmp_path / "a"), "--seed", "4"]).exit_code == 2
    assert runner.invoke(app, ["compare", "--quick", "--out", str(tmp_path / "b")]).exit_code == 2
    assert calls == [(study.FULL, 4), (study.QUICK, 0)]
    refused = runner.invoke(app, ["compare", "--quick", "--rounds", "3", "--out", str(tmp_path / "d")])
    assert refused.exit_code == 2 and "--quick shortens the default study" in refused.output
    assert len(calls) == 2 and not (tmp_path / "d").exists()


def test_named_flags_run_exactly_what_they_name(tmp_path):
    named = runner.invoke(app, ["compare", "--rounds", "1", "--clients", "4", "--algorithms", "fedavg", "--model", "mlr",
                                "--out", str(tmp_path / "c")])
    assert named.exit_code == 0, named.output
    assert not (tmp_path / "c" / "study.json").exists() and not (tmp_path / "c" / "study").exists()
    assert [r["algorithm"] for r in json.loads((tmp_path / "c" / "summary.json").read_text())["runs"]] == ["fedavg"]


def test_plans_and_steps():
    assert set(study.ALGORITHMS) <= set(REGISTRY)
    families = {REGISTRY[a].family for a in study.ALGORITHMS}
    assert families == {"global", "personalized", "baseline"}
    steps = study.steps(study.FULL, "fedper", "fedadam", "3")
    assert [s.name for s in steps] == list(study.STEPS[1:])
    forget = steps[-1]
    assert forget.flags == {"run": {"algorithms": "fedper,fedadam", "seeds": 1}, "forget": {"probe": "3"}}
    assert forget.cli(Path("/r s"), 2).endswith("--forget-probe 3 --threads 2 --out '/r s-forget-again'")
    assert "--set forget.keep=none" in steps[0].cli(Path("/r"), 1) and "--epsilons 8.0" in steps[1].cli(Path("/r"), 1)


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
