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
from fedarena.report.verdicts import Verdict

STUDY_FORMAT = "fedarena-study/1"
FILES = {"sweep": "sweep/sweep.json", "privacy": "privacy/privacy_sweep.json", "attack": "attack/summary.json"}


def _read(path: Path) -> Any:
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
    study = _read(path)
    if not isinstance(study, dict) or study.get("format") != STUDY_FORMAT:
        raise FedarenaError(f"{path} is not a fedarena study (format {STUDY_FORMAT} expected)")
    block = dict(study) | {k: _read(Path(run_dir) / "study" / f) for k, f in FILES.items()}
    forgets = [_read(f) for f in sorted((Path(run_dir) / "study" / "forget").glob("forget-*/forget.json"))]
    return block, forgets


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
    dp = [c for c in result["cells"] if c["epsilon_target"] is not None]
    parts = []
    for row in cost["losses"]:
        cell = next(c for c in dp if c["epsilon_target"] == row["epsilon"])
        eps = {n: a["epsilon"] for n, a in cell["algorithms"].items() if a["epsilon"] is not None}
        reached = f"eps {max(eps.values()):.2f}" if eps else f"eps <= {row['epsilon']:g}"
        parts.append(f"central user-level DP ({reached}, delta {result['delta']:g}, {result['population']} clients, "
                     f"{result['clients_per_round']} per round): {cost['pfl']} loses {_pp(row.get('pfl_loss'))}, "
                     f"{cost['global']} loses {_pp(row.get('global_loss'))}; pFL loses {row.get('q_text', 'n/a')} less")
    note = "; ".join(x for x in (f"privacy sweep in study/privacy ({cost['seeds']} seed(s))", cost.get("note")) if x)
    return "; ".join(parts), Verdict(cost["verdict"]), note


def _pp(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} pp"
