"""The report of a tuned run (issue #15): every verdict and recommendation carries the tuning label, a
Hyperparameters section matches summary.json, the tuning plots are drawn from tuning.parquet, accuracies show
their 95% interval; an untuned run says "untuned defaults", and a summary from before --tune still renders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fedarena import config as cfg
from fedarena.cli import app
from fedarena.experiments.compare import run_compare
from fedarena.report import tuning as tu
from fedarena.report.claims import CLAIMS, claim_table
from fedarena.report.plots import report_figures, tuning_trials
from fedarena.report.render import load_summary, render_html, render_markdown, write_report

runner = CliRunner()
SMALL = ["data.num_clients=6", "train.rounds=4", "train.clients_per_round=4", "model.name=mlr",
         "run.engine=reference", 'run.algorithms=["fedavg", "ditto"]', "run.seeds=2"]
TUNED_LABEL_START = "tuned (2 trials, budget 32 client-rounds per algorithm)"  # 2 trials x 4 rounds x 4 clients


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    out = tmp_path_factory.mktemp("tuned") / "run"
    run_compare(cfg.build(None, {}, [*SMALL, "tune.trials=2"]), out)
    return out


@pytest.fixture(scope="module")
def untuned(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    out = tmp_path_factory.mktemp("untuned") / "run"
    run_compare(cfg.build(None, {}, SMALL), out)
    return out


@pytest.fixture(scope="module")
def tuned_report(tuned: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    paths = write_report(tuned, tmp_path_factory.mktemp("tuned-report"))
    return paths.markdown.read_text(), paths.html.read_text()


def summary_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def section(md: str, heading: str) -> list[str]:
    """The lines of report.md's section whose heading starts with `heading`, up to the next `## `."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def first_runs(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for run in summary["runs"]:
        out.setdefault(run["algorithm"], run)
    return out


def assert_every_verdict_carries(md: str, html: str, summary: dict[str, Any], label: str) -> None:
    claims = section(md, "## The common pFL-vs-global table")
    for r in claim_table(summary).rows:
        line = next(x for x in claims if x.startswith(f"| {r.topic} |"))
        assert line.endswith(f"| **{r.verdict.value}** | {label} |"), line
    assert html.count(f'<div class="rests-on">{label}</div>') == len(CLAIMS)
    rec = section(md, "## Recommendation")
    assert any(x.startswith(f"Hyperparameters: {label};") for x in rec)
    priorities = [x for x in rec if x.startswith("| ") and not x.startswith("| priority")]
    assert len(priorities) == 5 and all(x.endswith(f"| {label} |") for x in priorities)


# ------------------------------------------------------------------ a tuned run


def test_every_verdict_and_recommendation_carries_the_tuned_label(tuned, tuned_report):
    md, html = tuned_report
    summary = summary_of(tuned)
    label = summary["tuning"]["label"]
    assert label == TUNED_LABEL_START
    assert_every_verdict_carries(md, html, load_summary(tuned), label)
    assert "untuned" not in md


def check_hyperparameters(md: str, summary: dict[str, Any]) -> None:
    lines = section(md, "## Hyperparameters")
    assert lines[0] == f"## Hyperparameters: {summary['tuning']['label']}"
    runs = first_runs(summary)
    assert set(runs) == {"fedavg", "ditto"}
    for name, run in runs.items():
        t, lt = run["tuning"], run["local_training"]
        line = next(x for x in lines if x.startswith(f"| {name} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == ", ".join(f"{k} {v:.4g}" for k, v in t["best_params"].items())
        assert cells[2] == ", ".join(f"{k} {v}" for k, v in lt.items() if k not in t["best_params"])
        assert cells[3] == f"{100 * t['best_val']:.1f}% (trial {t['best_trial']})"
        assert cells[4:] == [str(t["trials"]), str(t["pruned"]), f"{t['budget_client_rounds']:,}",
                             f"{t['spent_client_rounds']:,}", f"{t['seconds']:.1f} s"]
        assert f"Selection rule: {t['selection']}." in lines


def test_hyperparameters_section_matches_summary(tuned, tuned_report):
    md, html = tuned_report
    summary = summary_of(tuned)
    check_hyperparameters(md, summary)
    for name, run in first_runs(summary).items():
        t, lt = run["tuning"], run["local_training"]
        assert t["budget_client_rounds"] == 32 and t["trials"] == 2
        assert "lr" in t["best_params"] and t["best_params"]["lr"] == lt["lr"]  # the chosen lr is what trained
        chosen = ", ".join(f"{k} {v:.4g}" for k, v in t["best_params"].items())
        row = next(x for x in html.split("<tr>") if x.startswith(f"<td>{name}</td><td>{chosen}</td>"))
        assert f"<td>{100 * t['best_val']:.1f}% (trial {t['best_trial']})</td>" in row
        assert f"<td>{t['spent_client_rounds']:,}</td>" in row
    # every field from its own key: distinct values where the small run may have equal ones (no trial pruned)
    loaded = load_summary(tuned)
    for i, run in enumerate(loaded["runs"]):
        run["tuning"] |= {"pruned": 1, "spent_client_rounds": 24 + i % 2, "budget_client_rounds": 1234,
                          "seconds": 7.25, "best_val": 0.5, "best_trial": 1}
    check_hyperparameters(render_markdown(loaded), loaded)


def test_accuracies_show_the_aggregates_95_interval(tuned, tuned_report):
    md, _ = tuned_report
    summary = summary_of(tuned)
    algorithms = section(md, "## Algorithms")
    for name, metrics in summary["aggregate"]["algorithms"].items():
        agg = metrics["personal_acc_mean"]
        low, high = agg["ci95"]
        line = next(x for x in algorithms if x.startswith(f"| {name} |"))
        assert f"| {100 * agg['mean']:.1f}% [{100 * low:.1f}, {100 * high:.1f}] |" in line
    assert "95% confidence interval" in "\n".join(algorithms)


def test_tuning_plots_are_drawn_from_tuning_parquet(tuned, tuned_report):
    _, html = tuned_report
    summary = load_summary(tuned)
    assert 'data-plot="plot-tuning-trials"' in html and 'id="plot-tuning-trials"' in html
    rows = pq.read_table(tuned / "tuning.parquet").to_pylist()
    fig = report_figures(summary, claim_table(summary).groups, claim_table(summary).sides)["plot-tuning-trials"]
    plotted: dict[tuple[str, int], float] = {}
    for trace in fig.data:
        name, kind = trace.name.split(" (")
        if kind != "chosen)":
            plotted |= {(name, int(x)): y for x, y in zip(trace.x, trace.y)}
    expected = {}
    for r in rows:  # a complete trial at its final value; a pruned one at the last value it reported
        key = (r["algorithm"], r["trial"])
        if r["state"] == "complete":
            expected[key] = r["value"]
        elif key not in expected or r["round"] > expected[key][0]:
            expected[key] = (r["round"], r["val_objective"])
    expected = {k: v[1] if isinstance(v, tuple) else v for k, v in expected.items()}
    assert plotted == pytest.approx(expected)
    assert len(plotted) == 2 * 2  # every trial of both algorithms
    importances = {a: r["tuning"]["importances"] for a, r in first_runs(summary).items()}
    assert ('id="plot-tuning-importances"' in html) == any(importances.values())


def test_trials_plot_marks_pruned_trials_apart():
    rows = [{"algorithm": "ditto", "trial": 0, "state": "complete", "params": '{"lam": 0.5}', "round": r,
             "val_objective": v, "value": 0.7, "best": True} for r, v in ((1, 0.4), (2, 0.7))]
    rows += [{"algorithm": "ditto", "trial": 1, "state": "pruned", "params": '{"lam": 5.0}', "round": r,
              "val_objective": v, "value": None, "best": False} for r, v in ((2, 0.3), (1, 0.2))]
    points = tu.trial_points(rows)["ditto"]
    assert [(p.trial, p.state, p.objective, p.round) for p in points] == [(0, "complete", 0.7, 2),
                                                                          (1, "pruned", 0.3, 2)]
    traces = {t.name: t for t in tuning_trials({"ditto": points}, {}).data}
    assert set(traces) == {"ditto (complete)", "ditto (pruned)", "ditto (chosen)"}
    assert list(traces["ditto (pruned)"].y) == [0.3] and list(traces["ditto (complete)"].y) == [0.7]
    assert traces["ditto (pruned)"].marker.symbol != traces["ditto (complete)"].marker.symbol


def test_importance_bars_skip_algorithms_without_importances(tuned):
    summary = load_summary(tuned)
    for run in summary["runs"]:
        run["tuning"]["importances"] = {} if run["algorithm"] == "fedavg" else {"lr": 0.25, "lam": 0.75}
    assert tu.importances(summary) == {"ditto": {"lr": 0.25, "lam": 0.75}}
    figures = report_figures(summary, claim_table(summary).groups, claim_table(summary).sides)
    bars = figures["plot-tuning-importances"].data
    assert [b.name for b in bars] == ["ditto"] and list(bars[0].x) == ["lam", "lr"] and list(bars[0].y) == [0.75, 0.25]
    for run in summary["runs"]:
        run["tuning"]["importances"] = {}
    assert "plot-tuning-importances" not in report_figures(summary, claim_table(summary).groups,
                                                           claim_table(summary).sides)
    assert "plot-tuning-importances" not in render_html(summary)


def test_recommend_says_what_it_rests_on(tuned):
    summary = summary_of(tuned)
    label = summary["tuning"]["label"]
    result = runner.invoke(app, ["recommend", str(tuned), "--json"])
    assert result.exit_code == 0, result.output
    rec = json.loads(result.output)
    assert rec["tuning"]["label"] == label and rec["tuning"]["status"] == "tuned"
    run = first_runs(summary)[rec["algorithm"]]
    assert rec["tuning"]["search"]["best_params"] == run["tuning"]["best_params"]
    assert rec["tuning"]["values"] == {**run["hyperparameters"], **run["local_training"]}
    text = runner.invoke(app, ["recommend", str(tuned), "--priority", "worst-client"])
    assert text.exit_code == 0 and f"Hyperparameters: {label};" in text.output


# ------------------------------------------------------------------ untuned and old runs


def test_an_untuned_run_says_untuned_defaults(untuned, tmp_path):
    summary = load_summary(untuned)
    assert summary["tuning"] == {"status": "untuned", "label": "untuned defaults"}
    assert summary["tuning_trials"] is None and not (untuned / "tuning.parquet").exists()
    paths = write_report(untuned, tmp_path)
    md, html = paths.markdown.read_text(), paths.html.read_text()
    assert_every_verdict_carries(md, html, summary, "untuned defaults")
    lines = section(md, "## Hyperparameters")
    assert lines[0] == "## Hyperparameters: untuned defaults"
    for name, run in first_runs(summary).items():
        values = {**run["hyperparameters"], **run["local_training"]}
        assert f"| {name} | {tu.values_text(values)} |" in lines
    assert "plot-tuning" not in html
    rec = json.loads(runner.invoke(app, ["recommend", str(untuned), "--json"]).output)
    assert rec["tuning"]["label"] == "untuned defaults" and rec["tuning"]["search"] is None
    configured = summary | {"tuning": {"status": "untuned", "label": "untuned (hyperparameters as configured)"}}
    assert_every_verdict_carries(render_markdown(configured), render_html(configured), configured,
                                 "untuned (hyperparameters as configured)")


def test_a_summary_from_before_tune_renders_as_untuned_defaults(untuned, tmp_path):
    old = summary_of(untuned)
    del old["tuning"]
    for run in old["runs"]:
        del run["tuning"], run["local_training"]
        for h in run["history"]:
            del h["val_personal_acc_mean"], h["val_personal_acc_worst10"]
    for metrics in old["aggregate"]["algorithms"].values():
        for entry in metrics.values():
            del entry["ci95"]
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps(old))
    result = runner.invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    md, html = (run_dir / "report.md").read_text(), (run_dir / "report.html").read_text()
    assert_every_verdict_carries(md, html, load_summary(run_dir), "untuned defaults")
    train = old["config"]["train"]
    lines = section(md, "## Hyperparameters")
    assert f"| fedavg | lr {train['lr']:.4g}, local_epochs {train['local_epochs']}, batch_size {train['batch_size']} |" \
        in lines
    algorithms = section(md, "## Algorithms")
    assert all(" ± " in x and "[" not in x for x in algorithms if x.startswith(("| fedavg |", "| ditto |")))


def test_a_damaged_tuning_parquet_is_refused(tuned, tmp_path):
    run_dir = tmp_path / "damaged"
    run_dir.mkdir()
    shutil.copy(tuned / "summary.json", run_dir / "summary.json")
    (run_dir / "tuning.parquet").write_bytes(b"not parquet")
    result = runner.invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 2 and "tuning.parquet is not a readable parquet file" in result.output
