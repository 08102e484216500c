"""What the report's verdicts rest on: how the hyperparameters were chosen (`fedarena compare --tune`, issue #15).

- `label`: summary.json's tuning label, which every verdict and recommendation carries: "tuned (N trials, budget
  B client-rounds per algorithm)", "untuned defaults" or "untuned (hyperparameters as configured)". A summary
  from before --tune has no `tuning`: its runs used the defaults ("untuned defaults").
- `chosen`: per algorithm, the values its runs trained with (tuned: `best_params`, the rest fixed) and what
  the search cost (trials, pruned, budget and spent client-rounds, seconds, the selection rule).
- `read_trials` / `trial_points`: tuning.parquet (one row per algorithm, trial and evaluated round) and, per
  trial, the validation objective the report plots: the final value of a complete trial, the last reported
  value of a pruned one.

Reading only: nothing here trains or imports what does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from fedarena.core.types import FedarenaError

UNTUNED_DEFAULTS = "untuned defaults"
TRIALS_FILE = "tuning.parquet"
TRIAL_COLUMNS = ("algorithm", "trial", "state", "params", "round", "val_objective", "value", "best")


def block(summary: dict[str, Any]) -> dict[str, Any]:
    """summary.json's `tuning` (`{status, label, ...}`); a summary without one: untuned defaults."""
    t = summary.get("tuning")
    if not isinstance(t, dict) or not t.get("label"):
        return {"status": "untuned", "label": UNTUNED_DEFAULTS}
    return t


def label(summary: dict[str, Any]) -> str:
    return str(block(summary)["label"])


def is_tuned(summary: dict[str, Any]) -> bool:
    return block(summary).get("status") == "tuned"


def value_text(v: Any) -> str:
    """A hyperparameter value for people: floats to 4 significant digits."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def values_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} {value_text(v)}" for k, v in values.items()) or "none"


@dataclass(frozen=True)
class Chosen:
    """One algorithm's hyperparameters in this run and, when tuned, what its search found and cost."""

    algorithm: str
    searched: dict[str, Any]  # chosen by tuning (best_params); {} when untuned
    fixed: dict[str, Any]  # everything else the runs trained with: hyperparameters and local training
    search: dict[str, Any] | None  # runs[].tuning, or None when untuned

    @property
    def values(self) -> dict[str, Any]:
        """Every value the algorithm's runs trained with."""
        return {**self.searched, **self.fixed}

    def cells(self) -> dict[str, str]:
        """The Hyperparameters table's cells, "-" where the algorithm was not tuned."""
        s = self.search
        if s is None:
            return {"algorithm": self.algorithm, "chosen": "-", "fixed": values_text(self.fixed), "best_val": "-",
                    "trials": "-", "pruned": "-", "budget": "-", "spent": "-", "seconds": "-"}
        best = s.get("best_val")
        return {"algorithm": self.algorithm, "chosen": values_text(self.searched), "fixed": values_text(self.fixed),
                "best_val": "n/a" if best is None else f"{100 * best:.1f}%" + (
                    f" (trial {s['best_trial']})" if s.get("best_trial") is not None else ""),
                "trials": str(s["trials"]), "pruned": str(s["pruned"]),
                "budget": f"{s['budget_client_rounds']:,}", "spent": f"{s['spent_client_rounds']:,}",
                "seconds": f"{s['seconds']:.1f} s"}


def local_training(summary: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """The lr, local epochs and batch size a run trained with: its `local_training`, else (a summary from before
    per-algorithm training) the comparison's [train]."""
    lt = run.get("local_training")
    if isinstance(lt, dict):
        return dict(lt)
    train = (summary.get("config") or {}).get("train") or {}
    return {k: train[k] for k in ("lr", "local_epochs", "batch_size") if k in train}


def chosen(summary: dict[str, Any]) -> list[Chosen]:
    """Per algorithm (first appearance order), its hyperparameters; the first seed's entry speaks for all (tuning
    chooses once per algorithm, on the first seed's clients)."""
    first: dict[str, dict[str, Any]] = {}
    for run in summary["runs"]:
        first.setdefault(run["algorithm"], run)
    out = []
    for name, run in first.items():
        search = run.get("tuning") if isinstance(run.get("tuning"), dict) else None
        searched = dict(search.get("best_params") or {}) if search else {}
        trained = {**dict(run.get("hyperparameters") or {}), **local_training(summary, run)}
        out.append(Chosen(name, searched, {k: v for k, v in trained.items() if k not in searched}, search))
    return out


def selection_rules(summary: dict[str, Any]) -> list[str]:
    """The selection rule(s) the searches used (one in practice), summary-level first."""
    rules = [block(summary).get("selection")] + [c.search.get("selection") for c in chosen(summary) if c.search]
    return list(dict.fromkeys(str(r) for r in rules if r))


def objective_text(summary: dict[str, Any]) -> str | None:
    b = block(summary)
    text = b.get("objective_text") or b.get("objective")
    if text is None:
        text = next((c.search.get("objective_text") or c.search.get("objective") for c in chosen(summary)
                     if c.search), None)
    return None if text is None else str(text)


def read_trials(run_dir: Path) -> list[dict[str, Any]] | None:
    """tuning.parquet's rows, or None when the run directory has none (an untuned run)."""
    path = Path(run_dir) / TRIALS_FILE
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise FedarenaError(f"{path} is not a readable parquet file: {exc}") from None
    missing = [c for c in TRIAL_COLUMNS if c not in table.column_names]
    if missing:
        raise FedarenaError(f"{path} lacks column(s) {', '.join(missing)}: not written by fedarena compare --tune")
    return table.to_pylist()


@dataclass(frozen=True)
class TrialPoint:
    """One trial as the report plots it."""

    algorithm: str
    trial: int
    state: str  # complete | pruned
    objective: float | None  # complete: the final-round value; pruned: the last value it reported
    round: int  # the round `objective` was measured at
    params: dict[str, Any]
    best: bool


def trial_points(rows: list[dict[str, Any]]) -> dict[str, list[TrialPoint]]:
    """Per algorithm (first appearance order), its trials in trial order."""
    by_trial: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        by_trial.setdefault((str(r["algorithm"]), int(r["trial"])), []).append(r)
    out: dict[str, list[TrialPoint]] = {}
    for (name, number), rs in by_trial.items():
        reported = sorted((r for r in rs if r["val_objective"] is not None), key=lambda r: r["round"])
        last = reported[-1] if reported else max(rs, key=lambda r: r["round"])
        state = str(rs[0]["state"])
        final = rs[0]["value"]
        objective = final if state == "complete" and final is not None else last["val_objective"]
        try:
            params = json.loads(rs[0]["params"]) if rs[0]["params"] else {}
        except json.JSONDecodeError:
            params = {}
        out.setdefault(name, []).append(TrialPoint(name, number, state, objective, int(last["round"]), params,
                                                   bool(rs[0]["best"])))
    return {name: sorted(points, key=lambda p: p.trial) for name, points in out.items()}


def importances(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per tuned algorithm with any, its parameter importances (runs[].tuning.importances); algorithms with {} are
    left out (fewer than two completed trials, or a single value searched)."""
    return {c.algorithm: {k: float(v) for k, v in c.search["importances"].items()}
            for c in chosen(summary) if c.search and c.search.get("importances")}
