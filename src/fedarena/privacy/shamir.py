"""Shamir secret sharing over the prime field GF(2^127 - 1).

Shamir, "How to share a secret", Communications of the ACM 22(11), 1979. A secret ``s`` is the
constant term of a uniformly random polynomial ``f`` of degree ``t - 1`` over GF(p); holder ``x``
(never 0) gets ``f(x)``. Any ``t`` shares give ``s = f(0)`` by Lagrange interpolation,
``f(0) = sum_i y_i * prod_{j != i} x_j / (x_j - x_i)``; any ``t - 1`` shares are consistent with
every secret (perfect privacy), which ``interpolate`` lets the tests check directly.

Used by secure aggregation (Bonawitz et al., CCS 2017, Fig. 4, rounds ShareKeys/Unmasking) to
share 32-byte secrets (the self-mask seed ``b_u`` and the mask key ``s_u^SK``). The field is the
Mersenne prime ``p = 2^127 - 1``; a byte string is split into 15-byte chunks (120 bits < 127, so
every chunk is a field element and the split is injective), each chunk is shared with its own
independent random polynomial, and a share of the string is the concatenation of the chunk shares
(16 bytes each, big-endian). ``cryptography`` has no secret sharing, hence this small module.

Randomness: polynomial coefficients come from a caller-supplied ``random_bytes(n) -> bytes``
(``os.urandom`` in deployments; a seeded stream only in tests) and are drawn uniformly in GF(p)
by rejection sampling.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Mapping, Sequence

from fedarena.core.types import FedarenaError

PRIME = (1 << 127) - 1
CHUNK_BYTES = 15  # bytes of secret per field element (120 bits < 127)
ELEMENT_BYTES = 16  # wire size of one field element

RandomBytes = Callable[[int], bytes]


def random_element(random_bytes: RandomBytes, prime: int = PRIME) -> int:
    """A uniform element of GF(prime), by rejection sampling on ``bit_length`` random bits."""
    bits = prime.bit_length()
    nbytes = (bits + 7) // 8
    while True:
        value = int.from_bytes(random_bytes(nbytes), "big") & ((1 << bits) - 1)
        if value < prime:
            return value


def random_polynomial(secret: int, t: int, random_bytes: RandomBytes, prime: int = PRIME) -> list[int]:
    """Coefficients ``[secret, a_1, ..., a_{t-1}]`` of a uniform degree-(t-1) polynomial."""
    if not 0 <= secret < prime:
        raise FedarenaError(f"shamir: secret must lie in [0, {prime}), got {secret}")
    return [secret] + [random_element(random_bytes, prime) for _ in range(t - 1)]


def evaluate(coefficients: Sequence[int], x: int, prime: int = PRIME) -> int:
    """``f(x) mod prime`` by Horner's rule."""
    value = 0
    for c in reversed(coefficients):
        value = (value * x + c) % prime
    return value


def _check_points(xs: Sequence[int], prime: int) -> None:
    if len(set(x % prime for x in xs)) != len(xs) or any(x % prime == 0 for x in xs):
        raise FedarenaError(f"shamir: share points must be distinct and non-zero mod p, got {sorted(xs)}")


def split(secret: int, t: int, xs: Sequence[int], random_bytes: RandomBytes, prime: int = PRIME) -> dict[int, int]:
    """Shares ``{x: f(x)}`` of ``secret`` with threshold ``t`` for the points ``xs``."""
    _check_points(xs, prime)
    if not 1 <= t <= len(xs):
        raise FedarenaError(f"shamir: threshold t={t} must be in [1, {len(xs)}] for {len(xs)} holders")
    poly = random_polynomial(secret, t, random_bytes, prime)
    return {x: evaluate(poly, x, prime) for x in xs}


@lru_cache(maxsize=1024)
def lagrange_at_zero(xs: tuple[int, ...], prime: int = PRIME) -> tuple[int, ...]:
    """Coefficients ``l_i`` with ``f(0) = sum_i l_i f(x_i)`` for every polynomial of degree < len(xs)."""
    _check_points(xs, prime)
    coefficients = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % prime
                den = den * (xj - xi) % prime
        coefficients.append(num * pow(den, -1, prime) % prime)
    return tuple(coefficients)


def reconstruct(shares: Mapping[int, int], prime: int = PRIME) -> int:
    """``f(0)`` from shares ``{x: f(x)}``; correct whenever at least ``t`` shares are given."""
    xs = tuple(sorted(shares))
    if not xs:
        raise FedarenaError("shamir: cannot reconstruct from zero shares")
    weights = lagrange_at_zero(xs, prime)
    return sum(w * shares[x] for w, x in zip(weights, xs)) % prime


def interpolate(points: Mapping[int, int], prime: int = PRIME) -> list[int]:
    """Coefficients (constant first) of the unique polynomial of degree < len(points) through them."""
    xs = list(points)
    if len(set(x % prime for x in xs)) != len(xs):
        raise FedarenaError("shamir: interpolation points must be distinct")
    result = [0] * len(xs)
    for xi in xs:
        basis, den = [1], 1  # basis(x) = prod_{j != i} (x - x_j), built coefficient by coefficient
        for xj in xs:
            if xj != xi:
                basis = [(a - xj * b) % prime for a, b in zip([0] + basis, basis + [0])]
                den = den * (xi - xj) % prime
        scale = points[xi] * pow(den, -1, prime) % prime
        result = [(r + scale * b) % prime for r, b in zip(result, basis)]
    return result


# --- byte strings -------------------------------------------------------------------------------


def share_size(secret_len: int) -> int:
    """Bytes of one holder's share of a ``secret_len``-byte string."""
    return -(-secret_len // CHUNK_BYTES) * ELEMENT_BYTES


def _chunks(secret: bytes) -> list[int]:
    return [int.from_bytes(secret[i : i + CHUNK_BYTES], "big") for i in range(0, len(secret), CHUNK_BYTES)]


def split_bytes(secret: bytes, t: int, xs: Sequence[int], random_bytes: RandomBytes) -> dict[int, bytes]:
    """Shares ``{x: share}`` of a byte string; each share is ``share_size(len(secret))`` bytes."""
    if not secret:
        raise FedarenaError("shamir: cannot share an empty secret")
    per_chunk = [split(c, t, xs, random_bytes) for c in _chunks(secret)]
    return {x: b"".join(s[x].to_bytes(ELEMENT_BYTES, "big") for s in per_chunk) for x in xs}


def reconstruct_bytes(shares: Mapping[int, bytes], secret_len: int) -> bytes:
    """The ``secret_len``-byte string from at least ``t`` of its shares (all of equal length)."""
    size = share_size(secret_len)
    bad = sorted(x for x, s in shares.items() if len(s) != size)
    if bad:
        raise FedarenaError(f"shamir: shares from holders {bad} are not {size} bytes long")
    n_chunks = size // ELEMENT_BYTES
    out = b""
    for k in range(n_chunks):
        lo, hi = k * ELEMENT_BYTES, (k + 1) * ELEMENT_BYTES
        part = {x: int.from_bytes(s[lo:hi], "big") for x, s in shares.items()}
        chunk_len = min(CHUNK_BYTES, secret_len - k * CHUNK_BYTES)
        value = reconstruct(part)
        if value >= 1 << (8 * chunk_len):
            raise FedarenaError("shamir: reconstructed chunk does not fit its length (inconsistent shares)")
        out += value.to_bytes(chunk_len, "big")
    return out
