"""The runner every fuzz test uses: a hypothesis property over `n` generated inputs, deterministic
(``derandomize``: the same inputs on every run and machine of one hypothesis version), no example
database written, no deadline (the machine is shared). Each example the property sees is counted per
target, and ``tests/fuzz/conftest.py`` prints the counts at the end of the session."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

COUNTS: Counter[str] = Counter()
OUTCOMES: Counter[tuple[str, str]] = Counter()  # (target, "accepted" | "refused" | ...): where the inputs went


def sizes(fast: int, slow: int):
    """Parametrize a test over `n`: `fast` examples in the default run, `slow` more under ``-m slow``."""
    return pytest.mark.parametrize("n", [fast, pytest.param(slow, marks=pytest.mark.slow)], ids=["fast", "slow"])


def fuzz(target: str, n: int, strategy: st.SearchStrategy[Any], check: Callable[[Any], Any]) -> int:
    """Run `check` on `n` inputs drawn from `strategy`; return how many it saw (asserted to be `n`: hypothesis
    stops early only when the strategy's space is exhausted, which none of these is). What `check` returns is
    where the input went: "accepted", "refused", or a mapping of such words to counts (a round of several
    replies), added to OUTCOMES."""
    seen = 0

    def prop(value: Any) -> None:
        nonlocal seen
        seen += 1
        went = check(value)
        for kind, count in ({went: 1} if isinstance(went, str) else dict(went or {})).items():
            OUTCOMES[(target, kind)] += count

    prop.__name__ = prop.__qualname__ = "fuzz_" + re.sub(r"\W", "_", target)
    # derandomize seeds from the function's source, the same here for every target: add the target and n, as
    # hypothesis itself does for each case of a parametrized test, so each target and size has its own stream
    prop._hypothesis_internal_add_digest = f"{target}:{n}".encode()  # type: ignore[attr-defined]
    settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=True,
             suppress_health_check=list(HealthCheck))(given(strategy)(prop))()
    COUNTS[target] += seen
    assert seen >= n, f"{target}: hypothesis ran {seen} of {n} examples"
    return seen


# ------------------------------------------------------------------------- bytes and JSON


def canonical(data: bytes) -> bytes:
    """The same safetensors bytes with the JSON header's keys sorted: safetensors writes them in an order that varies
    between calls, and a byte position must mean the same thing each time hypothesis replays an input."""
    n = int.from_bytes(data[:8], "little")
    text = json.dumps(json.loads(data[8:8 + n]), sort_keys=True).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


@st.composite
def mutated_bytes(draw: Any, data: bytes, header: Callable[[Any, bytes], bytes] | None = None) -> bytes:
    """`data` cut, extended, overwritten, with bytes inserted or its first 8 bytes (a safetensors header length)
    replaced, 1 to 3 times; `header(draw, data)`, where given, is one more kind of change."""
    out = bytearray(data)
    kinds = ["cut", "append", "flip", "insert", "length"] + (["header"] if header else [])
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(kinds))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if what == "cut":
            del out[at:]
        elif what == "append":
            out += draw(st.binary(min_size=1, max_size=64))
        elif what == "flip" and out:
            out[at] = draw(st.integers(0, 255))
        elif what == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif what == "length":
            value = draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(0, len(out) + 8)))
            out[:8] = value.to_bytes(8, "little")
        elif header is not None:
            out = bytearray(header(draw, bytes(out)))
    return bytes(out)


# JSON values of every type, NaN and huge numbers included, nested a little
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([10**400, -1, 0]), st.floats(),
              st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)


def deep(levels: int) -> bytes:
    """JSON nested `levels` deep (Python's json parser recurses once per level)."""
    return b"[" * levels + b"]" * levels
