"""The report's figures as plotly figures, built from summary.json (and, for a tuned run, the trials of its
tuning.parquet, which `render.load_summary` attaches as `tuning_trials`).

With several seeds, curves are the mean over seeds per evaluated round and per-client plots pool the
(seed, client) pairs: the clients of one seed are compared with the same seed's clients only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

from fedarena.report import measures as m
from fedarena.report import tuning as tu
from fedarena.report.claims import Sides
from fedarena.report.measures import Run

PALETTE = qualitative.Plotly + qualitative.D3  # 20 colours; an algorithm keeps its colour in every plot
LAYOUT = dict(template="plotly_white", height=420, margin=dict(l=60, r=20, t=50, b=50),
              legend=dict(orientation="h", y=-0.2), font=dict(size=12))


def _figure(title: str, xaxis: str, yaxis: str, **extra: Any) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis, **LAYOUT)
    fig.update_layout(**extra)
    return fig


def _mean_history(runs: list[Run], key: str) -> tuple[list[int], list[float]]:
    """Per evaluated round, the mean of history[key] over seeds (rounds present in every seed)."""
    rounds = sorted(set.intersection(*({h["round"] for h in r["history"]} for r in runs)))
    values = [float(np.mean([next(h[key] for h in r["history"] if h["round"] == k) for r in runs])) for k in rounds]
    return rounds, values


def label_heatmap(summary: dict[str, Any]) -> go.Figure:
    """Share of each class in each client's train split (the label skew at a glance)."""
    ds = summary["dataset"]
    counts = np.asarray(ds["heterogeneity"]["label_counts"], dtype=float)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    ids = ds["client_ids"][: len(counts)]
    fig = _figure("Label distribution per client (train split, share of samples)", "class", "client")
    fig.add_trace(go.Heatmap(
        z=share, x=[str(c) for c in range(counts.shape[1])], y=ids, colorscale="Blues", zmin=0, zmax=1,
        customdata=counts, hovertemplate="client %{y}, class %{x}: %{customdata:.0f} samples (%{z:.0%})<extra></extra>"))
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_xaxes(type="category")
    return fig


def colors(groups: dict[str, list[Run]]) -> dict[str, str]:
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(groups)}


def accuracy_vs_round(groups: dict[str, list[Run]], target: float) -> go.Figure:
    fig = _figure("Per-client accuracy (mean) vs round", "round", "personal accuracy (sample-weighted mean)",
                  yaxis_tickformat=".0%")
    for name, runs in groups.items():
        x, y = _mean_history(runs, "personal_acc_mean")
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name, line_color=colors(groups)[name],
                                 hovertemplate=f"{name}<br>round %{{x}}: %{{y:.1%}}<extra></extra>"))
    fig.add_hline(y=target, line_dash="dot", line_color="grey", annotation_text=f"target {target:.1%}")
    return fig


def accuracy_vs_bytes(groups: dict[str, list[Run]], target: float) -> go.Figure:
    fig = _figure("Per-client accuracy (mean) vs communication", "cumulative MB (up + down, all clients)",
                  "personal accuracy (sample-weighted mean)", yaxis_tickformat=".0%")
    for name, runs in groups.items():
        _, y = _mean_history(runs, "personal_acc_mean")
        _, b = _mean_history(runs, "bytes_cumulative")
        fig.add_trace(go.Scatter(x=[v / 1e6 for v in b], y=y, mode="lines+markers", marker_size=4, name=name,
                                 line_color=colors(groups)[name],
                                 hovertemplate=f"{name}<br>%{{x:.2f}} MB: %{{y:.1%}}<extra></extra>"))
    fig.add_hline(y=target, line_dash="dot", line_color="grey", annotation_text=f"target {target:.1%}")
    return fig


def per_client_distribution(groups: dict[str, list[Run]]) -> go.Figure:
    """One box (with every client as a point) per algorithm; a red diamond marks the worst-10% mean."""
    fig = _figure("Per-client accuracy, every client (red diamond: mean of the worst 10%)", "algorithm",
                  "personal accuracy on the client's own test split", yaxis_tickformat=".0%", showlegend=False)
    for name, runs in groups.items():
        accs = [a for r in runs for a in r["final"]["personal_acc_per_client"].values()]
        clients = [f"{c}" + (f" (seed {r['seed']})" if len(runs) > 1 and "seed" in r else "")
                   for r in runs for c in r["final"]["personal_acc_per_client"]]
        fig.add_trace(go.Box(y=accs, name=name, boxpoints="all", jitter=0.4, pointpos=0, text=clients,
                             marker_color=colors(groups)[name],
                             hovertemplate="client %{text}: %{y:.1%}<extra>" + name + "</extra>"))
        fig.add_trace(go.Scatter(x=[name], y=[m.over_seeds(runs, m.acc_worst10).mean], mode="markers",
                                 marker=dict(symbol="diamond", size=12, color="crimson"),
                                 hovertemplate="worst 10%: %{y:.1%}<extra>" + name + "</extra>"))
    return fig


def personal_vs_global(groups: dict[str, list[Run]], sides: Sides) -> go.Figure:
    """Each client: the best global model's accuracy on its test split (x) against its personal model
    under each non-global algorithm (y). Above the diagonal the client gains from personalization."""
    glob = sides.glob
    if glob is None:
        fig = _figure("Who gains, who loses: not measured (no global algorithm in this run)", "", "")
        return fig
    title = f"Who gains: each client's personal model vs {glob}"
    fig = _figure(title, f"{glob}: global model on the client's test split", "personal model on the same split",
                  xaxis_tickformat=".0%", yaxis_tickformat=".0%")
    reference = {r.get("seed"): r["final"]["personal_acc_per_client"] for r in groups[glob]}
    for name, runs in groups.items():
        if runs[0]["family"] == "global" or not runs[0]["federated"]:
            continue
        x, y, text = [], [], []
        for r in runs:
            ref = reference.get(r.get("seed"), {})
            for client, acc in r["final"]["personal_acc_per_client"].items():
                if client in ref:
                    x.append(ref[client])
                    y.append(acc)
                    text.append(client)
        fig.add_trace(go.Scatter(x=x, y=y, text=text, mode="markers", name=name, marker_color=colors(groups)[name],
                                 visible=True if name == sides.pfl else "legendonly",
                                 hovertemplate="client %{text}: %{x:.1%} \u2192 %{y:.1%}<extra>" + name + "</extra>"))
    fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line=dict(dash="dash", color="grey"))
    fig.update_xaxes(range=[-0.02, 1.02])
    fig.update_yaxes(range=[-0.02, 1.02])
    return fig


def pareto(groups: dict[str, list[Run]]) -> go.Figure:
    """Final accuracy against total bytes; the grey line joins the Pareto-optimal algorithms (no other
    is both more accurate and cheaper)."""
    fig = _figure("Accuracy vs communication (Pareto front)", "total MB on the wire (up + down)",
                  "personal accuracy (sample-weighted mean)", yaxis_tickformat=".0%", showlegend=False)
    by_point: dict[tuple[float, float], list[str]] = {}
    for a, rs in groups.items():
        if rs[0]["federated"]:
            point = (round(m.over_seeds(rs, m.bytes_total).mean / 1e6, 3), round(m.over_seeds(rs, m.acc_mean).mean, 4))
            by_point.setdefault(point, []).append(a)  # identical results share one labelled marker
    points = sorted(by_point.items(), key=lambda p: (p[0][0], -p[0][1]))
    front, best = [], -1.0
    for (mb, acc), _ in points:
        if acc > best:
            front.append((mb, acc))
            best = acc
    fig.add_trace(go.Scatter(x=[p[0] for p in front], y=[p[1] for p in front], mode="lines",
                             line=dict(color="lightgrey", width=6), hoverinfo="skip"))
    for (mb, acc), names in points:  # beyond 6 points only the front is labelled; all name themselves on hover
        labelled = len(points) <= 6 or (mb, acc) in front
        fig.add_trace(go.Scatter(x=[mb], y=[acc], text=[" = ".join(names)], mode="markers+text" if labelled else "markers",
                                 textposition="top center", marker=dict(size=12, color=colors(groups)[names[0]]),
                                 hovertemplate="%{text}: %{y:.1%} for %{x:.2f} MB<extra></extra>"))
    return fig


def crossover(cells: list[dict[str, Any]]) -> go.Figure:
    """Sweep: best pFL minus best global per-client accuracy against heterogeneity, with the 95% CI
    over seeds as a band; above 0 personalization pays off. Cells without a gain (no pFL or no global algorithm
    ran there) are left out."""
    cells = sorted((c for c in cells if c["gain"]["mean"] is not None), key=lambda c: c["js_divergence_mean"])
    x = [c["js_divergence_mean"] for c in cells]
    y = [c["gain"]["mean"] for c in cells]
    hw = [c["gain"]["half_width"] or 0.0 for c in cells]
    fig = _figure("Where personalization pays off: best pFL \u2212 best global, per-client accuracy",
                  "label heterogeneity (mean JS divergence to the pooled distribution)",
                  "accuracy gain of pFL (95% CI band over seeds)", yaxis_tickformat="+.0%", showlegend=False)
    fig.add_trace(go.Scatter(x=x + x[::-1], y=[a + h for a, h in zip(y, hw)] + [a - h for a, h in zip(y, hw)][::-1],
                             mode="lines", fill="toself", fillcolor="rgba(31,119,180,0.2)", line=dict(width=0),
                             hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=x, y=y, text=[c["cell"] for c in cells], mode="lines+markers+text",
                             textposition="top center",
                             hovertemplate="%{text}: JS %{x:.2f}, gain %{y:+.1%}<extra></extra>"))
    fig.add_hline(y=0, line_dash="dash", line_color="grey")
    return fig


def accuracy_vs_epsilon(cells: list[dict[str, Any]]) -> go.Figure:
    """Privacy sweep: mean per-client accuracy of each algorithm against the DP budget (no DP at the right)."""
    cells = sorted(cells, key=lambda c: math.inf if c["epsilon_target"] is None else c["epsilon_target"])
    labels = ["no DP" if c["epsilon_target"] is None else f"\u03b5 \u2264 {c['epsilon_target']:g}" for c in cells]
    fig = _figure("Accuracy against the privacy budget (central DP-FedAvg)", "privacy budget",
                  "mean per-client accuracy", yaxis_tickformat=".0%")
    for name in cells[0]["algorithms"]:
        a = [c["algorithms"][name] for c in cells]
        fig.add_trace(go.Scatter(x=labels, y=[v["personal_acc_mean"] for v in a], mode="lines+markers",
                                 name=f"{name} ({a[0]['family']})",
                                 hovertemplate=f"{name}: %{{y:.1%}} at %{{x}}<extra></extra>"))
    return fig


def _colour(groups: dict[str, list[Run]], name: str, i: int) -> str:
    return colors(groups).get(name, PALETTE[i % len(PALETTE)])


def tuning_trials(points: dict[str, list[tu.TrialPoint]], groups: dict[str, list[Run]],
                  objective: str | None = None) -> go.Figure:
    """Per algorithm, each trial's validation objective against its number: a complete trial at its final round
    (filled circle; the chosen one a star), a pruned trial at the last round it reported (open cross)."""
    fig = _figure("Tuning trials: validation objective<br><sup>dot: complete, at its final round; cross: pruned, "
                  "the last value it reported; star: chosen</sup>", "trial", "validation objective",
                  yaxis_tickformat=".0%", margin=dict(l=60, r=20, t=70, b=50))
    for i, (name, trials) in enumerate(points.items()):
        colour = _colour(groups, name, i)
        for state, symbol, size_ in (("complete", "circle", 9), ("pruned", "x-thin-open", 11)):
            shown = [p for p in trials if p.state == state and p.objective is not None]
            if not shown:
                continue
            fig.add_trace(go.Scatter(
                x=[p.trial for p in shown], y=[p.objective for p in shown], mode="markers",
                name=f"{name} ({state})", legendgroup=name,
                marker=dict(symbol=symbol, size=size_, color=colour, line=dict(width=2, color=colour)),
                text=[f"{tu.values_text(p.params)}; round {p.round}" for p in shown],
                hovertemplate=f"{name} trial %{{x}} ({state}): %{{y:.1%}}<br>%{{text}}"
                              + (f"<br>{objective}" if objective else "") + "<extra></extra>"))
        best = [p for p in trials if p.best and p.objective is not None]
        if best:
            fig.add_trace(go.Scatter(
                x=[p.trial for p in best], y=[p.objective for p in best], mode="markers", name=f"{name} (chosen)",
                legendgroup=name, marker=dict(symbol="star", size=16, color=colour, line=dict(width=1, color="black")),
                text=[tu.values_text(p.params) for p in best],
                hovertemplate=f"{name}: chosen trial %{{x}}, %{{y:.1%}}<br>%{{text}}<extra></extra>"))
    if max((len(t) for t in points.values()), default=0) <= 20:
        fig.update_xaxes(tickmode="linear", dtick=1)
    return fig


def tuning_importances(importances: dict[str, dict[str, float]], groups: dict[str, list[Run]]) -> go.Figure:
    """fANOVA importance of each searched hyperparameter, one group of bars per algorithm."""
    fig = _figure("Tuning: how much each hyperparameter mattered<br><sup>fANOVA importance over the completed "
                  "trials; sums to 1 per algorithm</sup>", "hyperparameter", "importance", yaxis_tickformat=".0%",
                  barmode="group", margin=dict(l=60, r=20, t=70, b=50))
    for i, (name, imp) in enumerate(importances.items()):
        keys = sorted(imp, key=lambda k: -imp[k])
        fig.add_trace(go.Bar(x=keys, y=[imp[k] for k in keys], name=name, marker_color=_colour(groups, name, i),
                             hovertemplate=f"{name}: %{{x}} %{{y:.0%}}<extra></extra>"))
    fig.update_yaxes(range=[0, 1])
    fig.update_layout(showlegend=True)  # names the algorithm even when only one has importances
    return fig


def report_figures(summary: dict[str, Any], groups: dict[str, list[Run]], sides: Sides) -> dict[str, go.Figure]:
    """The figures of report.html, by element id; the tuning figures only for a tuned run (tuning.parquet read,
    and for the importances, an algorithm with any)."""
    target = summary["target_acc"]
    figures = {
        "plot-labels": label_heatmap(summary),
        "plot-acc-round": accuracy_vs_round(groups, target),
        "plot-acc-bytes": accuracy_vs_bytes(groups, target),
        "plot-clients": per_client_distribution(groups),
        "plot-gain-scatter": personal_vs_global(groups, sides),
        "plot-pareto": pareto(groups),
    }
    points = tu.trial_points(summary.get("tuning_trials") or [])
    if points:
        figures["plot-tuning-trials"] = tuning_trials(points, groups, tu.objective_text(summary))
    importances = tu.importances(summary)
    if importances:
        figures["plot-tuning-importances"] = tuning_importances(importances, groups)
    return figures
