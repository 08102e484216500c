"""`fedarena sweep --epsilons 1,3,8,inf`: the same comparison at several privacy budgets, to measure what
the same protection costs each family (the report's "privacy cost" row).

Each budget is one cell, an ordinary comparison with central DP-FedAvg (privacy/round.py) whose noise
multiplier z is chosen with the accountant so that the run ends at exactly that epsilon (the largest
epsilon <= the target over `train.rounds` rounds, Poisson sampling of clients_per_round / N, `privacy.dp_delta`);
`inf` is the same comparison without DP. Cells are written to `OUT/cells/eps-<e>/` and reused when rerun
with the same config, like the heterogeneity sweep. Personalized algorithms privatize only their shared
part; their personal part never leaves the client (and gets no noise), so the cost may differ by family.

PRIVACY_RULE turns the measured losses into a verdict.
"""

from __future__ import annotations

import math
from typing import Any

from fedarena.core.types import FedarenaError
from fedarena.report import measures as m
from fedarena.report.claims import Verdict, choose_sides, range_verdict
from fedarena.report.format import signed_pp, with_spread

PRIVACY_RULE = (
    "at each finite epsilon, loss = accuracy without DP minus accuracy with DP (mean per-client accuracy; best pFL "
    "and best global algorithm chosen in the no-DP cell), and q = global's loss minus pFL's, paired by seed; the claim "
    "'the same protection costs pFL less' holds at a budget when q > 0, does not hold when q <= 0, is within noise when "
    "(with >= 2 seeds) q's 95% confidence interval contains 0; over several budgets: the one verdict they share, else "
    "partly"
)
DEFAULT_EPSILONS = ("1", "3", "8", "inf")


def parse_epsilon(text: str) -> float:
    t = text.strip().lower()
    if t in ("inf", "infinity"):
        return math.inf
    try:
        value = float(t)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise FedarenaError(f"bad privacy budget '{text}'; expected a number > 0 or inf")
    return value


def label(epsilon: float) -> str:
    return "inf" if math.isinf(epsilon) else f"{epsilon:g}"


def cell_result(epsilon: float, summary: dict[str, Any], run_dir: str, reused: bool) -> dict[str, Any]:
    groups = m.by_algorithm(summary)
    algos = {}
    for name, runs in groups.items():
        privacy = runs[0].get("privacy") or {}
        algos[name] = {
            "family": runs[0]["family"],
            "personal_acc_mean": m.over_seeds(runs, m.acc_mean).mean,
            "personal_acc_mean_per_seed": {str(r["seed"]): m.acc_mean(r) for r in runs},
            "personal_acc_worst10": m.over_seeds(runs, m.acc_worst10).mean,
            "global_acc": m.over_seeds(runs, m.global_acc).mean,
            "epsilon": privacy.get("epsilon"),
            "noise_multiplier": privacy.get("noise_multiplier"),
            # membership inference on the model each client keeps and on the global model (privacy/leakage.py)
            "personal_member_auc": _mean_of(runs, "personal_auc_mean"),
            "global_member_auc": _mean_of(runs, "global_auc_mean"),
        }
    return {"epsilon_target": None if math.isinf(epsilon) else epsilon, "cell": f"eps-{label(epsilon)}",
            "run_dir": run_dir, "reused": reused, "algorithms": algos}


def _mean_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r["membership"][key] for r in runs if (r.get("membership") or {}).get(key) is not None]
    return sum(values) / len(values) if values else None


def privacy_cost(cells: list[dict[str, Any]], inf_summary: dict[str, Any]) -> dict[str, Any]:
    """Per finite budget, each side's accuracy loss against the no-DP cell (mean over seeds), q (global's loss minus
    pFL's, paired by seed, with its 95% interval) and the verdict (PRIVACY_RULE)."""
    sides = choose_sides(m.by_algorithm(inf_summary))
    base = next(c for c in cells if c["epsilon_target"] is None)["algorithms"]
    rows, verdicts = [], []
    for c in sorted((c for c in cells if c["epsilon_target"] is not None), key=lambda c: c["epsilon_target"]):
        loss = {side: _loss(base[name], c["algorithms"][name])
                for side, name in (("pfl", sides.pfl), ("global", sides.glob)) if name}
        row: dict[str, Any] = {"epsilon": c["epsilon_target"], **{f"{k}_loss": v.mean for k, v in loss.items()}}
        if len(loss) == 2:
            q = m.Stat(tuple(g - p for g, p in zip(loss["global"].values, loss["pfl"].values)))
            verdict = range_verdict(q, 0.0)
            row |= {"q": q.to_json() | {"half_width": q.half_width}, "q_text": with_spread(q, signed_pp),
                    "verdict": verdict.value}
            verdicts.append(verdict)
        rows.append(row)
    verdict = (Verdict.NOT_MEASURED if not verdicts else verdicts[0] if len(set(verdicts)) == 1 else Verdict.PARTLY)
    seeds = len(m.seeds(inf_summary))
    note = "one seed: no noise estimate; use --seeds" if seeds < 2 and verdicts else ""
    return {"pfl": sides.pfl, "global": sides.glob, "losses": rows, "verdict": verdict.value, "note": note,
            "seeds": seeds, "rule": PRIVACY_RULE}


def _loss(no_dp: dict[str, Any], dp: dict[str, Any]) -> m.Stat:
    """Accuracy without DP minus with DP, per seed (the seeds both cells ran)."""
    a, b = no_dp["personal_acc_mean_per_seed"], dp["personal_acc_mean_per_seed"]
    return m.Stat(tuple(a[s] - b[s] for s in sorted(a, key=int) if s in b))


def lines(result: dict[str, Any]) -> list[str]:
    """One line per (budget, algorithm) and the verdict, for the terminal and privacy_sweep.md."""
    out = []
    for c in result["cells"]:
        label = "no DP" if c["epsilon_target"] is None else f"eps <= {c['epsilon_target']:g}"
        for name, a in c["algorithms"].items():
            z = "" if a["noise_multiplier"] is None else f" (z {a['noise_multiplier']:.3f}, eps {a['epsilon']:.2f})"
            mia = "" if a.get("personal_member_auc") is None else f"  MIA AUC personal {a['personal_member_auc']:.3f}" + (
                "" if a.get("global_member_auc") is None else f" global {a['global_member_auc']:.3f}")
            out.append(f"{label:>12}  {name:<12} {a['family']:<13} personal {100 * a['personal_acc_mean']:5.1f}%"
                       f"  worst-10% {100 * a['personal_acc_worst10']:5.1f}%{z}{mia}")
    cost = result["cost"]
    for row in cost["losses"]:
        out.append(f"eps <= {row['epsilon']:g}: {cost['pfl']} loses {100 * row.get('pfl_loss', float('nan')):+.1f} pp, "
                   f"{cost['global']} loses {100 * row.get('global_loss', float('nan')):+.1f} pp")
        if "q_text" in row:
            out[-1] += f"; pFL loses {row['q_text']} less: {row['verdict']}"
    note = f" ({cost['note']})" if cost.get("note") else ""
    out.append(f"'the same protection costs pFL less': {cost['verdict']}{note} ({cost['rule']})")
    return out
