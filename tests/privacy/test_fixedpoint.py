"""Fixed-point encoding into Z_{2^bits}: exact modular sums, quantization bounds, overflow refusal."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedarena.core.types import FedarenaError
from fedarena.privacy.fixedpoint import FixedPoint, centered_lift, check_capacity, wrap


def _modular_sum(encodings, bits):
    total = np.zeros(len(encodings[0]), dtype=np.uint64)
    for e in encodings:
        total += e.astype(np.uint64)
    return total & np.uint64((1 << bits) - 1) if bits < 64 else total


@st.composite
def population(draw):
    n = draw(st.integers(min_value=1, max_value=30))
    bits = draw(st.sampled_from([12, 16, 24, 32, 40, 64]).filter(lambda b: n < 2 ** (b - 1)))
    clip = draw(st.floats(min_value=1e-3, max_value=1e3))
    d = draw(st.integers(min_value=1, max_value=20))
    values = st.floats(min_value=-3 * clip, max_value=3 * clip, allow_nan=False)
    xs = [np.array(draw(st.lists(values, min_size=d, max_size=d))) for _ in range(n)]
    return FixedPoint.for_clients(n, clip, bits), xs


@settings(max_examples=80, deadline=None)
@given(population())
def test_modular_sum_decodes_to_the_sum_of_quantized_inputs(case):
    fp, xs = case
    ints = [fp.to_integers(x) for x in xs]
    assert all(np.abs(i).max() <= fp.level for i in ints)
    total = _modular_sum([fp.encode(x) for x in xs], fp.bits)
    exact = np.sum(ints, axis=0)  # no wrap: |sum| <= n * Q < 2^(bits-1)
    np.testing.assert_array_equal(fp.to_signed(total), exact)
    np.testing.assert_array_equal(fp.decode(total), exact / fp.scale)
    clipped = np.sum([np.clip(x, -fp.clip, fp.clip) for x in xs], axis=0)
    bound = len(xs) * 0.5 / fp.scale + 1e-9 * len(xs) * fp.clip
    assert np.all(np.abs(fp.decode(total) - clipped) <= bound)


@settings(max_examples=40, deadline=None)
@given(population(), st.integers(min_value=0, max_value=2**32))
def test_stochastic_rounding_is_seeded_and_within_one_step(case, seed):
    fp, xs = case
    a = fp.to_integers(xs[0], np.random.default_rng(seed))
    b = fp.to_integers(xs[0], np.random.default_rng(seed))
    np.testing.assert_array_equal(a, b)
    y = np.clip(xs[0], -fp.clip, fp.clip) * fp.scale
    assert np.all(np.abs(a - y) < 1 + 1e-6 * np.abs(y)) and np.abs(a).max() <= fp.level


def test_stochastic_rounding_is_unbiased():
    fp = FixedPoint.for_clients(1, 1.0, 16, scale=10.0)
    x = np.full(200_000, 0.03)  # 0.3 steps: rounds to 0 w.p. 0.7, to 1 w.p. 0.3
    q = fp.to_integers(x, np.random.default_rng(0))
    assert set(np.unique(q)) == {0, 1}
    assert abs(q.mean() - 0.3) < 0.005
    assert fp.to_integers(x).max() == 0  # deterministic rounding is biased here


def test_extremes_at_full_capacity_do_not_wrap():
    for bits in (8, 32, 64):
        n = 7
        fp = FixedPoint.for_clients(n, 2.5, bits)
        assert n * fp.level <= 2 ** (bits - 1) - 1
        for sign in (1.0, -1.0):
            total = _modular_sum([fp.encode(np.array([sign * 100.0]))] * n, bits)
            assert fp.to_signed(total)[0] == sign * n * fp.level
            assert math.isclose(fp.decode(total)[0], sign * n * 2.5, rel_tol=1e-9)


def test_default_scale_rule():
    assert check_capacity(50, 2.0, 32) == ((2**31 - 1) // 50) / 2.0
    assert check_capacity(3, 1.0, 64) == 2.0**52  # capped so integers stay exact in float64
    # clip * (Q / clip) rounds above Q in float64 here; the scale is nudged down so the level stays Q
    fp = FixedPoint.for_clients(1, 1.63671875, 12)
    assert fp.level == 2047 and fp.to_integers(np.array([5.0]))[0] == 2047


@pytest.mark.parametrize(
    "args, match",
    [
        ((200, 1.0, 8, None), "200 clients"),
        ((10, 1.0, 16, 4000.0), "10 clients x range"),
        ((2, 1.0, 64, 2.0**60), "exceeds"),
        ((10, 0.0, 32, None), "clip"),
        ((10, float("inf"), 32, None), "clip"),
        ((0, 1.0, 32, None), "client"),
        ((10, 1.0, 65, None), "bits"),
        ((10, 1.0, 4, None), "bits"),
        ((10, 1.0, 32, -1.0), "scale"),
    ],
)
def test_capacity_refusals_name_the_numbers(args, match):
    with pytest.raises(FedarenaError, match=match):
        check_capacity(*args)


def test_explicit_scale_at_the_limit_is_accepted():
    # 10 clients x 3276 = 32760 <= 2^15 - 1 = 32767; 3277 would give 32770
    assert check_capacity(10, 1.0, 16, 3276.0) == 3276.0
    with pytest.raises(FedarenaError):
        check_capacity(10, 1.0, 16, 3277.0)
    with pytest.raises(FedarenaError):
        FixedPoint(10, 1.0, 16, 3277.0)


def test_non_finite_inputs_are_refused():
    fp = FixedPoint.for_clients(2, 1.0, 32)
    for bad in (np.nan, np.inf):
        with pytest.raises(FedarenaError, match="non-finite"):
            fp.encode(np.array([0.0, bad]))


@pytest.mark.parametrize("bits", [8, 20, 32, 33, 64])
def test_wrap_and_centered_lift_are_inverse(bits):
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    values = np.array([lo, -1, 0, 1, hi], dtype=np.int64)
    residues = wrap(values, bits)
    assert residues.dtype == (np.uint32 if bits <= 32 else np.uint64)
    assert int(residues[1]) == 2**bits - 1
    np.testing.assert_array_equal(centered_lift(residues, bits), values)


def test_encoding_size_is_at_most_float32_for_32_bits():
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    assert FixedPoint.for_clients(10, 1.0, 32).encode(x).nbytes == x.nbytes
    assert FixedPoint.for_clients(10, 1.0, 64).encode(x).nbytes == 2 * x.nbytes
