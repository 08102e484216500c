"""Differential privacy for federated rounds: clipping, noise, DP-FedAvg and the Skellam mechanism.

Central user-level DP is DP-FedAvg of McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent
Language Models", ICLR 2018, arXiv 1710.06963, Algorithm 1 with the fixed-denominator estimator f~_f:

    Delta_k = ClipFn(w_k - w_t, C)                    flat L2 clipping over all tensors (``clip_update``)
    Delta   = sum_k w_k Delta_k / (q W)               q W: the expected total weight, fixed in advance
    w_{t+1} = w_t + Delta + N(0, (z C / (q W))^2 I)   the noise is added to the sum, i.e. sigma = z C

``central_dp_mean`` uses uniform weights w_k = 1 (so q W = qN = ``expected_clients``). The paper allows
weights capped at 1 (w_k = min(n_k / w_hat, 1)) and proves the same sensitivity for them; uniform weights are its
simplest bounded-sensitivity choice: each user's contribution to the sum has L2 norm <= C whatever its data
size, so one user moves the sum by at most C (add/remove) and the Gaussian noise of std z C gives the
accounted guarantee (``accountant.py``). The denominator does not depend on who was sampled, so it reveals
nothing; the price is a noisier estimate when fewer users than expected show up. The noise is added by the
server: this is the trusted-server model. Accounting is in ``accountant.py``.

``local_dp`` is local DP: the client clips and adds N(0, (zC)^2) itself, before upload. Every upload is then
private on its own, even against the server, but m clients' independent noises leave std zC / sqrt(m) in the
mean where central DP leaves zC / m (same z): sqrt(m) times more noise per round. Its
guarantee is per client per upload, composed over that client's participations with no sampling amplification
(``accountant.local_epsilon``). It is a very different (and much weaker for utility) promise.

Distributed DP with secure aggregation uses integer noise: the Skellam mechanism of Agarwal, Kairouz, Liu, "The
Skellam Mechanism for Differentially Private Federated Learning", NeurIPS 2021, arXiv 2110.04995:
clip to C, scale by s, round to integers with conditional randomized rounding (the rounded vector's L2 norm is
kept below the bound of ``skellam_sensitivity``; Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian
Mechanism for Federated Learning with Secure Aggregation", ICML 2021, arXiv 2102.06387), add
Skellam noise Sk(0, mu/t) = Poisson(mu/2t) - Poisson(mu/2t) per coordinate, and sum under secure aggregation.
Skellam is closed under summation, so any t' >= t survivors give total noise Sk(0, mu t'/t), at least the
accounted Sk(0, mu). Not implemented from the paper: the random rotation (a utility step that flattens the
vector before modular wrap-around, not needed for privacy) and the modular clipping, which belongs to the
secure-aggregation encoding. The noise a single client adds is small: against coalitions that subtract their own
shares, the guarantee is that of the remaining shares' noise.

Noise sources: ``SecureNoise`` draws from the OS's secure generator (``os.urandom``) and turns 52-bit uniforms
into Gaussians (inverse CDF, float64) and Poissons (inverse CDF on an exact table); it is for deployments.
``SeededNoise`` wraps a ``torch.Generator`` for reproducible simulations and says so in its ``label``.
Floating-point Gaussian noise is the standard practice of DP-FedAvg implementations; it is known to be
attackable in principle through floating-point artefacts (Mironov, "On Significance of the Least
Significant Bits for Differential Privacy", CCS 2012), which the integer Skellam path
avoids.
"""

from __future__ import annotations

import math
import os
from typing import Protocol, Sequence

import numpy as np
import torch
from scipy.stats import poisson

from fedarena.core.types import FedarenaError, Params

CLIP_MARGIN = 1e-9  # clipped norms are <= C (1 - CLIP_MARGIN): robust to any float64 way of computing the norm
DEFAULT_ROUNDING_BETA = math.exp(-0.5)  # conditional rounding's beta (Kairouz et al. 2021; Agarwal et al. 2021)
_TABLE_MAX_RATE = 1e8  # larger Poisson rates are drawn as sums of parts (Poisson is closed under sums)
_MAX_ROUNDING_TRIES = 1000


class NoiseSource(Protocol):
    """Where DP noise comes from. All draws are flat tensors of length n."""

    label: str

    def uniform(self, n: int) -> torch.Tensor:
        """float64 uniforms in (0, 1)."""
        ...

    def normal(self, n: int) -> torch.Tensor:
        """float64 standard normals."""
        ...

    def poisson(self, rate: float, n: int) -> torch.Tensor:
        """int64 Poisson(rate) draws."""
        ...


class SecureNoise:
    """Noise from the OS's secure generator (``os.urandom``), for deployments."""

    label = "os-secure"

    def uniform(self, n: int) -> torch.Tensor:
        raw = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(12)  # 52 random bits
        return torch.from_numpy((raw.astype(np.float64) + 0.5) * 2.0**-52)  # (k + 1/2) / 2^52, never 0 or 1

    def normal(self, n: int) -> torch.Tensor:
        return torch.special.ndtri(self.uniform(n))

    def poisson(self, rate: float, n: int) -> torch.Tensor:
        _check_rate(rate)
        parts = max(1, math.ceil(rate / _TABLE_MAX_RATE))
        total = torch.zeros(n, dtype=torch.int64)
        for _ in range(parts):
            total += _poisson_inverse_cdf(self.uniform(n).numpy(), rate / parts)
        return total


class SeededNoise:
    """Noise from a seeded ``torch.Generator``: reproducible, for simulations only (never for a deployment)."""

    label = "seeded (simulation only)"

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def uniform(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, dtype=torch.float64)

    def normal(self, n: int) -> torch.Tensor:
        return torch.randn(n, generator=self.generator, dtype=torch.float64)

    def poisson(self, rate: float, n: int) -> torch.Tensor:
        _check_rate(rate)
        rates = torch.full((n,), float(rate), dtype=torch.float64)
        return torch.poisson(rates, generator=self.generator).to(torch.int64)


def _check_rate(rate: float) -> None:
    if not (math.isfinite(rate) and rate >= 0):
        raise FedarenaError(f"Poisson rate must be a finite number >= 0, got {rate}")


def _poisson_inverse_cdf(u: np.ndarray, rate: float) -> torch.Tensor:
    """The smallest k with CDF(k) >= u, from a CDF table over rate +- (10 sqrt(rate) + 50).

    Outside that window the Poisson tails hold less than 2^-60 of the mass (Chernoff), below the 2^-53 resolution
    of the uniforms, so the table inverts the CDF as exactly as float64 allows.
    """
    if rate == 0:
        return torch.zeros(len(u), dtype=torch.int64)
    width = 10 * math.sqrt(rate) + 50
    lo, hi = max(0, math.floor(rate - width)), math.ceil(rate + width)
    ks = np.arange(lo, hi + 1)
    cdf = poisson.cdf(ks, rate)
    idx = np.minimum(np.searchsorted(cdf, u, side="left"), len(ks) - 1)
    return torch.from_numpy(ks[idx].astype(np.int64))


# --- clipping -------------------------------------------------------------------------------------------


def flat_norm(params: Params) -> float:
    """The L2 norm of all tensors together, computed in float64."""
    return math.sqrt(math.fsum(float(torch.sum(v.detach().to(torch.float64) ** 2)) for v in params.values()))


def _check_clip(clip: float) -> None:
    if not (math.isfinite(clip) and clip > 0):
        raise FedarenaError(f"dp clip must be a finite number > 0, got {clip}")


def _check_floating(params: Params) -> None:
    for key, value in params.items():
        if not value.is_floating_point():
            raise FedarenaError(
                f"dp needs floating-point tensors; {key!r} is {value.dtype} (make it a personal key or leave it out)"
            )


def clip_update(delta: Params, clip: float) -> tuple[Params, float]:
    """Flat L2 clipping: ``delta * min(1, C / ||delta||)`` and the norm before clipping.

    The returned update's ``flat_norm`` is <= clip * (1 - CLIP_MARGIN) < clip, exactly, in the tensors' own
    dtype: the scale factor is computed in float64 and, if rounding to float32 pushes the norm back over the
    bound, shrunk until it does not (at most 22 tries; the last one scales by zero).
    """
    _check_clip(clip)
    _check_floating(delta)
    norm = flat_norm(delta)
    if not math.isfinite(norm):
        bad = [k for k, v in delta.items() if not bool(torch.isfinite(v).all())]
        raise FedarenaError(f"dp update has non-finite values in {bad or 'its squared norm (overflow)'}")
    bound = clip * (1 - CLIP_MARGIN)
    if norm <= bound:
        return dict(delta), norm
    factor = bound / norm
    for attempt in range(22):  # the shrink reaches 1 - 2^0 = 0 at attempt 20, so attempt 21 scales by zero
        out = {k: (v.detach().to(torch.float64) * factor).to(v.dtype) for k, v in delta.items()}
        after = flat_norm(out)
        if after <= bound:
            return out, norm
        factor *= (bound / after) * (1 - 2.0 ** (attempt - 20))
    raise AssertionError("unreachable: the last attempt scales by zero")


# --- central and local DP -------------------------------------------------------------------------------


def _check_noise_multiplier(noise_multiplier: float) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise FedarenaError(f"dp noise multiplier must be a finite number >= 0, got {noise_multiplier}")


def _check_like(reference: Params, update: Params, index: int) -> None:
    if update.keys() != reference.keys():
        missing, extra = sorted(reference.keys() - update.keys()), sorted(update.keys() - reference.keys())
        raise FedarenaError(f"dp update {index}: keys differ from the model's (missing {missing}, extra {extra})")
    for key, value in reference.items():
        if update[key].shape != value.shape:
            raise FedarenaError(
                f"dp update {index}: {key!r} has shape {tuple(update[key].shape)}, expected {tuple(value.shape)}"
            )


def _gaussian_like(params: Params, std: float, noise: NoiseSource) -> Params:
    """float64 N(0, std^2) per coordinate, one flat draw split over the keys in their order."""
    sizes = [v.numel() for v in params.values()]
    flat = noise.normal(sum(sizes)) * std if std > 0 else torch.zeros(sum(sizes), dtype=torch.float64)
    chunks = torch.split(flat, sizes)
    return {k: c.reshape(v.shape) for (k, v), c in zip(params.items(), chunks)}


def central_dp_mean(
    reference: Params,
    updates: Sequence[Params],
    clip: float,
    noise_multiplier: float,
    expected_clients: float,
    noise: NoiseSource,
) -> Params:
    """DP-FedAvg's server step with f_f: reference + (sum_k clip(u_k - reference) + N(0, (zC)^2)) / (qN).

    `updates` are the sampled clients' params after local training (same keys as `reference`); the weights are
    uniform and `expected_clients` (qN) is the fixed denominator, used whatever the number of updates (zero
    included: the noise is still added). Arithmetic is float64; the result has `reference`'s dtypes.
    """
    _check_clip(clip)
    _check_noise_multiplier(noise_multiplier)
    if not (math.isfinite(expected_clients) and expected_clients > 0):
        raise FedarenaError(f"dp expected_clients must be > 0, got {expected_clients}")
    _check_floating(reference)
    total = _gaussian_like(reference, noise_multiplier * clip, noise)
    for index, update in enumerate(updates):
        _check_like(reference, update, index)
        delta = {k: update[k].detach().to(torch.float64) - v.detach().to(torch.float64) for k, v in reference.items()}
        clipped, _ = clip_update(delta, clip)
        total = {k: total[k] + clipped[k] for k in total}
    return {
        k: (v.detach().to(torch.float64) + total[k] / expected_clients).to(v.dtype) for k, v in reference.items()
    }


def local_dp(delta: Params, clip: float, noise_multiplier: float, noise: NoiseSource) -> Params:
    """Local DP on the client: clip(delta, C) + N(0, (zC)^2) per coordinate, in `delta`'s dtypes."""
    _check_noise_multiplier(noise_multiplier)
    clipped, _ = clip_update(delta, clip)
    added = _gaussian_like(clipped, noise_multiplier * clip, noise)
    return {k: (v.to(torch.float64) + added[k]).to(v.dtype) for k, v in clipped.items()}


# --- Skellam (distributed DP under secure aggregation) ---------------------------------------------------


def skellam_noise(n: int, variance: float, noise: NoiseSource) -> torch.Tensor:
    """n int64 draws of Sk(0, variance) = Poisson(variance/2) - Poisson(variance/2)."""
    if not (math.isfinite(variance) and variance >= 0):
        raise FedarenaError(f"Skellam variance must be a finite number >= 0, got {variance}")
    return noise.poisson(variance / 2, n) - noise.poisson(variance / 2, n)


def skellam_share(n: int, variance: float, threshold: int, noise: NoiseSource) -> torch.Tensor:
    """One client's share: Sk(0, variance / t), so that any t or more survivors sum to >= Sk(0, variance).

    `variance` is the accounted total, (z * L2)^2 with L2 from ``skellam_sensitivity`` (``accountant.py`` takes
    z and L2 as ``noise_multiplier`` and ``l2_sensitivity``).
    """
    if threshold < 1:
        raise FedarenaError(f"Skellam survivor threshold must be >= 1, got {threshold}")
    return skellam_noise(n, variance / threshold, noise)


def skellam_sensitivity(
    clip: float, scale: float, dim: int, beta: float = DEFAULT_ROUNDING_BETA
) -> tuple[float, float]:
    """(L2, L1) sensitivity of one client's rounded integer vector (the bound ``skellam_encode`` enforces).

    L2: min(sC + sqrt(d), sqrt((sC)^2 + d/4 + sqrt(2 ln(1/beta)) (sC + sqrt(d)/2))) (the second term with
    conditional rounding, Kairouz et al. 2021); beta = 0 keeps only the deterministic first term.
    L1: an integer vector has |x_i| <= x_i^2, so ||x||_1 <= min(sqrt(d) L2, L2^2).
    """
    _check_clip(clip)
    if not (math.isfinite(scale) and scale > 0) or dim < 1 or not 0 <= beta < 1:
        raise FedarenaError(f"Skellam needs scale > 0, dim >= 1 and beta in [0, 1); got {scale}, {dim}, {beta}")
    c = clip * scale
    l2 = c + math.sqrt(dim)
    if beta > 0:
        l2 = min(l2, math.sqrt(c**2 + dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (c + math.sqrt(dim) / 2)))
    return l2, min(math.sqrt(dim) * l2, l2**2)


def flatten(params: Params) -> torch.Tensor:
    """All tensors as one float64 vector, keys in sorted order."""
    return torch.cat([params[k].detach().to(torch.float64).reshape(-1) for k in sorted(params)])


def unflatten(flat: torch.Tensor, like: Params) -> Params:
    """Inverse of ``flatten``: shapes and dtypes from `like`."""
    keys = sorted(like)
    chunks = torch.split(flat, [like[k].numel() for k in keys])
    return {k: c.reshape(like[k].shape).to(like[k].dtype) for k, c in zip(keys, chunks)}


def conditional_round(x: torch.Tensor, l2_bound: float, noise: NoiseSource) -> torch.Tensor:
    """Unbiased randomized rounding of float64 `x` to int64, redrawn until the L2 norm is <= `l2_bound`."""
    floor = torch.floor(x)
    frac = x - floor
    for _ in range(_MAX_ROUNDING_TRIES):
        rounded = floor + (noise.uniform(x.numel()) < frac).to(torch.float64)
        if math.sqrt(float(torch.sum(rounded**2))) <= l2_bound:
            return rounded.to(torch.int64)
    raise FedarenaError(f"conditional rounding did not meet the L2 bound {l2_bound} in {_MAX_ROUNDING_TRIES} tries")


def skellam_encode(
    delta: Params, clip: float, scale: float, noise: NoiseSource, beta: float = DEFAULT_ROUNDING_BETA
) -> torch.Tensor:
    """A client's integer vector before noise: clip to C, flatten, scale by s, round (norm <= the L2 bound)."""
    clipped, _ = clip_update(delta, clip)
    x = flatten(clipped) * scale
    l2, _ = skellam_sensitivity(clip, scale, x.numel(), beta)
    return conditional_round(x, l2, noise)


def skellam_mean(reference: Params, integer_sum: torch.Tensor, scale: float, expected_clients: float) -> Params:
    """Server side: reference + integer_sum / (s qN), the fixed-denominator mean of the decoded sum."""
    if not (math.isfinite(expected_clients) and expected_clients > 0):
        raise FedarenaError(f"dp expected_clients must be > 0, got {expected_clients}")
    total = sum(v.numel() for v in reference.values())
    if integer_sum.shape != (total,):
        raise FedarenaError(f"Skellam sum has shape {tuple(integer_sum.shape)}, expected ({total},)")
    mean = integer_sum.to(torch.float64) / (scale * expected_clients)
    delta = unflatten(mean, {k: v.to(torch.float64) for k, v in reference.items()})
    return {k: (v.detach().to(torch.float64) + delta[k]).to(v.dtype) for k, v in reference.items()}
