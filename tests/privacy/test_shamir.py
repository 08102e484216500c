"""Shamir secret sharing over GF(2^127 - 1): reconstruction from any t shares, perfect privacy of t - 1."""

import itertools
import os
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedarena.core.types import FedarenaError
from fedarena.privacy import shamir

P = shamir.PRIME
field = st.integers(min_value=0, max_value=P - 1)


@st.composite
def sharing(draw):
    n = draw(st.integers(min_value=1, max_value=12))
    t = draw(st.integers(min_value=1, max_value=n))
    xs = draw(st.lists(st.integers(min_value=1, max_value=2**32), min_size=n, max_size=n, unique=True))
    return t, xs


@settings(max_examples=60, deadline=None)
@given(secret=field, params=sharing(), data=st.data())
def test_any_t_shares_reconstruct_the_secret(secret, params, data):
    t, xs = params
    shares = shamir.split(secret, t, xs, os.urandom)
    subset = data.draw(st.lists(st.sampled_from(xs), min_size=t, max_size=len(xs), unique=True))
    assert shamir.reconstruct({x: shares[x] for x in subset}) == secret


@settings(max_examples=40, deadline=None)
@given(secret=field, other=field, params=sharing(), data=st.data())
def test_t_minus_1_shares_are_consistent_with_every_secret(secret, other, params, data):
    """For any other secret s', some polynomial of degree t-1 with f(0) = s' gives exactly these t-1 shares."""
    t, xs = params
    shares = shamir.split(secret, t, xs, os.urandom)
    seen = data.draw(st.lists(st.sampled_from(xs), min_size=t - 1, max_size=t - 1, unique=True))
    poly = shamir.interpolate({0: other, **{x: shares[x] for x in seen}})
    assert len(poly) <= t and poly[0] == other
    assert all(shamir.evaluate(poly, x) == shares[x] for x in seen)


def test_t_minus_1_shares_are_uniform_whatever_the_secret_small_field():
    """Exhaustively over GF(7), t = 3: every secret yields each pair of shares from exactly one polynomial."""
    p, xs = 7, (1, 2)
    for secret in range(p):
        seen = Counter(
            tuple(shamir.evaluate((secret, a1, a2), x, p) for x in xs) for a1, a2 in itertools.product(range(p), repeat=2)
        )
        assert set(seen.values()) == {1} and len(seen) == p * p


def test_random_element_is_in_field_and_uses_rejection():
    stream = iter([(P).to_bytes(16, "big"), (P + 1).to_bytes(16, "big"), (5).to_bytes(16, "big")])
    # P (masked to 127 bits) is rejected; P + 1 = 2^127 masks to 0 and is accepted
    assert shamir.random_element(lambda n: next(stream)) == 0
    assert shamir.random_element(lambda n: next(stream)) == 5
    assert all(0 <= shamir.random_element(os.urandom) < P for _ in range(50))


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(min_size=1, max_size=64), params=sharing(), data=st.data())
def test_byte_secrets_round_trip(secret, params, data):
    t, xs = params
    shares = shamir.split_bytes(secret, t, xs, os.urandom)
    assert {len(s) for s in shares.values()} == {shamir.share_size(len(secret))}
    subset = data.draw(st.lists(st.sampled_from(xs), min_size=t, max_size=len(xs), unique=True))
    assert shamir.reconstruct_bytes({x: shares[x] for x in subset}, len(secret)) == secret


def test_32_byte_secret_splits_into_three_field_elements():
    secret = b"\xff" * 32
    assert shamir.share_size(32) == 3 * shamir.ELEMENT_BYTES
    shares = shamir.split_bytes(secret, 2, [1, 2, 3], os.urandom)
    assert shamir.reconstruct_bytes({1: shares[1], 3: shares[3]}, 32) == secret


def test_a_reconstruction_that_cannot_be_the_secret_is_refused():
    """A chunk value too large for its byte length means inconsistent shares (one share: f(0) = f(x))."""
    big = (1 << 126).to_bytes(shamir.ELEMENT_BYTES, "big")
    with pytest.raises(FedarenaError, match="inconsistent"):
        shamir.reconstruct_bytes({1: big}, 2)
    small = (0xABCD).to_bytes(shamir.ELEMENT_BYTES, "big")
    assert shamir.reconstruct_bytes({1: small}, 2) == b"\xab\xcd"


@pytest.mark.parametrize(
    "t, xs",
    [(0, [1, 2]), (3, [1, 2]), (2, [1, 1]), (2, [0, 1]), (2, [1, P + 1])],
)
def test_bad_parameters_are_refused(t, xs):
    with pytest.raises(FedarenaError):
        shamir.split(1, t, xs, os.urandom)


def test_bad_inputs_are_refused():
    with pytest.raises(FedarenaError):
        shamir.split(P, 1, [1], os.urandom)
    with pytest.raises(FedarenaError):
        shamir.split_bytes(b"", 1, [1], os.urandom)
    with pytest.raises(FedarenaError, match="bytes long"):
        shamir.reconstruct_bytes({1: b"short"}, 32)
    with pytest.raises(FedarenaError):
        shamir.reconstruct({})
