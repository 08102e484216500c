"""The decision report: verdict rules on crafted summaries, rendering without optional sections,
recommendations, `compare --seeds` with its aggregate, and sweep resume."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from fedarena import config as cfg
from fedarena.cli import app
from fedarena.experiments import sweep as sweeps
from fedarena.report import claims, sweep
from fedarena.report.claims import Verdict, claim_table
from fedarena.report.measures import Stat, stat
from fedarena.report.recommend import PERSONAS, recommend
from fedarena.report.render import render_html, render_markdown, write_report, write_sweep_report

runner = CliRunner()
SCHEMA = json.loads(resources.files("fedarena").joinpath("schemas/summary.schema.json").read_text())
CLIENTS = [str(i) for i in range(10)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def run(name: str, family: str, acc: float, *, seed: int | None = 0, worst: float | None = None,
        global_acc: float | None = -1.0, bpr: float = 1000.0, rtt: int | None = 10, storage: int = 0,
        new: tuple[float, float] | None = None, rounds: int = 20, federated: bool = True,
        hyperparameters: dict[str, float] | None = None) -> dict[str, Any]:
    """One crafted run entry of summary.json (valid against the schema)."""
    g = acc if global_acc == -1.0 else global_acc
    per_client = {c: min(1.0, max(0.0, acc + (i - 4.5) / 50)) for i, c in enumerate(CLIENTS)}
    history = [{"round": r, "global_acc": g, "personal_acc_mean": acc * r / rounds, "personal_acc_std": 0.1,
                "personal_acc_worst10": acc * r / rounds / 2, "bytes_cumulative": int(bpr * r),
                "train_seconds": 0.5 * r, "val_personal_acc_mean": acc * r / rounds,
                "val_personal_acc_worst10": acc * r / rounds / 2} for r in range(1, rounds + 1)]
    out = {
        "algorithm": name, "engine": {"name": "reference", "fallback": None}, "family": family,
        "federated": federated, "paper": "crafted",
        "hyperparameters": hyperparameters or {},
        "personal_keys": [], "rounds": rounds,
        "final": {"round": rounds, "global_acc": g, "personal_acc_mean": acc, "personal_acc_std": 0.05,
                  "personal_acc_worst10": acc - 0.1 if worst is None else worst,
                  "personal_acc_per_client": per_client,
                  "global_acc_per_client": None if g is None else {c: g for c in CLIENTS}},
        "bytes": {"up_total": int(bpr * rounds / 2), "down_total": int(bpr * rounds / 2), "per_round_mean": bpr},
        "target_acc": 0.5, "rounds_to_target": rtt, "seconds_to_target": None if rtt is None else 0.5 * rtt,
        "wall_seconds": 1.0, "storage_bytes_per_client": storage, "history": history, "privacy": None,
        "local_training": {"lr": 0.05, "local_epochs": 1, "batch_size": 10}, "tuning": None,
        "new_clients": None if new is None else {
            "clients": ["x"], "before": {"mean": new[0], "std": 0.0, "worst10": new[0]},
            "after": {"mean": new[1], "std": 0.0, "worst10": new[1]}, "adaptation_steps": 5, "bytes_down": 10},
    }
    if seed is not None:
        out["seed"] = seed
    return out


def summary(*runs: dict[str, Any]) -> dict[str, Any]:
    """A crafted summary.json around `runs` (an old-style one when the runs carry no seed)."""
    seeds = sorted({r["seed"] for r in runs if "seed" in r})
    out = {
        "fedarena_version": "0", "schema_version": 1, "engine": "reference",
        "config": {"data": {}, "model": {}, "train": {"rounds": 20, "clients_per_round": 5, "local_epochs": 1,
                                                      "batch_size": 10, "lr": 0.05}, "run": {"seed": 0}},
        "dataset": {"name": "crafted", "num_clients": 10, "client_ids": CLIENTS, "partition": "dirichlet",
                    "num_classes": 3, "input_shape": [4], "train_samples": 100, "test_samples": 50,
                    "heterogeneity": {"label_counts": [[5, 3, 2]] * 10, "train_sizes": [10] * 10,
                                      "test_sizes": [5] * 10, "effective_classes_mean": 2.8,
                                      "js_divergence_mean": 0.3, "definitions": {}, "details": {"alpha": 0.3}}},
        "model": {"name": "mlr"}, "target_acc": 0.5, "target_rule": "crafted", "runs": list(runs),
    }
    if seeds:
        out["seeds"] = seeds
        out["aggregate"] = None
    jsonschema.validate(out, SCHEMA)
    return out


def row(s: dict[str, Any], key: str) -> claims.Row:
    return next(r for r in claim_table(s).rows if r.key == key)


# ------------------------------------------------------------------ the noise rule and the range rule


def test_noise_rule_uses_the_t_interval_of_paired_differences():
    assert not Stat((0.1,)).noise_known and not Stat((0.1,)).within_noise
    assert stat([0.05, -0.04, 0.02]).within_noise  # CI of the mean contains 0
    assert not stat([0.20, 0.21, 0.19]).within_noise
    assert not stat([0.0, 0.0, 0.0]).within_noise  # identical values are no noise
    assert stat([0.1, 0.3]).half_width == pytest.approx(12.706 * 0.1414 / 1.4142, rel=1e-3)


@pytest.mark.parametrize("values,low,high,expected", [
    ([0.2], 0.15, float("inf"), Verdict.HOLDS),
    ([0.05], 0.15, float("inf"), Verdict.PARTLY),
    ([-0.05], 0.15, float("inf"), Verdict.FAILS),
    ([0.0], 0.0, float("inf"), Verdict.FAILS),
    ([0.3], 0.1, 0.5, Verdict.HOLDS),
    ([0.9], 0.1, 0.5, Verdict.PARTLY),
    ([0.05, -0.04, 0.02], 0.0, float("inf"), Verdict.NOISE),
    ([], 0.0, 1.0, Verdict.NOT_MEASURED),
])
def test_range_verdict(values, low, high, expected):
    assert claims.range_verdict(stat(values), low, high) is expected


# ------------------------------------------------------------------ each row on crafted summaries


def test_accuracy_claim_holds_does_not_hold_and_partly():
    assert row(summary(run("fedavg", "global", 0.70), run("fedper", "personalized", 0.90)),
               "accuracy_mean").verdict is Verdict.HOLDS
    assert row(summary(run("fedavg", "global", 0.75), run("fedper", "personalized", 0.80)),
               "accuracy_mean").verdict is Verdict.PARTLY
    r = row(summary(run("fedavg", "global", 0.80), run("fedper", "personalized", 0.70)), "accuracy_mean")
    assert r.verdict is Verdict.FAILS
    assert "-10.0 pp" in r.measured and "noise unknown: 1 seed" in r.note


def test_accuracy_claim_within_noise_over_seeds():
    pfl = [0.80, 0.74, 0.78]
    glob = [0.75, 0.78, 0.76]  # differences +5, -4, +2 pp
    s = summary(*[run("fedavg", "global", a, seed=i) for i, a in enumerate(glob)],
                *[run("fedper", "personalized", a, seed=i) for i, a in enumerate(pfl)])
    r = row(s, "accuracy_mean")
    assert r.verdict is Verdict.NOISE and "95% CI, 3 seeds" in r.measured and not r.note
    consistent = summary(*[run("fedavg", "global", 0.6, seed=i) for i in range(3)],
                         *[run("fedper", "personalized", 0.8 + i / 100, seed=i) for i in range(3)])
    assert row(consistent, "accuracy_mean").verdict is Verdict.HOLDS


def test_best_of_each_side_is_compared_and_every_algorithm_listed():
    s = summary(run("fedavg", "global", 0.70), run("fedprox", "global", 0.72), run("local", "baseline", 0.95),
                run("fedper", "personalized", 0.80), run("fedavg-ft", "baseline", 0.85),
                run("centralized", "baseline", 0.99, federated=False))
    t = claim_table(s)
    assert (t.sides.pfl, t.sides.glob) == ("fedavg-ft", "fedprox")  # local and centralized are references
    assert [a for a, _ in row(s, "accuracy_mean").details] == ["fedavg", "fedprox", "local", "fedper", "fedavg-ft",
                                                               "centralized"]


def test_communication_per_round_rule():
    def verdict(pfl_bpr: float) -> Verdict:
        s = summary(run("fedavg", "global", 0.7, bpr=1000), run("fedper", "personalized", 0.8, bpr=pfl_bpr))
        return row(s, "comm_per_round").verdict
    assert verdict(1300) is Verdict.HOLDS
    assert verdict(2000) is Verdict.PARTLY
    assert verdict(1000) is Verdict.FAILS
    assert verdict(600) is Verdict.FAILS


def test_convergence_and_bandwidth_when_a_side_never_reaches_the_target():
    slow = summary(run("fedavg", "global", 0.7, rtt=10), run("fedper", "personalized", 0.8, rtt=13))
    assert row(slow, "convergence_rounds").verdict is Verdict.HOLDS  # +30% rounds
    assert row(slow, "bandwidth_to_target").verdict is Verdict.PARTLY  # global saves 23%: less, but not 30-50%
    never_pfl = summary(run("fedavg", "global", 0.7, rtt=10), run("fedper", "personalized", 0.8, rtt=None))
    r = row(never_pfl, "convergence_rounds")
    assert r.verdict is Verdict.PARTLY and "fedper never reached" in r.measured
    never_global = summary(run("fedavg", "global", 0.7, rtt=None), run("fedper", "personalized", 0.8, rtt=5))
    assert row(never_global, "convergence_rounds").verdict is Verdict.FAILS
    assert row(never_global, "bandwidth_to_target").verdict is Verdict.FAILS
    neither = summary(run("fedavg", "global", 0.7, rtt=None), run("fedper", "personalized", 0.8, rtt=None))
    assert row(neither, "convergence_seconds").verdict is Verdict.NOT_MEASURED


def test_storage_rule():
    assert claims.storage_verdict(100, 0) is Verdict.HOLDS
    assert claims.storage_verdict(100, 50) is Verdict.PARTLY
    assert claims.storage_verdict(0, 0) is Verdict.FAILS
    s = summary(run("scaffold", "global", 0.7, storage=400), run("fedper", "personalized", 0.8, storage=40))
    assert row(s, "storage").verdict is Verdict.PARTLY


def test_onboarding_rule():
    def verdict(pfl: tuple[float, float], glob: tuple[float, float]) -> Verdict:
        s = summary(run("fedavg", "global", 0.7, new=glob), run("fedper", "personalized", 0.8, new=pfl))
        return row(s, "onboarding").verdict
    assert verdict((0.3, 0.8), (0.6, 0.6)) is Verdict.HOLDS
    assert verdict((0.3, 0.5), (0.6, 0.6)) is Verdict.PARTLY  # adapts, but ends below the global model
    assert verdict((0.5, 0.4), (0.6, 0.6)) is Verdict.FAILS
    plain = summary(run("fedavg", "global", 0.7), run("fedper", "personalized", 0.8))
    assert row(plain, "onboarding").verdict is Verdict.NOT_MEASURED


def test_privacy_row_names_dp_sgd_and_the_membership_of_personal_and_global_models():
    block = {"secagg": None, "dp_mode": None, "clip": None, "noise_multiplier": None, "delta": None, "epsilon": None,
             "accountant": None, "sample_level": {"epsilon_max": 4.5, "delta": 1e-5}}
    glob, pfl = run("fedavg", "global", 0.7), run("fedper", "personalized", 0.8)
    glob["privacy"], pfl["privacy"] = block, block
    blank = {"attack": "loss threshold", "clients": 10, "personal_auc_max": 0.9, "global_auc_max": None}
    glob["membership"] = blank | {"personal_auc_mean": 0.55, "global_auc_mean": 0.55, "global_auc_max": 0.6}
    pfl["membership"] = blank | {"personal_auc_mean": 0.71, "global_auc_mean": None}
    text = row(summary(glob, pfl), "privacy").measured
    assert "fedper 80.0% under DP-SGD eps <= 4.50" in text and "personal model 0.71)" in text
    assert "personal model 0.55, global model 0.55" in text


def test_missing_side_makes_every_row_not_measured():
    s = summary(run("fedavg", "global", 0.7), run("local", "baseline", 0.8))
    t = claim_table(s)
    assert len(t.rows) == len(claims.CLAIMS)
    assert all(r.verdict is Verdict.NOT_MEASURED and "no personalized algorithm" in r.measured for r in t.rows)


# ------------------------------------------------------------------ rendering


def test_report_renders_without_optional_sections(tmp_path):
    """An old-style summary: no seeds, no aggregate, no per-run seed, no new clients, no privacy."""
    s = summary(run("fedavg", "global", 0.7, seed=None), run("local", "baseline", 0.75, seed=None, global_acc=None),
                run("fedper", "personalized", 0.85, seed=None, global_acc=None, storage=120))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps(s))
    paths = write_report(run_dir)
    html, md = paths.html.read_text(), paths.markdown.read_text()
    for text in (html, md):
        assert text.count("not measured") >= 4  # similarity, onboarding, forgetting, privacy
        assert "no new clients in this run" in text and "--forget-probe" in text
        assert "None" not in text.replace("plotly", "")[-20000:]  # no Python None leaks into the page
    assert "<script src=" not in html and "<link" not in html  # plotly inlined (the browser test blocks the network)
    for key in claims.CLAIMS:
        assert f'data-key="{key}"' in html
    assert sorted(p.name for p in run_dir.iterdir()) == ["report.html", "report.md", "summary.json"]


def test_markdown_table_has_every_row():
    s = summary(run("fedavg", "global", 0.7), run("ditto", "personalized", 0.9, global_acc=None))
    md = render_markdown(s)
    for r in claim_table(s).rows:
        assert f"| {r.topic} |" in md
    assert "## Recommendation" in md
    assert "plot-pareto" in render_html(s)


# ------------------------------------------------------------------ recommendation


def crafted_choice() -> dict[str, Any]:
    return summary(
        run("fedavg", "global", 0.70, worst=0.40, bpr=1000, rtt=15),
        run("fedper", "personalized", 0.86, worst=0.70, bpr=600, rtt=8, storage=100, global_acc=None),
        run("ditto", "personalized", 0.865, worst=0.60, bpr=2000, rtt=6, storage=900, global_acc=None,
            hyperparameters={"lam": 0.1}),
        run("local", "baseline", 0.80, worst=0.65, bpr=0, rtt=12, storage=900, global_acc=None),
        run("centralized", "baseline", 0.99, federated=False, bpr=0, rtt=1),
    )


@pytest.mark.parametrize("priority,expected", [
    ("accuracy", "ditto"), ("worst-client", "fedper"), ("communication", "local"),
    ("simplicity", "fedper"),  # within 1 pp of ditto, one hyperparameter fewer
    ("privacy", "fedper"),  # fewest uploaded bytes among the candidates within 1 pp of the best
])
def test_priority_rules(priority, expected):
    assert recommend(crafted_choice(), "architect", priority).algorithm == expected


def test_persona_changes_words_not_facts():
    recs = [recommend(crafted_choice(), p, "accuracy") for p in PERSONAS]
    assert len({r.algorithm for r in recs}) == 1
    assert all(r.numbers == recs[0].numbers for r in recs)
    assert all(sorted(r.facts) == sorted(recs[0].facts) for r in recs)
    assert len({r.headline for r in recs}) == len(PERSONAS)
    assert len({tuple(k for k, _ in r.facts) for r in recs}) == len(PERSONAS)  # emphasis differs
    assert any("noise unknown" in w for w in recs[0].watch)


def test_recommend_cli(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(crafted_choice()))
    result = runner.invoke(app, ["recommend", str(tmp_path), "--persona", "cto", "--priority", "worst-client", "--json"])
    assert result.exit_code == 0, result.output
    rec = json.loads(result.output)
    assert rec["algorithm"] == "fedper" and rec["persona"] == "cto" and rec["rules"]["priority"]
    bad = runner.invoke(app, ["recommend", str(tmp_path), "--persona", "ceo"])
    assert bad.exit_code == 2 and "unknown persona 'ceo'" in bad.output
    missing = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "summary.json not found" in missing.output


# ------------------------------------------------------------------ compare --seeds, --report


SMALL = ["--data", "digits", "--alpha", "0.5", "--clients", "6", "--clients-per-round", "3", "--rounds", "2",
         "--model", "mlr", "--set", "train.batch_size=32"]


def test_compare_seeds_writes_runs_per_seed_and_aggregate(tmp_path):
    out = tmp_path / "seeds"
    result = runner.invoke(app, ["compare", *SMALL, "--algorithms", "fedavg,fedavg-ft", "--seeds", "2",
                                 "--seed", "3", "--report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    s = json.loads((out / "summary.json").read_text())
    jsonschema.validate(s, SCHEMA)
    assert s["seeds"] == [3, 4] and s["config"]["run"]["seeds"] == 2
    assert [(r["algorithm"], r["seed"]) for r in s["runs"]] == [
        (a, k) for a in ("fedavg", "fedavg-ft") for k in (3, 4)]
    agg = s["aggregate"]["algorithms"]["fedavg"]["personal_acc_mean"]
    accs = [r["final"]["personal_acc_mean"] for r in s["runs"] if r["algorithm"] == "fedavg"]
    assert agg["n"] == 2 and agg["mean"] == pytest.approx(sum(accs) / 2)
    assert agg["std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    assert (out / "models" / "seed-4" / "fedavg" / "global.safetensors").is_file()
    assert "95% CI, 2 seeds" in (out / "report.md").read_text()
    assert (out / "report.html").stat().st_size > 1_000_000  # plotly inlined


def test_one_seed_summary_has_null_aggregate(tmp_path):
    out = tmp_path / "one"
    result = runner.invoke(app, ["compare", *SMALL, "--algorithms", "fedavg", "--out", str(out)])
    assert result.exit_code == 0, result.output
    s = json.loads((out / "summary.json").read_text())
    assert s["aggregate"] is None and s["seeds"] == [0] and s["runs"][0]["seed"] == 0
    assert runner.invoke(app, ["compare", *SMALL, "--seeds", "0", "--out", str(tmp_path / "x")]).exit_code == 2


# ------------------------------------------------------------------ sweep


def tiny_sweep_config() -> cfg.Config:
    return cfg.build(None, {"data": {"num_clients": 6},
                            "train": {"rounds": 2, "clients_per_round": 3, "batch_size": 32},
                            "model": {"name": "mlr"},
                            "run": {"algorithms": "fedavg,fedavg-ft", "seeds": 2}}, [])


def test_cell_names_parse():
    assert sweep.Cell.parse("dirichlet-0.10") == sweep.Cell("dirichlet-0.1", "dirichlet", alpha=0.1)
    assert sweep.Cell.parse("shards-2").shards_per_client == 2 and sweep.Cell.parse("iid").partition == "iid"
    for bad in ("dirichlet-0", "shards-x", "zipf-1", "iid-3"):
        with pytest.raises(Exception, match="bad sweep cell"):
            sweep.Cell.parse(bad)


def test_sweep_resume_does_not_redo_finished_cells(tmp_path, monkeypatch):
    calls: list[Path] = []
    real = sweeps.run_compare

    def counting(config, out, on_round=None):
        calls.append(out)
        return real(config, out, on_round)

    monkeypatch.setattr(sweeps, "run_compare", counting)
    cells = [sweep.Cell.parse(c) for c in ("iid", "shards-2")]
    first = sweeps.run_sweep(tiny_sweep_config(), cells, tmp_path)
    assert [p.name for p in calls] == ["iid", "shards-2"]
    assert [c["reused"] for c in first["cells"]] == [False, False]
    assert first["cells"][0]["gain"]["n"] == 2
    assert json.loads((tmp_path / "sweep.json").read_text())["cells"] == first["cells"]
    paths = write_sweep_report(first, tmp_path)
    assert "shards-2" in paths.markdown.read_text() and paths.html.stat().st_size > 1_000_000

    calls.clear()
    again = sweeps.run_sweep(tiny_sweep_config(), cells, tmp_path)
    assert calls == [] and [c["reused"] for c in again["cells"]] == [True, True]
    assert [c["gain"] for c in again["cells"]] == [c["gain"] for c in first["cells"]]

    import shutil
    shutil.rmtree(tmp_path / "cells" / "shards-2")  # as if interrupted before this cell finished
    calls.clear()
    third = sweeps.run_sweep(tiny_sweep_config(), cells, tmp_path)
    assert [p.name for p in calls] == ["shards-2"] and [c["reused"] for c in third["cells"]] == [True, False]

    other = cfg.build(None, {"data": {"num_clients": 6}, "train": {"rounds": 3, "clients_per_round": 3},
                             "model": {"name": "mlr"}, "run": {"algorithms": "fedavg,fedavg-ft", "seeds": 2}}, [])
    with pytest.raises(Exception, match="different config"):
        sweeps.run_sweep(other, cells, tmp_path)


def _cell(name: str, js: float, gains: list[float]) -> dict[str, Any]:
    g = stat(gains)
    return {"cell": name, "js_divergence_mean": js,
            "gain": g.to_json() | {"half_width": g.half_width, "values": list(g.values)}}


def test_similarity_verdict_and_crossover():
    holds = [_cell("iid", 0.01, [-0.02, -0.01, -0.03]), _cell("dir-1", 0.1, [0.01, 0.02, 0.0]),
             _cell("dir-0.1", 0.5, [0.20, 0.22, 0.21])]
    assert sweep.similarity_verdict(holds) is Verdict.HOLDS
    cross = sweep.crossover(holds)
    assert cross["between"] == ["iid", "dir-1"] and 0.01 < cross["js_divergence"] < 0.1
    everywhere = [_cell("iid", 0.01, [0.05, 0.06, 0.05]), _cell("dir-0.1", 0.5, [0.2, 0.21, 0.22])]
    assert sweep.similarity_verdict(everywhere) is Verdict.PARTLY
    assert "pFL is ahead at every" in sweep.crossover(everywhere)["text"]
    backwards = [_cell("iid", 0.01, [0.2, 0.21, 0.22]), _cell("dir-0.1", 0.5, [0.0, 0.01, 0.02])]
    assert sweep.similarity_verdict(backwards) is Verdict.FAILS
    noise = [_cell("iid", 0.01, [0.05, -0.05, 0.0]), _cell("dir-0.1", 0.5, [0.1, -0.1, 0.02])]
    assert sweep.similarity_verdict(noise) is Verdict.NOISE


def test_sweep_cli(tmp_path):
    args = ["sweep", "--cells", "iid", "--seeds", "2", "--rounds", "1", "--clients", "6", "--clients-per-round", "3",
            "--model", "mlr", "--algorithms", "fedavg,fedavg-ft", "--out", str(tmp_path / "sw")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "ideal data similarity: not measured" in result.output  # one level cannot show a trend
    assert (tmp_path / "sw" / "sweep.html").is_file() and (tmp_path / "sw" / "cells" / "iid" / "summary.json").is_file()
    bad = runner.invoke(app, ["sweep", "--cells", "zipf-2", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "bad sweep cell 'zipf-2'" in bad.output


def _forget_row(residual_pfl: float, residual_global: float) -> dict:
    def row(name, residual):
        return {"algorithm": name, "method": "retrain", "refused": None, "mia_auc_before": 0.5,
                "mia_auc_retrain": 0.5, "backdoor_before": 0.1 + residual, "backdoor_retrain": 0.1,
                "retrain_rounds": 10, "retrain_bytes": 1e6}
    return {"runs": [row("fedper", residual_pfl), row("fedavg", residual_global)]}


@pytest.mark.parametrize("pfl, glob, verdict", [(0.0, 0.5, "holds"), (0.5, 0.5, "does not hold"),
                                                 (0.0, 0.01, "partly")])
def test_forgetting_row_verdicts(pfl, glob, verdict):
    from fedarena.report.claims import Sides, _Ctx, _row_forgetting

    ctx = _Ctx({"forget": [_forget_row(pfl, glob)]}, {}, Sides("fedper", "fedavg", (), ()))
    row = _row_forgetting(ctx)
    assert row.verdict.value == verdict and "fedper" in row.measured and "1.0 MB" in row.measured


def test_the_crossover_plot_leaves_out_cells_without_a_gain():
    """A sweep of fedavg and local has no pFL side: every cell's gain is null, and the plot must not crash on it."""
    from fedarena.report.plots import crossover

    cells = [{"cell": "iid", "js_divergence_mean": 0.1, "gain": {"mean": None, "half_width": None}},
             {"cell": "shards-2", "js_divergence_mean": 0.6, "gain": {"mean": 0.2, "half_width": None}}]
    fig = crossover(cells)
    assert list(fig.data[1].x) == [0.6] and list(fig.data[1].y) == [0.2]
    assert len(crossover([cells[0]]).data[1].x) == 0
