"""Hyperparameter search spaces, declared beside each hyperparameter's default.

An algorithm's hyperparameter that tuning may search is declared with :func:`hp` instead of a plain default::

    lam: float = hp(1.0, low=1e-3, high=10.0, log=True, source="Ditto, ICML 2021, App. C: {0.01, 0.1, 1, 2}")

which keeps the default where it was and records its :class:`Space` (a numeric range, linear or log, or a set of
choices) and where the range comes from in the dataclass field's metadata. :func:`spaces` reads them back.
Fields declared with a plain default are never searched (structure, seeds, variants a user picks). The
comparison's learning rate has its space in `experiments/tune.py` (it is not an algorithm's field).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from fedarena.core.types import FedarenaError


@dataclass(frozen=True)
class Space:
    """Where tuning may look for one hyperparameter: ``low..high`` (log-uniform when `log`; whole numbers when
    `integer`) or one of `choices`; `source` says which paper or authors' code the range comes from."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    integer: bool = False
    source: str = ""

    @property
    def is_range(self) -> bool:
        return not self.choices

    def check(self, key: str) -> Space:
        """Raise :class:`FedarenaError` naming `key` unless this is a usable space; return it."""
        if self.choices:
            if self.low is not None or self.high is not None:
                raise FedarenaError(f"{key}: a search space is a range or a set of choices, not both")
            if len(set(map(repr, self.choices))) != len(self.choices):
                raise FedarenaError(f"{key}: repeated choices {list(self.choices)}")
            return self
        if self.low is None or self.high is None:
            raise FedarenaError(f"{key}: a search range needs low and high")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise FedarenaError(f"{key}: a search range must be finite, got [{self.low}, {self.high}]")
        if self.low > self.high:
            raise FedarenaError(f"{key}: search range low {self.low} > high {self.high}")
        if self.log and self.low <= 0:
            raise FedarenaError(f"{key}: a log search range needs low > 0, got {self.low}")
        if self.integer and (self.low != int(self.low) or self.high != int(self.high)):
            raise FedarenaError(f"{key}: an integer search range needs whole bounds, got [{self.low}, {self.high}]")
        return self

    def contains(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        assert self.low is not None and self.high is not None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and value != int(value):
            return False
        return self.low <= value <= self.high

    def narrowed(self, key: str, value: Any) -> Space:
        """This space narrowed by a user's ``[low, high]`` (a range) or list of choices, which must lie inside it."""
        if not isinstance(value, (list, tuple)) or not value:
            raise FedarenaError(f"{key}: expected [low, high] or a list of choices, got {value!r}")
        if self.choices:
            outside = [v for v in value if v not in self.choices]
            if outside:
                raise FedarenaError(f"{key}: {outside} outside the declared choices {list(self.choices)}")
            return dataclasses.replace(self, choices=tuple(value)).check(key)
        if len(value) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise FedarenaError(f"{key}: expected [low, high], got {value!r}")
        low, high = float(value[0]), float(value[1])
        out = dataclasses.replace(self, low=low, high=high).check(key)
        if not (self.contains(low) and self.contains(high)):
            raise FedarenaError(f"{key}: [{low}, {high}] outside the declared range [{self.low}, {self.high}]")
        return out

    def to_json(self) -> dict[str, Any]:
        if self.choices:
            return {"choices": list(self.choices), "source": self.source}
        kind = "int" if self.integer else "float"
        return {"low": self.low, "high": self.high, "log": self.log, "type": kind, "source": self.source}


def hp(default: Any, *, low: float | None = None, high: float | None = None, log: bool = False,
       choices: tuple[Any, ...] = (), source: str) -> Any:
    """A searchable hyperparameter: `default` (kept as the field's default) and its declared :class:`Space`."""
    integer = isinstance(default, int) and not isinstance(default, bool) and not choices
    space = Space(low=low, high=high, log=log, choices=tuple(choices), integer=integer, source=source)
    return dataclasses.field(default=default, metadata={"space": space})


def spaces(algorithm: Any) -> dict[str, Space]:
    """The declared spaces of an algorithm class's (or object's) hyperparameters, in field order."""
    return {f.name: f.metadata["space"] for f in dataclasses.fields(algorithm) if "space" in f.metadata}


__all__ = ["Space", "hp", "spaces"]
