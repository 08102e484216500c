"""Numbers for people: percentages, percentage points, relative changes, byte sizes, and a mean
with its 95% confidence half-width over seeds."""

from __future__ import annotations

from typing import Callable

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
