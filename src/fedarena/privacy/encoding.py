"""What a client does to its own update before it leaves, and how the server reads the secure sum back.

The same functions run in the simulator (`privacy.round.Privacy`) and on a Flower SuperNode, which gets the
round's `ClientPrivacy` with the broadcast:
- local DP (`client_delta`): the update (params - reference) clipped to L2 norm C and noised (`dp.local_dp`);
- secure aggregation (`encode_update`): fixed-point residues of (n_k / W * update, n_k / W), W = the largest
  client train size (a public bound); `mean_from_sum` turns the decoded sum into the weighted mean, exactly
  FedAvg's up to the fixed-point resolution;
- central DP under SecAgg (`encode_update` with ``skellam_clip`` > 0): the Skellam mechanism of Agarwal, Kairouz,
  Liu (NeurIPS 2021): each client clips its update to C, scales it by s, rounds it to integers (conditional
  rounding) and adds Sk(0, mu / (t - 1)), so that, whichever client is considered, the shares of the other t - 1
  or more survivors alone sum to at least the accounted Sk(0, mu), mu = (z L2)^2 (`dp.skellam_*`). s is a
  10^4-level grid per clip norm, smaller where the modulus needs it (`skellam_grid`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedarena.core.types import FedarenaError, Params
from fedarena.privacy import dp
from fedarena.privacy.fixedpoint import FixedPoint, wrap
from fedarena.privacy.secagg import SecAggConfig

SKELLAM_TAIL = 12.0  # the modulus holds the sum and this many standard deviations of its noise
SKELLAM_LEVELS = 1e4  # grid levels per clip norm: s C (the rounding error per coordinate is C / 1e4, far below
# the noise z C of any useful z; finer grids only make the clients' exact OS-drawn Poisson shares slower)


def skellam_grid(settings: Any, population: int, dim: int) -> tuple[float, float, float]:
    """(scale s, L2, L1) of central DP under SecAgg: s C = SKELLAM_LEVELS, or less where the sum would not fit.

    Up to N = `population` clients each contribute an integer vector of L2 norm <= L2 (so every coordinate is
    within L2), and the survivors' Skellam shares sum to variance at most N mu (t >= 1), mu = (z L2)^2; the
    modulus 2^bits must hold L2 (N + TAIL z sqrt(N)) in absolute value. L2 <= sC + sqrt(d) (the deterministic
    bound of ``dp.skellam_sensitivity``), so s <= (2^(bits-1) / (N + TAIL z sqrt(N)) - sqrt(d)) / C."""
    if dim < 1:
        raise FedarenaError("central DP under secure aggregation needs the number of shared parameters")
    room = (2 ** (settings.secagg_bits - 1) - 1) / (population + SKELLAM_TAIL * settings.dp_noise * math.sqrt(population))
    fits = (room - math.sqrt(dim)) / settings.dp_clip
    if fits * settings.dp_clip < 10 * math.sqrt(dim):
        raise FedarenaError(
            f"privacy.secagg_bits={settings.secagg_bits} leaves no integer resolution for central DP under secure "
            f"aggregation with {population} clients and {dim} shared parameters; raise secagg_bits (up to 64)")
    scale = min(fits, SKELLAM_LEVELS / settings.dp_clip)
    l2, l1 = dp.skellam_sensitivity(settings.dp_clip, scale, dim)
    return scale, l2, l1


@dataclass(frozen=True)
class ClientPrivacy:
    """What every client of one round does to its own update before it leaves (a deployment sends it along
    with the broadcast): local DP (``dp_clip`` > 0) and/or SecAgg over ``clients`` participants."""

    round: int
    dp_clip: float  # local DP's C; 0: none
    dp_noise: float
    secagg: bool
    clients: int  # n: the fixed-point capacity (the round's sampled clients)
    max_weight: int  # W: the public bound on a client's train size n_k
    fp_clip: float  # fixed-point range of each (weighted) update coordinate
    bits: int
    threshold: int
    neighbours: int  # SecAgg+ degree k; 0: complete graph
    skellam_clip: float = 0.0  # central DP under SecAgg: C; 0: none (then the update is fixed-point encoded)
    skellam_scale: float = 0.0  # s: the integer grid is update * s
    skellam_variance: float = 0.0  # the accounted total Skellam variance mu = (z L2)^2 of the survivors' sum

    def fixed_point(self) -> FixedPoint:
        return FixedPoint.for_clients(self.clients, max(self.fp_clip, 1.0), self.bits)  # >= 1 for the weight entry

    def secagg_config(self) -> SecAggConfig:
        return SecAggConfig(self.threshold, self.bits, self.neighbours or None, self.round)


def client_delta(ref: Params, params: Params, cp: ClientPrivacy, noise: Any) -> Params:
    """A client's update params - ref over the uploaded keys, clipped and noised when local DP is on."""
    delta = {k: params[k] - ref[k] for k in sorted(params)}
    return dp.local_dp(delta, cp.dp_clip, cp.dp_noise, noise) if cp.dp_clip > 0 else delta


def encode_update(delta: Params, num_samples: int, cp: ClientPrivacy, noise: Any = None) -> np.ndarray:
    """The SecAgg input, keys in sorted order. Plain SecAgg: fixed-point residues of (w * update, w),
    w = n_k / W. Central DP under SecAgg (``skellam_clip`` > 0): the update clipped to C, scaled by s, rounded
    to integers (conditional rounding) plus this client's Skellam share Sk(0, mu / (t - 1)), as residues mod 2^bits
    (`noise`: the client's own source)."""
    if cp.skellam_clip > 0:
        if noise is None:
            raise FedarenaError("a Skellam-noised update needs the client's noise source")
        integer = dp.skellam_encode(delta, cp.skellam_clip, cp.skellam_scale, noise)
        # Sk(0, mu / (t - 1)): whichever client's contribution is considered, the other t - 1 or more survivors'
        # shares alone sum to at least Sk(0, mu)
        integer = integer + dp.skellam_share(integer.numel(), cp.skellam_variance, max(cp.threshold - 1, 1), noise)
        return wrap(integer.numpy(), cp.bits)
    w = num_samples / cp.max_weight
    flat = torch.cat([delta[k].reshape(-1).double() for k in sorted(delta)]) * w
    return cp.fixed_point().encode(np.append(flat.numpy(), w))


def mean_from_sum(ref: Params, total: np.ndarray) -> Params:
    """ref + (decoded weighted sum) / (sum of weights), in ref's sorted key order and dtypes."""
    mean = torch.from_numpy(total[:-1] / total[-1])
    out, i = {}, 0
    for k in sorted(ref):
        v = ref[k]
        out[k] = (v.double() + mean[i : i + v.numel()].reshape(v.shape)).to(v.dtype)
        i += v.numel()
    return out
