"""report.html (one self-contained file: plotly's JS inlined, no CDN, opens offline) and report.md.

Both are rendered from one context built from summary.json: the setup, the measured claims table,
the figures (HTML only) and the recommendation.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import plotly.offline

from fedarena.core.types import FedarenaError
from fedarena.report import measures as m
from fedarena.report.claims import ClaimTable, Verdict, claim_table
from fedarena.report.format import pct, size, with_spread
from fedarena.report.plots import crossover, report_figures
from fedarena.report.recommend import Recommendation, all_priorities, as_text, recommend

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
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FedarenaError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(summary, dict) or not summary.get("runs"):
        raise FedarenaError(f"{path} has no runs")
    missing = [k for k in ("config", "dataset", "model", "target_acc", "target_rule") if k not in summary]
    if missing:
        raise FedarenaError(f"{path} lacks {', '.join(missing)}: not a fedarena summary (see docs/summary.md)")
    forgets = []
    for f in sorted(Path(run_dir).glob("forget-*/forget.json")):  # written by compare --forget-probe
        try:
            forgets.append(json.loads(f.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FedarenaError(f"{f} is not valid JSON: {exc}") from None
    summary["forget"] = forgets or None
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
                     f"{train['local_epochs']} local epoch(s), batch {train['batch_size']}, lr {train['lr']}"),
        ("seeds", ", ".join(map(str, seeds)) + ("" if len(seeds) > 1 else " (one seed: the noise is unknown)")),
        ("target", f"{pct(summary['target_acc'])}: {summary['target_rule']}"),
    ]


def _algorithms(groups: dict[str, list[m.Run]]) -> list[dict[str, str]]:
    rows = []
    for name, runs in groups.items():
        def s(metric: m.Metric, runs: list[m.Run] = runs) -> m.Stat:
            return m.over_seeds(runs, metric)

        rows.append({
            "algorithm": name,
            "family": runs[0]["family"] + ("" if runs[0]["federated"] else " (not federated)"),
            "personal": with_spread(s(m.acc_mean), pct, label=False),
            "worst10": with_spread(s(m.acc_worst10), pct, label=False),
            "global": with_spread(s(m.global_acc), pct, label=False) if s(m.global_acc).n else "none",
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
        summary=summary, setup=_setup(summary), table=c.table, algorithms=_algorithms(c.table.groups),
        rec=c.recommendation, by_priority=c.by_priority, plots=plots, verdict_class=VERDICT_CLASS,
        spread_caption=_spread_caption(c.table.num_seeds),
        legend=VERDICT_LEGEND, plotly_js=plotly.offline.get_plotlyjs(),
    )


def _spread_caption(num_seeds: int) -> str:
    if num_seeds < 2:
        return ""
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
            "(highest mean per-client accuracy on each side).", "",
            "| Metric | Claim: personalized FL | Claim: global FL | Measured | Verdict |", "|---|---|---|---|---|"]
    for r in t.rows:
        measured = r.measured + (f" ({r.note})" if r.note else "")
        out.append(f"| {_md_cell(r.topic)} | {_md_cell(r.pfl_claim)} | {_md_cell(r.global_claim)} | "
                   f"{_md_cell(measured)} | **{r.verdict.value}** |")
    out += ["", "Verdicts: " + "; ".join(f"*{v.value}*: {text}" for v, text in VERDICT_LEGEND) + ".", "",
            "## Algorithms", "",
            "| algorithm | family | personal acc | worst 10% | global acc | bytes/round | rounds to target | storage/client |",
            "|---|---|---|---|---|---|---|---|"]
    caption = _spread_caption(t.num_seeds)
    for a in _algorithms(t.groups):
        out.append(f"| {a['algorithm']} | {a['family']} | {a['personal']} | {a['worst10']} | {a['global']} | "
                   f"{a['per_round']} | {a['rounds']} | {a['storage']} |")
    out += ["", caption] if caption else []
    out += ["", f"## Recommendation ({c.recommendation.persona}, priority {c.recommendation.priority})", "",
            as_text(c.recommendation), "", "| priority | pick | rule |", "|---|---|---|"]
    out += [f"| {r.priority} | {r.algorithm} | {_md_cell(r.rule)} |" for r in c.by_priority]
    return "\n".join(out) + "\n"


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
        f"Claim \u201cthe same privacy protection costs pFL less accuracy\u201d: **{result['cost']['verdict']}**.", "",
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
