"""Numbers for people: percentages, percentage points, relative changes, byte sizes, a mean with its
95% confidence half-width over seeds, and an accuracy with summary.json's 95% interval (`ci95`)."""

from __future__ import annotations

from typing import Any, Callable

from fedarena.report.measures import Stat


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def signed_pp(x: float) -> str:
    return f"{100 * x:+.1f} pp"


def signed_rel(x: float) -> str:
    return f"{100 * x:+.0f}%"


def size(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def with_spread(s: Stat, fmt: Callable[[float], str], label: bool = True) -> str:
    """`fmt(mean)`, plus the 95% CI half-width over seeds when there are several (and what it is,
    unless `label` is False, e.g. in a table whose caption says it)."""
    if s.mean is None:
        return "n/a"
    if s.half_width is None:
        return fmt(s.mean)
    spread = f"{fmt(s.mean)} ± {fmt(s.half_width).lstrip('+')}"
    return f"{spread} (95% CI, {s.n} seeds)" if label else spread


def pct_ci(mean: float, ci: list[float] | tuple[float, float]) -> str:
    """An accuracy and its 95% interval in percent: `83.2% [79.1, 87.3]`."""
    return f"{pct(mean)} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def aggregate_ci(summary: dict[str, Any], algorithm: str, key: str) -> tuple[float, list[float], int] | None:
    """(mean, ci95, n) of `key` for `algorithm` from summary.json's aggregate, or None where it has no interval
    (one seed, or a summary from before ci95)."""
    agg = ((summary.get("aggregate") or {}).get("algorithms") or {}).get(algorithm) or {}
    entry = agg.get(key) or {}
    ci, mean = entry.get("ci95"), entry.get("mean")
    if not ci or mean is None or len(ci) != 2 or None in ci:
        return None
    return float(mean), [float(ci[0]), float(ci[1])], int(entry.get("n") or 0)


def accuracy(summary: dict[str, Any], algorithm: str, key: str, fallback: Stat, label: bool = True) -> str:
    """An algorithm's accuracy `key` (an aggregate metric: personal_acc_mean, personal_acc_worst10, global_acc):
    mean and 95% interval, `83.2% [79.1, 87.3]`, where the aggregate has `ci95` (with "(95% CI, n seeds)" when
    `label`); else `with_spread(fallback, pct)`."""
    found = aggregate_ci(summary, algorithm, key)
    if found is None:
        return with_spread(fallback, pct, label=label)
    mean, ci, n = found
    return pct_ci(mean, ci) + (f" (95% CI, {n} seeds)" if label else "")
