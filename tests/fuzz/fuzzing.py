"""The runner every fuzz test uses: a hypothesis property over `n` generated inputs, deterministic
(``derandomize``: the same inputs on every run and machine of one hypothesis version), no example
database written, no deadline (the machine is shared). Each example the property sees is counted per
target, and ``tests/fuzz/conftest.py`` prints the counts at the end of the session."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

COUNTS: Counter[str] = Counter()


def sizes(fast: int, slow: int):
    """Parametrize a test over `n`: `fast` examples in the default run, `slow` more under ``-m slow``."""
    return pytest.mark.parametrize("n", [fast, pytest.param(slow, marks=pytest.mark.slow)], ids=["fast", "slow"])


def fuzz(target: str, n: int, strategy: st.SearchStrategy[Any], check: Callable[[Any], None]) -> int:
    """Run `check` on `n` inputs drawn from `strategy`; return how many it saw (asserted to be `n`: hypothesis
    stops early only when the strategy's space is exhausted, which none of these is)."""
    seen = 0

    def prop(value: Any) -> None:
        nonlocal seen
        seen += 1
        check(value)

    prop.__name__ = prop.__qualname__ = "fuzz_" + re.sub(r"\W", "_", target)
    # derandomize seeds from the function's source, the same here for every target: add the target and n, as
    # hypothesis itself does for each case of a parametrized test, so each target and size has its own stream
    prop._hypothesis_internal_add_digest = f"{target}:{n}".encode()  # type: ignore[attr-defined]
    settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=True,
             suppress_health_check=list(HealthCheck))(given(strategy)(prop))()
    COUNTS[target] += seen
    assert seen >= n, f"{target}: hypothesis ran {seen} of {n} examples"
    return seen
