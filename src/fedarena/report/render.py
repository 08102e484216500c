"""report.html (one self-contained file: plotly's JS inlined, no CDN, opens offline) and report.md.

Both are rendered from one context built from summary.json: the setup, the measured claims table,
the hyperparameters its verdicts rest on (tuned or untuned, with the tuning figures of a tuned run in the
HTML), the figures (HTML only) and the recommendation. Every verdict and recommendation line carries the
summary's tuning label.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import plotly.offline

from fedarena.core.types import FedarenaError
from fedarena.report import measures as m
from fedarena.report import study
from fedarena.report import tuning as tu
from fedarena.report.claims import ClaimTable, Verdict, claim_table
from fedarena.report.format import accuracy, aggregate_ci, pct, size
from fedarena.report.plots import crossover, report_figures
from fedarena.report.recommend import Recommendation, all_priorities, as_text, hyperparameters_line, recommend

log = logging.getLogger(__name__)

PLOT_CONFIG = {"displaylogo": False, "responsive": True}
VERDICT_CLASS = {Verdict.HOLDS: "holds", Verdict.FAILS: "fails", Verdict.PARTLY: "partly",
                 Verdict.NOISE: "noise", Verdict.NOT_MEASURED: "unmeasured"}
VERDICT_LEGEND = (
    (Verdict.HOLDS, "the measured value goes the claimed way and lies in the claimed range"),
    (Verdict.PARTLY, "the claimed direction, but not the claimed size"),
    (Verdict.FAILS, "the opposite direction, or no difference at all"),
    (Verdict.NOISE, "with several seeds, the 95% confidence interval of the difference contains 0"),
    (Verdict.NOT_MEASURED, "this run holds no measurement for the row; no value is made up"),
)


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    markdown: Path


def load_summary(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise FedarenaError(f"{path} not found: RUN_DIR must be a directory written by fedarena compare")
    summary = study.read_json(path)
    if not isinstance(summary, dict) or not summary.get("runs"):
        raise FedarenaError(f"{path} has no runs")
    missing = [k for k in ("config", "dataset", "model", "target_acc", "target_rule") if k not in summary]
    if missing:
        raise FedarenaError(f"{path} lacks {', '.join(missing)}: not a fedarena summary (see docs/summary.md)")
    # written by compare --forget-probe
    forgets = [study.read_json(f) for f in sorted(Path(run_dir).glob("forget-*/forget.json"))]
    summary["study"], probes = study.load(Path(run_dir))  # a default study's sub-studies (report/study.py)
    summary["forget"] = forgets + probes or None
    summary["tuning_trials"] = tu.read_trials(Path(run_dir))  # tuning.parquet's rows (--tune), else None
    return summary


def _setup(summary: dict[str, Any]) -> list[tuple[str, str]]:
    ds, conf = summary["dataset"], summary["config"]
    het, train = ds["heterogeneity"], conf["train"]
    details = ", ".join(f"{k} {v}" for k, v in (het.get("details") or {}).items())
    seeds = m.seeds(summary)
    return [
        ("data", f"{ds['name']}: {ds['num_clients']} clients, {ds['num_classes']} classes, "
                 f"{ds['train_samples']} train / {ds['test_samples']} test samples, each client with its own test split"),
        ("partition", ds["partition"] + (f" ({details})" if details else "")),
        ("heterogeneity", f"{het['effective_classes_mean']:.2f} effective classes per client (of {ds['num_classes']}); "
                          f"mean JS divergence to the pooled label distribution {het['js_divergence_mean']:.3f} "
                          "(0 = IID, 1 = disjoint)"),
        ("model", f"{summary['model']['name']}" + (f", hidden {summary['model'].get('hidden')}"
                                                    if summary["model"]["name"] == "mlp" else "")),
        ("training", f"{train['rounds']} rounds, {train['clients_per_round']} clients per round, "
                     f"{train['local_epochs']} local epoch(s), batch {train['batch_size']}, lr {train['lr']}"
                     + (" (each algorithm's own values: see Hyperparameters)" if _own_training(summary) else "")),
        ("hyperparameters", tu.label(summary)),
        ("seeds", ", ".join(map(str, seeds)) + ("" if len(seeds) > 1 else " (one seed: the noise is unknown)")),
        ("target", f"{pct(summary['target_acc'])}: {summary['target_rule']}"),
    ] + ([("study", study.describe(summary["study"]))] if summary.get("study") else [])


def _own_training(summary: dict[str, Any]) -> bool:
    """Whether some algorithm trained with other local-SGD values than [train]'s (its own or tuned ones)."""
    train = summary["config"]["train"]
    return any(v != train.get(k) for run in summary["runs"] for k, v in tu.local_training(summary, run).items())


def _algorithms(summary: dict[str, Any], groups: dict[str, list[m.Run]]) -> list[dict[str, str]]:
    rows = []
    for name, runs in groups.items():
        def s(metric: m.Metric, runs: list[m.Run] = runs) -> m.Stat:
            return m.over_seeds(runs, metric)

        def acc(key: str, metric: m.Metric, name: str = name) -> str:
            return accuracy(summary, name, key, s(metric), label=False)

        rows.append({
            "algorithm": name,
            "family": runs[0]["family"] + ("" if runs[0]["federated"] else " (not federated)"),
            "personal": acc("personal_acc_mean", m.acc_mean),
            "worst10": acc("personal_acc_worst10", m.acc_worst10),
            "global": acc("global_acc", m.global_acc) if s(m.global_acc).n else "none",
            "per_round": size(s(m.bytes_per_round).mean),
            "rounds": (f"{s(m.rounds_to_target).mean:.0f}" if s(m.rounds_to_target).n else "never"),
            "storage": size(s(m.storage).mean),
            "paper": runs[0]["paper"],
        })
    return rows


@dataclass(frozen=True)
class _Context:
    summary: dict[str, Any]
    table: ClaimTable
    recommendation: Recommendation
    by_priority: list[Recommendation]


@dataclass(frozen=True)
class _Hyperparameters:
    """The report's Hyperparameters section."""

    label: str
    tuned: bool
    lead: str
    rows: list[dict[str, str]]  # tu.Chosen.cells() per algorithm
    selection: list[str]  # the selection rule(s) of a tuned run


def _hyperparameters(summary: dict[str, Any]) -> _Hyperparameters:
    block, rows = tu.block(summary), [c.cells() for c in tu.chosen(summary)]
    tuned = tu.is_tuned(summary)
    if tuned:
        parts = [f"objective: {tu.objective_text(summary) or 'validation accuracy'}"]
        if block.get("pruner"):
            parts.append(f"pruner {block['pruner']}")
        if block.get("tuned_on_seed") is not None:
            parts.append(f"trials on seed {block['tuned_on_seed']}'s clients")
        if block.get("data"):
            parts.append(f"data: {block['data']}")
        lead = (f"Each algorithm's hyperparameters were searched under the same budget of client-rounds "
                f"({'; '.join(parts)}); the chosen values then trained every seed's run. Every verdict and "
                "recommendation rests on these values.")
    elif block["label"] == tu.UNTUNED_DEFAULTS:
        lead = ("No hyperparameter was tuned: every algorithm ran with its defaults, listed below; a verdict may "
                "change with tuned values (fedarena compare --tune N searches them on validation data, one budget "
                "per algorithm).")
    else:
        lead = ("No hyperparameter was tuned: every algorithm ran with the values its config sets, listed below "
                "(fedarena compare --tune N searches them on validation data, one budget per algorithm).")
    return _Hyperparameters(str(block["label"]), tuned, lead, rows, tu.selection_rules(summary) if tuned else [])


def _context(summary: dict[str, Any], persona: str, priority: str) -> _Context:
    return _Context(summary, claim_table(summary), recommend(summary, persona, priority),
                    all_priorities(summary, persona))


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("fedarena.report", "templates"),
                              autoescape=jinja2.select_autoescape(["html", "j2"]),
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_html(summary: dict[str, Any], persona: str = "architect", priority: str = "accuracy") -> str:
    c = _context(summary, persona, priority)
    figures = report_figures(summary, c.table.groups, c.table.sides)
    plots = {key: fig.to_html(full_html=False, include_plotlyjs=False, div_id=key, config=PLOT_CONFIG)
             for key, fig in figures.items()}
    return _environment().get_template("report.html.j2").render(
        summary=summary, setup=_setup(summary), table=c.table, algorithms=_algorithms(summary, c.table.groups),
        rec=c.recommendation, rec_hyperparameters=hyperparameters_line(c.recommendation), by_priority=c.by_priority,
        plots=plots, verdict_class=VERDICT_CLASS, hyper=_hyperparameters(summary),
        spread_caption=_spread_caption(summary, c.table.num_seeds),
        legend=VERDICT_LEGEND, plotly_js=plotly.offline.get_plotlyjs(),
    )


def _spread_caption(summary: dict[str, Any], num_seeds: int) -> str:
    if num_seeds < 2:
        return ""
    if any(aggregate_ci(summary, a, "personal_acc_mean") for a in m.by_algorithm(summary)):
        return (f"Accuracies: mean over {num_seeds} seeds [its 95% confidence interval, in %]; bytes and storage: "
                "mean over the seeds; rounds to target: mean over the seeds that reached it.")
    return (f"Mean over {num_seeds} seeds ± the half-width of its 95% confidence interval; rounds to target: "
            "mean over the seeds that reached it.")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(summary: dict[str, Any], persona: str = "architect", priority: str = "accuracy") -> str:
    c = _context(summary, persona, priority)
    t = c.table
    out = [f"# fedarena report: {summary['dataset']['name']}, {summary['dataset']['partition']}, "
           f"{summary['dataset']['num_clients']} clients", "",
           "Plots are in report.html (same directory).", "", "## Setup", ""]
    out += [f"- **{k}**: {_md_cell(v)}" for k, v in _setup(summary)]
    out += ["", "## The common pFL-vs-global table, measured", "",
            f"Best pFL: **{t.sides.pfl or 'none'}**; best global: **{t.sides.glob or 'none'}** "
            "(highest mean per-client accuracy on each side). Every verdict rests on the hyperparameters in "
            "its last column (see Hyperparameters).", "",
            "| Metric | Claim: personalized FL | Claim: global FL | Measured | Verdict | Hyperparameters |",
            "|---|---|---|---|---|---|"]
    for r in t.rows:
        measured = r.measured + (f" ({r.note})" if r.note else "")
        out.append(f"| {_md_cell(r.topic)} | {_md_cell(r.pfl_claim)} | {_md_cell(r.global_claim)} | "
                   f"{_md_cell(measured)} | **{r.verdict.value}** | {_md_cell(t.hyperparameters)} |")
    out += ["", "Verdicts: " + "; ".join(f"*{v.value}*: {text}" for v, text in VERDICT_LEGEND) + ".", "",
            "## Algorithms", "",
            "| algorithm | family | personal acc | worst 10% | global acc | bytes/round | rounds to target | storage/client |",
            "|---|---|---|---|---|---|---|---|"]
    caption = _spread_caption(summary, t.num_seeds)
    for a in _algorithms(summary, t.groups):
        out.append(f"| {a['algorithm']} | {a['family']} | {a['personal']} | {a['worst10']} | {a['global']} | "
                   f"{a['per_round']} | {a['rounds']} | {a['storage']} |")
    out += ["", caption] if caption else []
    out += _hyperparameters_markdown(_hyperparameters(summary))
    out += ["", f"## Recommendation ({c.recommendation.persona}, priority {c.recommendation.priority})", "",
            as_text(c.recommendation), "", "| priority | pick | rule | hyperparameters |", "|---|---|---|---|"]
    out += [f"| {r.priority} | {r.algorithm} | {_md_cell(r.rule)} | {_md_cell(r.tuning['label'])} |"
            for r in c.by_priority]
    return "\n".join(out) + "\n"


def _hyperparameters_markdown(h: _Hyperparameters) -> list[str]:
    out = ["", f"## Hyperparameters: {h.label}", "", h.lead, ""]
    if h.tuned:
        out += ["| algorithm | chosen by tuning | other values trained with | best validation | trials | pruned | "
                "budget (client-rounds) | spent (client-rounds) | search time |", "|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['algorithm']} | {_md_cell(r['chosen'])} | {_md_cell(r['fixed'])} | {r['best_val']} | "
                f"{r['trials']} | {r['pruned']} | {r['budget']} | {r['spent']} | {r['seconds']} |" for r in h.rows]
        out += [""] + [f"Selection rule: {rule}." for rule in h.selection]
        out += ["", "The trials (validation objective per trial) and the importance of each hyperparameter are "
                "plotted in report.html."]
    else:
        out += ["| algorithm | values trained with |", "|---|---|"]
        out += [f"| {r['algorithm']} | {_md_cell(r['fixed'])} |" for r in h.rows]
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_report(run_dir: Path, out_dir: Path | None = None, persona: str = "architect",
                 priority: str = "accuracy") -> ReportPaths:
    """Write report.html and report.md for the run in `run_dir` into `out_dir` (default: `run_dir`).
    Only these two files are written; the run's own files are never touched."""
    summary = load_summary(run_dir)
    target = Path(out_dir) if out_dir is not None else Path(run_dir)
    target.mkdir(parents=True, exist_ok=True)
    paths = ReportPaths(target / "report.html", target / "report.md")
    html = render_html(summary, persona, priority)
    markdown = render_markdown(summary, persona, priority)
    _write_atomic(paths.html, html)
    _write_atomic(paths.markdown, markdown)
    log.info("report written to %s", paths.html)
    return paths


def sweep_lines(result: dict[str, Any]) -> list[str]:
    """One line per sweep cell, for the terminal and sweep.md."""
    return [f"{c['cell']:>15}  JS {c['js_divergence_mean']:.2f}  {c['best_pfl']} {pct(c['best_pfl_acc'])} vs "
            f"{c['best_global']} {pct(c['best_global_acc'])}: {c['gain_text']}  -> {c['ahead']}"
            + ("  (reused)" if c["reused"] else "") for c in result["cells"]]


def write_privacy_sweep_report(result: dict[str, Any], out_dir: Path) -> ReportPaths:
    """privacy_sweep.html (accuracy against the privacy budget, per algorithm) and privacy_sweep.md."""
    from fedarena.report.plots import accuracy_vs_epsilon
    from fedarena.report.privacy_sweep import lines

    plot = accuracy_vs_epsilon(result["cells"]).to_html(full_html=True, include_plotlyjs=True,
                                                       div_id="plot-epsilon", config=PLOT_CONFIG)
    text = lines(result)
    markdown = "\n".join([
        "# fedarena privacy sweep: what the same DP budget costs each family", "",
        f"{result['population']} clients, {result['clients_per_round']} per round (Poisson), {result['rounds']} rounds, "
        f"clip {result['clip']}, delta {result['delta']}; central DP-FedAvg, noise chosen per budget.", "",
        f"Claim \u201cthe same privacy protection costs pFL less accuracy\u201d: **{result['cost']['verdict']}**"
        + (f" ({result['cost']['note']})" if result["cost"].get("note") else "") + ".", "",
        "```", *text, "```", "",
    ])
    paths = ReportPaths(out_dir / "privacy_sweep.html", out_dir / "privacy_sweep.md")
    _write_atomic(paths.html, plot)
    _write_atomic(paths.markdown, markdown)
    return paths


def write_sweep_report(result: dict[str, Any], out_dir: Path) -> ReportPaths:
    """sweep.html (the crossover plot and the cells) and sweep.md for a sweep result."""
    plot = crossover(result["cells"]).to_html(full_html=False, include_plotlyjs=False, div_id="plot-crossover",
                                               config=PLOT_CONFIG)
    html = _environment().get_template("sweep.html.j2").render(
        result=result, plot=plot, pct=pct, plotly_js=plotly.offline.get_plotlyjs())
    markdown = "\n".join([
        "# fedarena sweep: where personalization pays off", "",
        f"Algorithms: {', '.join(result['algorithms'])}; seeds: {', '.join(map(str, result['seeds']))}.", "",
        f"Claim \u201cideal data similarity: pFL low (non-IID), global high (IID)\u201d: "
        f"**{result['data_similarity_verdict']}**. {result['crossover']['text']}.", "",
        f"Rule: {result['rule']}.", "", "```", *sweep_lines(result), "```", "",
    ])
    paths = ReportPaths(out_dir / "sweep.html", out_dir / "sweep.md")
    _write_atomic(paths.html, html)
    _write_atomic(paths.markdown, markdown)
    return paths
