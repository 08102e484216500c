"""Fixed-point encoding of float vectors into Z_{2^bits} for secure aggregation.

Secure aggregation (Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", CCS 2017, Sec. 3: inputs are vectors in Z_R, sums taken mod R) adds integers modulo
``R = 2^bits``, so float updates are clipped, scaled and rounded to integers first, in the manner of
Bonawitz et al. (Sec. 3, "bounded integer inputs") and of the distributed-DP pipelines of Kairouz,
Liu and Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
Aggregation" (ICML 2021, arXiv:2102.06387, Sec. 4: clip, scale, round, wrap mod 2^bits).

Exact capacity rule (the sum of ``n`` clients never wraps):
    each entry is clipped to ``[-clip, clip]`` and mapped to ``q = round(x * scale)``, clamped to
    ``[-Q, Q]`` with ``Q = ceil(clip * scale)``; the sum of ``n`` clients then lies in ``[-nQ, nQ]``,
    and it is recovered exactly from its residue mod ``2^bits`` by the centered lift (residues
    ``>= 2^(bits-1)`` mean negative numbers) iff ``n * Q <= 2^(bits-1) - 1``, i.e. the ``2nQ + 1``
    possible sums (n times the per-client range ``2Q``, plus one) fit in ``2^bits`` residues.
    Without an explicit scale, ``Q = min((2^(bits-1) - 1) // n, 2^52)`` and ``scale = Q / clip``
    (rounded down to the float with ``ceil(clip * scale) == Q``; the 2^52 cap keeps every integer
    exact in float64, more than float32 inputs carry).
    ``check_capacity`` refuses any (clients, clip, bits, scale) breaking this rule.

Rounding: deterministic round-half-to-even by default (error <= 1/(2 scale) per entry, so
``|decoded sum - sum of clipped inputs| <= n / (2 scale)`` per entry); unbiased stochastic rounding
(``floor(y + u)``, ``u ~ U[0, 1)``, error < 1/scale per entry) when a seeded ``numpy`` Generator is
given — it is quantization randomness, never key or mask material.

Weighted sums: the caller multiplies each client's vector by its weight ``w_i`` before encoding; the
clip then applies to ``w_i * x_i``. With weights normalised to ``|w_i| <= 1`` (e.g. ``n_i / max_j n_j``)
and ``|x_i| <= clip`` entry-wise, nothing extra is clipped and the capacity rule above is unchanged;
the caller divides the decoded sum by ``sum_i w_i`` (public or sent in the clear).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedarena.core.types import FedarenaError

MIN_BITS, MAX_BITS = 8, 64
MAX_LEVEL = 1 << 52


def storage_dtype(bits: int) -> np.dtype:
    """The unsigned wire dtype for residues mod 2^bits: uint32 up to 32 bits, else uint64."""
    return np.dtype(np.uint32) if bits <= 32 else np.dtype(np.uint64)


def _check_bits(bits: int) -> None:
    if not isinstance(bits, (int, np.integer)) or not MIN_BITS <= bits <= MAX_BITS:
        raise FedarenaError(f"secagg bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")


def check_capacity(n_clients: int, clip: float, bits: int, scale: float | None = None) -> float:
    """The scale to use for ``n_clients`` summed values in ``[-clip, clip]`` mod ``2^bits``.

    Raises FedarenaError, naming the numbers, when the sum could overflow or no resolution is left.
    """
    _check_bits(bits)
    if not isinstance(n_clients, (int, np.integer)) or n_clients < 1:
        raise FedarenaError(f"secagg needs at least 1 client, got n_clients={n_clients!r}")
    if not (math.isfinite(clip) and clip > 0):
        raise FedarenaError(f"secagg clip must be a positive finite number, got {clip!r}")
    half = (1 << (bits - 1)) - 1
    if scale is None:
        level = min(half // n_clients, MAX_LEVEL)
        if level < 1:
            raise FedarenaError(
                f"secagg overflow: {n_clients} clients cannot be summed in {bits} bits "
                f"(needs n_clients <= 2^{bits - 1} - 1 = {half}); raise bits"
            )
        scale = level / clip
        while math.ceil(clip * scale) > level:  # float rounding of clip * (Q / clip) may land above Q
            scale = math.nextafter(scale, 0.0)
        return scale
    if not (math.isfinite(scale) and scale > 0):
        raise FedarenaError(f"secagg scale must be a positive finite number, got {scale!r}")
    level = math.ceil(clip * scale)
    if level > MAX_LEVEL or n_clients * level > half:
        raise FedarenaError(
            f"secagg overflow: {n_clients} clients x range [-{level}, {level}] (clip={clip} x scale={scale}) "
            f"exceeds the {bits}-bit signed capacity {half}; lower clip or scale, or raise bits"
        )
    return float(scale)


@dataclass(frozen=True)
class FixedPoint:
    """Encoder for sums of up to ``n_clients`` vectors with entries in ``[-clip, clip]`` mod ``2^bits``."""

    n_clients: int
    clip: float
    bits: int
    scale: float

    @classmethod
    def for_clients(cls, n_clients: int, clip: float, bits: int, scale: float | None = None) -> FixedPoint:
        return cls(n_clients, float(clip), bits, check_capacity(n_clients, clip, bits, scale))

    def __post_init__(self) -> None:
        check_capacity(self.n_clients, self.clip, self.bits, self.scale)

    @property
    def level(self) -> int:
        """``Q``: the largest integer magnitude one client's entry can take."""
        return math.ceil(self.clip * self.scale)

    @property
    def dtype(self) -> np.dtype:
        return storage_dtype(self.bits)

    def to_integers(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Clip, scale and round to signed integers in ``[-Q, Q]`` (int64)."""
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise FedarenaError("secagg encode: the vector has non-finite entries (NaN or inf)")
        y = np.clip(x, -self.clip, self.clip) * self.scale
        y = np.floor(y + rng.random(y.shape)) if rng is not None else np.rint(y)
        return np.clip(y, -self.level, self.level).astype(np.int64)

    def encode(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Residues mod ``2^bits`` of the rounded vector, in ``self.dtype``."""
        return wrap(self.to_integers(x, rng), self.bits)

    def to_signed(self, total: np.ndarray) -> np.ndarray:
        """Centered lift of residues mod ``2^bits`` to int64 in ``[-2^(bits-1), 2^(bits-1))``."""
        return centered_lift(total, self.bits)

    def decode(self, total: np.ndarray) -> np.ndarray:
        """Float64 sum from the modular sum of at most ``n_clients`` encodings."""
        return self.to_signed(total).astype(np.float64) / self.scale

    def quantize(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """What the aggregate sees of ``x`` alone: ``decode(encode(x))``."""
        return self.to_integers(x, rng).astype(np.float64) / self.scale


def wrap(values: np.ndarray, bits: int) -> np.ndarray:
    """Signed int64 values -> residues mod 2^bits in the wire dtype (two's complement)."""
    _check_bits(bits)
    residues = np.asarray(values, dtype=np.int64).view(np.uint64) & np.uint64((1 << bits) - 1)
    return residues.astype(storage_dtype(bits))


def centered_lift(total: np.ndarray, bits: int) -> np.ndarray:
    """Residues mod 2^bits -> signed int64 representatives in ``[-2^(bits-1), 2^(bits-1))``."""
    _check_bits(bits)
    r = np.asarray(total).astype(np.uint64) & np.uint64((1 << bits) - 1)
    if bits == 64:
        return r.view(np.int64)
    signed = r.astype(np.int64)
    return np.where(signed >= 1 << (bits - 1), signed - (1 << bits), signed)
