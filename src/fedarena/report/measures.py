"""Reading measured numbers out of a summary.json: per algorithm, over seeds, with their spread.

A summary holds one run per (algorithm, seed). Everything the report says about an algorithm is a
:class:`Stat` over its seeds; everything it says about a comparison of two algorithms is a `Stat` of
the *paired* per-seed difference (same seed = same clients, same initial model), so the spread of a
difference is the spread of the difference, not the sum of two spreads.

Noise rule (one for the whole report): with n >= 2 seeds, a difference is **within noise** when the
two-sided 95% Student-t confidence interval of its mean, mean +- t(0.975, n-1) x std / sqrt(n)
(std with ddof 1), contains 0 and the values are not all identical. With one seed the noise is unknown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from scipy.special import stdtrit

Run = dict[str, Any]
Metric = Callable[[Run], float | None]

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Stat:
    """Values of one quantity, one per seed where it is defined (seeds where it is not are dropped)."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return math.fsum(self.values) / self.n if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (ddof 1); None with fewer than 2 values."""
        if self.n < 2:
            return None
        m = self.mean
        return math.sqrt(math.fsum((v - m) ** 2 for v in self.values) / (self.n - 1))

    @property
    def half_width(self) -> float | None:
        """Half-width of the 95% Student-t confidence interval of the mean; None below 2 values."""
        if self.std is None:
            return None
        return float(stdtrit(self.n - 1, 0.5 + CONFIDENCE / 2)) * self.std / math.sqrt(self.n)

    @property
    def noise_known(self) -> bool:
        return self.n >= 2

    @property
    def within_noise(self) -> bool:
        """True when the confidence interval contains 0 (and the values are not all identical)."""
        if self.half_width is None or self.std == 0:
            return False
        return abs(self.mean) <= self.half_width

    @property
    def ci95(self) -> list[float] | None:
        """The 95% Student-t interval of the mean over seeds, [low, high]; None below 2 values."""
        if self.half_width is None or self.mean is None:
            return None
        return [self.mean - self.half_width, self.mean + self.half_width]

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "ci95": self.ci95}


def stat(values: Iterable[float | None]) -> Stat:
    return Stat(tuple(float(v) for v in values if v is not None))


def run_seed(summary: dict[str, Any], run: Run) -> int:
    """A run's seed: its own `seed` field, else the comparison's (summaries from before --seeds)."""
    return int(run.get("seed", summary["config"]["run"]["seed"]))


def by_algorithm(summary: dict[str, Any]) -> dict[str, list[Run]]:
    """Runs grouped by algorithm in first-appearance order, each list ordered by seed."""
    groups: dict[str, list[Run]] = {}
    for run in summary["runs"]:
        groups.setdefault(run["algorithm"], []).append(run)
    return {a: sorted(rs, key=lambda r: run_seed(summary, r)) for a, rs in groups.items()}


def seeds(summary: dict[str, Any]) -> list[int]:
    return sorted({run_seed(summary, r) for r in summary["runs"]})


def over_seeds(runs: list[Run], metric: Metric) -> Stat:
    return stat(metric(r) for r in runs)


def paired(a: list[Run], b: list[Run], diff: Callable[[Run, Run], float | None]) -> Stat:
    """`diff(run_a, run_b)` for each seed both algorithms ran (matched by the runs' `seed` field; a
    summary from before --seeds has one run per algorithm and no such field)."""
    b_by_seed = {r.get("seed"): r for r in b}
    return stat(diff(r, b_by_seed[r.get("seed")]) for r in a if r.get("seed") in b_by_seed)


# ------------------------------------------------------------------ metrics of one run


def acc_mean(run: Run) -> float:
    return run["final"]["personal_acc_mean"]


def acc_worst10(run: Run) -> float:
    return run["final"]["personal_acc_worst10"]


def global_acc(run: Run) -> float | None:
    return run["final"]["global_acc"]


def bytes_per_round(run: Run) -> float:
    return run["bytes"]["per_round_mean"]


def bytes_total(run: Run) -> int:
    return run["bytes"]["up_total"] + run["bytes"]["down_total"]


def bytes_up_per_round(run: Run) -> float:
    return run["bytes"]["up_total"] / run["rounds"]


def bytes_to_target(run: Run) -> int | None:
    """Cumulative bytes (up + down) through the round that reached the target; None if never."""
    r = run["rounds_to_target"]
    if r is None:
        return None
    return next(h["bytes_cumulative"] for h in run["history"] if h["round"] == r)


def rounds_to_target(run: Run) -> int | None:
    return run["rounds_to_target"]


def seconds_to_target(run: Run) -> float | None:
    return run["seconds_to_target"]


def storage(run: Run) -> int:
    return run["storage_bytes_per_client"]


def new_before(run: Run) -> float | None:
    nc = run.get("new_clients")
    return nc["before"]["mean"] if nc else None


def new_after(run: Run) -> float | None:
    nc = run.get("new_clients")
    return nc["after"]["mean"] if nc else None


AGGREGATED: dict[str, Metric] = {
    "global_acc": global_acc,
    "personal_acc_mean": acc_mean,
    "personal_acc_std": lambda r: r["final"]["personal_acc_std"],
    "personal_acc_worst10": acc_worst10,
    "bytes_per_round_mean": bytes_per_round,
    "bytes_total": bytes_total,
    "bytes_to_target": bytes_to_target,
    "rounds_to_target": rounds_to_target,
    "seconds_to_target": seconds_to_target,
    "wall_seconds": lambda r: r["wall_seconds"],
    "storage_bytes_per_client": storage,
    "new_clients_before_mean": new_before,
    "new_clients_after_mean": new_after,
}


def aggregate(summary: dict[str, Any]) -> dict[str, Any]:
    """The `aggregate` block of a multi-seed summary.json: per algorithm, per final metric, the mean,
    the sample std (ddof 1, null below 2 values) and n, the number of seeds where the metric is
    defined (e.g. only the seeds that reached the target count for rounds_to_target)."""
    return {
        "seeds": seeds(summary),
        "std": "sample standard deviation over seeds (ddof 1); null with fewer than 2 values",
        "ci95": "95% Student-t confidence interval of the mean over seeds, [low, high]; null with fewer than 2 values",
        "algorithms": {
            name: {key: over_seeds(runs, fn).to_json() for key, fn in AGGREGATED.items()}
            for name, runs in by_algorithm(summary).items()
        },
    }
