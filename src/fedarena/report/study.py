"""Reading a default study's sub-studies (experiments/study.py) for the claims table.

A study directory is the comparison's run directory plus ``study.json`` and ``study/<step>/``. :func:`load` reads
what the report needs into ``summary["study"]`` (the sweep's sweep.json, the privacy sweep's privacy_sweep.json,
the attack run's summary.json) and returns the forget probe's forget.json files, which the forgetting row reads like
those of ``compare --forget-probe``. The functions below turn each sub-study into a row's measured text, verdict and
note; report/claims.py wraps them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedarena.core.types import FedarenaError
from fedarena.report import measures as m
from fedarena.report.format import pct, signed_pp, with_spread
from fedarena.report.verdicts import Sides, Verdict, range_verdict

STUDY_FORMAT = "fedarena-study/1"
FULL_STUDY_SEEDS = "the full study (fedarena compare without --quick) runs 3 seeds"  # where a --quick one has 1
FILES = {"sweep": "sweep/sweep.json", "privacy": "privacy/privacy_sweep.json", "attack": "attack/summary.json"}


def read_json(path: Path) -> Any:
    """A JSON file of a run directory, or one FedarenaError naming it (missing, undecodable, nested too deep)."""
    if not path.is_file():
        raise FedarenaError(f"{path} not found: the study directory is incomplete (rerun fedarena compare)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise FedarenaError(f"{path} is not valid JSON: {exc}") from None


def load(run_dir: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(summary["study"], the forget probe's forget.json contents): (None, []) where `run_dir` is no study."""
    path = Path(run_dir) / "study.json"
    if not path.exists():
        return None, []
    study = read_json(path)
    if not isinstance(study, dict) or study.get("format") != STUDY_FORMAT:
        raise FedarenaError(f"{path} is not a fedarena study (format {STUDY_FORMAT} expected)")
    block = dict(study) | {k: read_json(Path(run_dir) / "study" / f) for k, f in FILES.items()}
    forgets = [read_json(f) for f in sorted((Path(run_dir) / "study" / "forget").glob("forget-*/forget.json"))]
    return block, forgets


def more_seeds(summary: dict[str, Any]) -> str:
    """How to measure the spread a one-seed run lacks, for the run at hand."""
    if summary.get("study"):
        return FULL_STUDY_SEEDS
    return "compare --seeds 3 measures the spread"


def describe(block: dict[str, Any]) -> str:
    """The report's setup line for a default study: what each sub-study ran, and where."""
    plan, pfl, glob = block["plan"], block["best_pfl"], block["best_global"]
    probe = block["forget_probe"]
    return (f"default study ({plan['name']}): this comparison, then on its best pFL ({pfl}) and best global ({glob}) "
            f"with {plan['sub_seeds']} seed(s): a heterogeneity sweep over {', '.join(plan['cells'])} (study/sweep); "
            f"central user-level DP at epsilon {plan['epsilon']:g} and without it (study/privacy); {plan['attack']} by "
            f"{plan['malicious']:.0%} of the clients (study/attack); a backdoor planted in client {probe} and then "
            f"forgotten, on 1 seed (study/forget). study.json holds the command that reruns each step")


def similarity(sweep: dict[str, Any]) -> tuple[str, Verdict, str]:
    """The "ideal data similarity" row from the study's heterogeneity sweep (report/sweep.SIMILARITY_RULE)."""
    cells = sorted(sweep["cells"], key=lambda c: c["js_divergence_mean"])
    first = cells[0]
    per_cell = "; ".join(f"{c['cell']} (JS {c['js_divergence_mean']:.2f}): {c['gain_text']}" for c in cells)
    measured = (f"{first['best_pfl']} minus {first['best_global']} per-client accuracy by heterogeneity, "
                f"least to most: {per_cell}. {sweep['crossover']['text']}")
    seeds = len(sweep["seeds"])
    note = (f"heterogeneity sweep in study/sweep ({len(cells)} cells, {seeds} seed(s))"
            + ("; noise unknown: 1 seed" if seeds < 2 else ""))
    return measured, Verdict(sweep["data_similarity_verdict"]), note


def privacy(result: dict[str, Any]) -> tuple[str, Verdict, str]:
    """The "privacy cost" row from the study's privacy sweep (report/privacy_sweep.PRIVACY_RULE)."""
    cost = result["cost"]
    base = next(c for c in result["cells"] if c["epsilon_target"] is None)["algorithms"]
    parts = []
    for row in cost["losses"]:
        cell = next(c for c in result["cells"] if c["epsilon_target"] == row["epsilon"])["algorithms"]
        eps = [a["epsilon"] for a in cell.values() if a["epsilon"] is not None]
        reached = f"eps {max(eps):.2f}" if eps else f"eps <= {row['epsilon']:g}"
        sides = ", ".join(f"{n} {pct(base[n]['personal_acc_mean'])} \u2192 {pct(cell[n]['personal_acc_mean'])} "
                          f"({_change(row.get(k))})" for n, k in ((cost["pfl"], "pfl_loss"), (cost["global"], "global_loss")))
        parts.append(f"central user-level DP ({reached}, delta {result['delta']:g}, {result['population']} clients, "
                     f"{result['clients_per_round']} per round), per-client accuracy without and with it: {sides}; "
                     f"pFL loses {row.get('q_text', 'n/a')} less")
    note = f"privacy sweep in study/privacy ({cost['seeds']} seed(s))" + (
        f"; noise unknown: 1 seed; {FULL_STUDY_SEEDS}" if cost["seeds"] < 2 else "")
    return "; ".join(parts), Verdict(cost["verdict"]), note


def _change(loss: float | None) -> str:
    if loss is None:
        return "n/a"
    return f"loses {100 * loss:.1f} pp" if loss >= 0 else f"gains {-100 * loss:.1f} pp"


def _drop(clean: list[m.Run], attacked: list[m.Run]) -> dict[int, float]:
    """Per seed: the mean over the attacked run's evaluated (benign) clients of their accuracy without the attack
    minus under it (unweighted: summary.json keeps per-client accuracies, not test sizes)."""
    by_seed = {r["seed"]: r["final"]["personal_acc_per_client"] for r in clean}
    out = {}
    for r in attacked:
        after, before = r["final"]["personal_acc_per_client"], by_seed.get(r["seed"])
        if before is not None and after:
            out[r["seed"]] = sum(before[c] - a for c, a in after.items()) / len(after)
    return out


def robustness(clean: dict[str, list[m.Run]], attacked: dict[str, Any],
               sides: Sides) -> tuple[str, Verdict, str, tuple[tuple[str, str], ...]]:
    """The "robustness to poisoning" row from the study's attack run: q = best global's accuracy drop minus best
    pFL's, each drop over the benign clients against the same clients in the comparison (the clean run, same
    seeds), paired by seed; q > 0: the attack does less to the personalized side."""
    a, groups = attacked["attack"], m.by_algorithm(attacked)
    pfl, glob = str(sides.pfl), str(sides.glob)
    per_seed = {n: _drop(clean[n], groups[n]) for n in (pfl, glob)}
    drops = {n: m.Stat(tuple(v.values())) for n, v in per_seed.items()}
    q = m.Stat(tuple(g - per_seed[pfl][s] for s, g in per_seed[glob].items() if s in per_seed[pfl]))
    under = {n: pct(m.over_seeds(groups[n], m.acc_mean).mean) for n in (pfl, glob)}
    hit = {n: m.over_seeds(groups[n], lambda r: r.get("attack_success")).mean for n in (pfl, glob)}
    diverged = sorted({r["algorithm"] for rs in groups.values() for r in rs if r.get("diverged")})
    measured = (f"{a['kind']} by {a['malicious_fraction']:.0%} of the clients, {a['aggregator']['name']} aggregation; "
                f"benign clients' accuracy drop against the same clients without the attack: {pfl} "
                f"{with_spread(drops[pfl], _pp_stat, label=False)}, {glob} {with_spread(drops[glob], _pp_stat, label=False)}"
                f"; the attack costs {glob} {with_spread(q, signed_pp)} more than {pfl}; under the attack {pfl} "
                f"{under[pfl]} vs {glob} {under[glob]} (sample-weighted)"
                + ("" if hit[glob] is None else f"; backdoor success {pfl} {pct(hit[pfl])} vs {glob} {pct(hit[glob])}")
                + (f"; diverged: {', '.join(diverged)}" if diverged else ""))
    note = f"attack comparison in study/attack ({q.n} seed(s); drops are unweighted means over the benign clients)"
    details = tuple((n, f"{pct(m.over_seeds(clean[n], m.acc_mean).mean)} without the attack (every training client), "
                        f"{under[n]} under it (benign clients)") for n in (pfl, glob))
    return measured, range_verdict(q, 0.0), note + ("; noise unknown: 1 seed" if q.n == 1 else ""), details


def _pp_stat(x: float) -> str:
    return f"{100 * x:.1f} pp"
