"""The verdicts of the claims table and the rules that give them (claims.py's module docstring states the rules).

Split from claims.py, which re-exports every name here; the measured rows stay there."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from fedarena.report.measures import Stat


class Verdict(str, Enum):
    HOLDS = "holds"
    PARTLY = "partly"
    FAILS = "does not hold"
    NOISE = "within noise"
    NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Row:
    """One line of the measured claims table."""

    key: str
    topic: str
    pfl_claim: str  # the common claim's "Personalized FL" cell
    global_claim: str  # its "Global model FL" cell
    tested: str  # the exact statement tested, in numbers
    measured: str  # the measured value, best pFL vs best global
    verdict: Verdict
    note: str = ""  # e.g. "noise unknown (1 seed)"
    details: tuple[tuple[str, str], ...] = ()  # (algorithm, its value) for every algorithm


@dataclass(frozen=True)
class Sides:
    pfl: str | None
    glob: str | None
    pfl_candidates: tuple[str, ...]
    global_candidates: tuple[str, ...]



# ------------------------------------------------------------------ verdict rules


def range_verdict(q: Stat, low: float, high: float = math.inf) -> Verdict:
    """The table's rule for a quantity q (> 0 = the claimed direction) claimed to lie in [low, high]."""
    if q.n == 0:
        return Verdict.NOT_MEASURED
    if q.within_noise:
        return Verdict.NOISE
    if q.mean <= 0:
        return Verdict.FAILS
    return Verdict.HOLDS if low <= q.mean <= high else Verdict.PARTLY


def storage_verdict(pfl_bytes: int, global_bytes: int) -> Verdict:
    """"pFL: required, global: none": holds when pFL keeps client state and the global algorithm keeps
    none; partly when both keep some; does not hold when pFL keeps none."""
    if pfl_bytes <= 0:
        return Verdict.FAILS
    return Verdict.HOLDS if global_bytes == 0 else Verdict.PARTLY


def onboarding_verdict(adaptation: Stat, vs_global: Stat) -> Verdict:
    """"pFL: continuous, on-device; global: requires re-federation". `adaptation` is pFL's new-client
    accuracy after minus before on-device adaptation, `vs_global` pFL's after minus the global model's
    (which new clients use as downloaded). Holds when adaptation helps and beats the global model;
    partly when it helps but does not beat it (or that difference is within noise); does not hold when
    adaptation does not help; within noise when the adaptation gain is."""
    adapts = range_verdict(adaptation, 0.0)  # not measured, within noise, does not hold or holds
    if adapts is not Verdict.HOLDS:
        return adapts
    return Verdict.HOLDS if range_verdict(vs_global, 0.0) is Verdict.HOLDS else Verdict.PARTLY


def target_verdict(q: Stat, pfl_reached: bool, global_reached: bool, low: float, high: float) -> Verdict:
    """Rows measured at the target: `q` over the seeds where both sides reached it. When no seed has
    both: pFL never reaching it while global does is the claimed direction of unknown size (partly);
    global never reaching it while pFL does is the opposite (does not hold); neither: not measured."""
    if q.n:
        return range_verdict(q, low, high)
    if global_reached and not pfl_reached:
        return Verdict.PARTLY
    if pfl_reached and not global_reached:
        return Verdict.FAILS
    return Verdict.NOT_MEASURED
