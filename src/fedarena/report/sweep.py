"""`fedarena sweep`'s reading: the same comparison over a grid of heterogeneity levels, to find where
personalization stops paying off (the "ideal data similarity" row, measured). The cells are run by
:mod:`fedarena.experiments.sweep`; this module reads their summaries.

Each grid cell is one ordinary multi-seed comparison (`run_compare` with `run.seeds`), written as a
run directory `OUT/cells/<cell>/`. A cell whose directory already holds a `summary.json` written
from the same resolved config is reused, not rerun, so an interrupted sweep resumes where it stopped
(compare writes a cell atomically: a cell is either complete or absent). A cell directory that holds
a run of a *different* config is refused rather than overwritten.

Per cell, the gain is best pFL minus best global mean per-client accuracy (sides as in
:mod:`fedarena.report.claims`), paired per seed, with its 95% confidence interval. The x axis is the
measured label heterogeneity (mean JS divergence, averaged over seeds), so Dirichlet, shards and
IID cells share one axis.

The "ideal data similarity" verdict follows SIMILARITY_RULE.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fedarena.core.types import FedarenaError
from fedarena.report import measures as m
from fedarena.report.claims import Verdict, choose_sides
from fedarena.report.format import signed_pp, with_spread

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    """One heterogeneity level: `iid`, `dirichlet-<alpha>` or `shards-<classes per client>`."""

    name: str
    partition: str
    alpha: float | None = None
    shards_per_client: int | None = None

    @staticmethod
    def parse(text: str) -> Cell:
        kind, _, value = text.strip().partition("-")
        try:
            if kind == "iid" and not value:
                return Cell("iid", "iid")
            if kind == "dirichlet" and float(value) > 0:
                return Cell(f"dirichlet-{float(value):g}", "dirichlet", alpha=float(value))
            if kind == "shards" and int(value) >= 1:
                return Cell(f"shards-{int(value)}", "shards", shards_per_client=int(value))
        except ValueError:
            pass
        raise FedarenaError(f"bad sweep cell '{text}'; expected iid, dirichlet-<alpha > 0> or shards-<k >= 1>")


SIMILARITY_RULE = (
    "pFL for non-IID, global for IID, judged from the least and the most heterogeneous cells: holds when pFL is "
    "ahead beyond noise at the most heterogeneous cell and not ahead beyond noise at the least heterogeneous one; "
    "partly when the gain is larger at the most heterogeneous end but one end contradicts the claim; does not hold "
    "when the gain is not larger at the most heterogeneous end; within noise when every cell's gain is within noise"
)
def cell_result(cell: Cell, summary: dict[str, Any], run_dir: str, reused: bool) -> dict[str, Any]:
    groups = m.by_algorithm(summary)
    sides = choose_sides(groups)
    het = (summary.get("aggregate") or {}).get("heterogeneity") or [summary["dataset"]["heterogeneity"]]
    gain = m.Stat(())
    if sides.pfl and sides.glob:
        gain = m.paired(groups[sides.pfl], groups[sides.glob], lambda a, b: m.acc_mean(a) - m.acc_mean(b))
    ahead = ("not measured" if gain.n == 0 else "within noise" if gain.within_noise
             else "pFL" if gain.mean > 0 else "global" if gain.mean < 0 else "tie")
    return {
        "cell": cell.name, "partition": cell.partition, "alpha": cell.alpha,
        "shards_per_client": cell.shards_per_client, "run_dir": run_dir, "reused": reused,
        "js_divergence_mean": sum(h["js_divergence_mean"] for h in het) / len(het),
        "effective_classes_mean": sum(h["effective_classes_mean"] for h in het) / len(het),
        "best_pfl": sides.pfl, "best_global": sides.glob,
        "best_pfl_acc": m.over_seeds(groups[sides.pfl], m.acc_mean).mean if sides.pfl else None,
        "best_global_acc": m.over_seeds(groups[sides.glob], m.acc_mean).mean if sides.glob else None,
        "gain": gain.to_json() | {"half_width": gain.half_width, "values": list(gain.values)},
        "gain_text": with_spread(gain, signed_pp),
        "ahead": ahead,
    }


def _gain(cell: dict[str, Any]) -> m.Stat:
    return m.Stat(tuple(cell["gain"]["values"]))


def crossover(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the gain changes sign along the heterogeneity axis (linear interpolation between the two
    neighbouring cells), or which side is ahead everywhere."""
    ordered = sorted((c for c in cells if c["gain"]["mean"] is not None), key=lambda c: c["js_divergence_mean"])
    for lo, hi in zip(ordered, ordered[1:]):
        a, b = lo["gain"]["mean"], hi["gain"]["mean"]
        if (a <= 0 < b) or (b <= 0 < a):
            x = lo["js_divergence_mean"] + (hi["js_divergence_mean"] - lo["js_divergence_mean"]) * (-a) / (b - a)
            side = "above" if b > 0 else "below"
            return {"js_divergence": x, "between": [lo["cell"], hi["cell"]],
                    "text": f"Personalization pays off {side} a mean JS divergence of about {x:.2f} "
                            f"(the gain changes sign between {lo['cell']} and {hi['cell']})"}
    if not ordered:
        return {"js_divergence": None, "between": None, "text": "Not measured: no cell has both a pFL and a global algorithm"}
    side = "pFL" if all(c["gain"]["mean"] > 0 for c in ordered) else "global"
    return {"js_divergence": None, "between": None,
            "text": f"No crossover in the grid: {side} is ahead at every heterogeneity level measured "
                    f"(JS {ordered[0]['js_divergence_mean']:.2f} to {ordered[-1]['js_divergence_mean']:.2f})"}


def similarity_verdict(cells: list[dict[str, Any]]) -> Verdict:
    """The "ideal data similarity" rule of the module docstring."""
    ordered = [_gain(c) for c in sorted((c for c in cells if c["gain"]["n"]), key=lambda c: c["js_divergence_mean"])]
    if len(ordered) < 2:
        return Verdict.NOT_MEASURED
    if all(g.within_noise for g in ordered):
        return Verdict.NOISE
    least, most = ordered[0], ordered[-1]
    if most.mean <= least.mean:
        return Verdict.FAILS
    pfl_ahead = [g.mean > 0 and not g.within_noise for g in (least, most)]
    return Verdict.HOLDS if pfl_ahead == [False, True] else Verdict.PARTLY
