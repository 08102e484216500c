"""Privacy accounting for user-level DP-FedAvg, with Google's ``dp_accounting`` (0.6.0).

A round of DP-FedAvg (McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent Language
Models", ICLR 2018, arXiv 1710.06963, Algorithm 1) is a sampled Gaussian mechanism over *users*: each user's
update is clipped to L2 norm C, the server adds N(0, (zC)^2) per coordinate to their sum (z: the noise
multiplier), and rounds compose adaptively. What is accounted, per sampling scheme:

* ``sampling="poisson"`` (the paper's): every user joins a round with probability q;
  ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` under add/remove-one-user, accounted with RDP (Mironov,
  "Renyi Differential Privacy", CSF 2017, arXiv 1702.07476; Mironov, Talwar, Zhang, "Renyi Differential Privacy
  of the Sampled Gaussian Mechanism", arXiv 1908.10530) or with privacy loss distributions
  (``accountant="pld"``; Doroshenko, Ghazi, Kamath, Kumar, Manurangsi, "Connect the Dots: Tighter Discrete
  Approximations of Privacy Loss Distributions", PETS 2022, arXiv 2207.04380).
* ``sampling="fixed"``: m = ``per_round`` of N = ``population`` users drawn without replacement;
  ``SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(z / 2))`` under replace-one-user, RDP only (Wang,
  Balle, Kasiviswanathan, "Subsampled Renyi Differential Privacy and Analytical Moments Accountant", AISTATS
  2019, arXiv 1808.00087, Theorem 27). Replacing one user moves the sum of clipped updates by up to 2C, hence
  z / 2. dp_accounting's PLD accountant has no event for this sampling: that combination is refused.
* ``mechanism="skellam"``: integer Skellam noise added under secure aggregation (Agarwal, Kairouz, Liu, "The
  Skellam Mechanism for Differentially Private Federated Learning", NeurIPS 2021, arXiv 2110.04995, Sec. 3,
  RDP of the multidimensional Skellam mechanism). With integer-domain L2/L1 sensitivities D2, D1 and
  per-coordinate variance mu = (z D2)^2, for integer alpha > 1:
      eps(alpha) <= alpha D2^2 / (2 mu) + min( ((2 alpha - 1) D2^2 + 6 D1) / (4 mu^2),  3 D1 / (2 mu) ).
  The first term is the Gaussian mechanism's RDP; the min is the price of discreteness, which vanishes as the
  integer scale grows. Poisson sampling amplifies it by the general bound of Zhu & Wang, "Poisson Subsampled
  Renyi Differential Privacy", ICML 2019, Theorem 6 (``poisson_subsampled_rdp``). dp_accounting has no
  Skellam event, so this RDP curve is composed here (integer orders 2..256) and converted to (eps, delta) with
  dp_accounting's own conversion. Fixed-size sampling and PLD are refused for Skellam.

RDP is converted to (eps, delta) by ``dp_accounting.rdp.compute_epsilon`` (Canonne, Kamath, Steinke,
arXiv 2004.00010, Prop. 12), which is tighter than the conversion used by Abadi et al. 2016 and early
TF-Privacy (Mironov 2017, Prop. 3); older published epsilons are therefore slightly larger than ours.

``Accountant`` is the run's budget: a frozen config plus the rounds already spent, with a plain-JSON state so
that a run continued from a checkpoint continues its budget instead of resetting it.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable, Sequence

import dp_accounting
import numpy as np
from dp_accounting.pld import PLDAccountant
from dp_accounting.privacy_accountant import NeighboringRelation, PrivacyAccountant
from dp_accounting.rdp import RdpAccountant
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon
from scipy.special import gammaln, logsumexp

from fedarena.core.types import FedarenaError

log = logging.getLogger(__name__)

DEFAULT_DELTA = 1e-5
SAMPLINGS = ("poisson", "fixed")
ACCOUNTANTS = ("rdp", "pld")
MECHANISMS = ("gaussian", "skellam")
SKELLAM_ORDERS = tuple(range(2, 257))
STATE_FORMAT = "fedarena.dp-accountant/1"


@dataclass(frozen=True)
class AccountantConfig:
    """What determines epsilon: noise, sampling, delta, accounting method.

    Poisson sampling needs ``sampling_probability`` q, or ``population`` N and ``per_round`` (q = per_round / N,
    the paper's expected number of users per round). Fixed-size sampling needs ``population`` and ``per_round``.
    Skellam needs its integer-domain sensitivities (``dp.skellam_sensitivity``).
    """

    noise_multiplier: float
    delta: float = DEFAULT_DELTA
    sampling_probability: float | None = None
    population: int | None = None
    per_round: int | None = None
    sampling: str = "poisson"
    accountant: str = "rdp"
    mechanism: str = "gaussian"
    l2_sensitivity: float | None = None
    l1_sensitivity: float | None = None

    def __post_init__(self) -> None:
        _choice("sampling", self.sampling, SAMPLINGS)
        _choice("accountant", self.accountant, ACCOUNTANTS)
        _choice("mechanism", self.mechanism, MECHANISMS)
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise FedarenaError(f"dp noise_multiplier must be a finite number >= 0, got {self.noise_multiplier}")
        if not 0 < self.delta < 1:
            raise FedarenaError(f"dp delta must be in (0, 1), got {self.delta}")
        self._check_sampling()
        self._check_mechanism()

    def _check_sampling(self) -> None:
        if self.population is not None and self.population < 1:
            raise FedarenaError(f"dp population must be >= 1, got {self.population}")
        if self.per_round is not None and not (self.population and 1 <= self.per_round <= self.population):
            raise FedarenaError(
                f"dp per_round must be in [1, population={self.population}], got {self.per_round}"
            )
        if self.sampling == "fixed":
            if self.population is None or self.per_round is None:
                raise FedarenaError("dp sampling='fixed' needs population and per_round")
            if self.sampling_probability is not None:
                raise FedarenaError("dp sampling='fixed' takes population and per_round, not sampling_probability")
            if self.accountant == "pld":
                raise FedarenaError(
                    "dp accountant='pld' cannot account sampling='fixed' (SampledWithoutReplacementDpEvent is "
                    "RDP-only in dp_accounting); use accountant='rdp' or sampling='poisson'"
                )
            return
        given = self.sampling_probability is not None
        if given == (self.per_round is not None):
            raise FedarenaError("dp sampling='poisson' needs either sampling_probability or population and per_round")
        if given and not 0 < self.sampling_probability <= 1:  # type: ignore[operator]
            raise FedarenaError(f"dp sampling_probability must be in (0, 1], got {self.sampling_probability}")

    def _check_mechanism(self) -> None:
        if self.mechanism == "gaussian":
            if self.l2_sensitivity is not None or self.l1_sensitivity is not None:
                raise FedarenaError("dp l2_sensitivity/l1_sensitivity are for mechanism='skellam' only")
            return
        if self.sampling != "poisson" or self.accountant != "rdp":
            raise FedarenaError(
                "dp mechanism='skellam' is accounted only with sampling='poisson' and accountant='rdp' "
                f"(got sampling={self.sampling!r}, accountant={self.accountant!r})"
            )
        for name in ("l2_sensitivity", "l1_sensitivity"):
            value = getattr(self, name)
            if value is None or not (math.isfinite(value) and value > 0):
                raise FedarenaError(f"dp mechanism='skellam' needs {name} > 0, got {value}")

    @property
    def q(self) -> float:
        """The probability that a given user takes part in a round."""
        if self.sampling_probability is not None:
            return float(self.sampling_probability)
        return self.per_round / self.population  # type: ignore[operator]


def _choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise FedarenaError(f"dp {name} must be one of {', '.join(allowed)}; got {value!r}")


def dp_event(config: AccountantConfig, rounds: int) -> dp_accounting.DpEvent:
    """The dp_accounting event of `rounds` Gaussian DP-FedAvg rounds (see the module docstring)."""
    if config.mechanism != "gaussian":
        raise FedarenaError("dp_accounting has no Skellam event; use epsilon_for / skellam_rdp")
    if config.sampling == "fixed":
        gaussian = dp_accounting.GaussianDpEvent(config.noise_multiplier / 2)
        one = dp_accounting.SampledWithoutReplacementDpEvent(config.population, config.per_round, gaussian)
    else:
        one = dp_accounting.PoissonSampledDpEvent(config.q, dp_accounting.GaussianDpEvent(config.noise_multiplier))
    return dp_accounting.SelfComposedDpEvent(one, rounds)


def _new_accountant(config: AccountantConfig) -> PrivacyAccountant:
    relation = NeighboringRelation.REPLACE_ONE if config.sampling == "fixed" else NeighboringRelation.ADD_OR_REMOVE_ONE
    if config.accountant == "pld":
        return PLDAccountant(neighboring_relation=relation)
    return RdpAccountant(neighboring_relation=relation)


@functools.lru_cache(maxsize=256)
def _rdp_per_round(config: AccountantConfig) -> tuple[np.ndarray, np.ndarray]:
    """(orders, RDP of one round): RDP composes linearly, so r rounds cost r times this (as in RdpAccountant)."""
    if config.mechanism == "skellam":
        return np.array(SKELLAM_ORDERS, dtype=np.float64), skellam_rdp(config, SKELLAM_ORDERS)
    accountant = _new_accountant(config)
    accountant.compose(dp_event(config, 1))
    return accountant.orders, accountant.rdp  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=4096)
def epsilon_for(config: AccountantConfig, rounds: int) -> float:
    """Epsilon at `config.delta` after `rounds` rounds (0 rounds: 0; no noise: inf)."""
    if rounds < 0:
        raise FedarenaError(f"dp rounds must be >= 0, got {rounds}")
    if rounds == 0:
        return 0.0
    if config.noise_multiplier == 0:
        return math.inf
    if config.accountant == "rdp":
        orders, rdp = _rdp_per_round(config)
        return float(compute_epsilon(orders, rounds * rdp, config.delta)[0])
    accountant = _new_accountant(config)
    accountant.compose(dp_event(config, rounds))
    return float(accountant.get_epsilon(config.delta))


def epsilon(
    noise_multiplier: float,
    sampling_probability: float | None = None,
    *,
    population: int | None = None,
    per_round: int | None = None,
    rounds: int,
    delta: float = DEFAULT_DELTA,
    sampling: str = "poisson",
    accountant: str = "rdp",
) -> float:
    """Epsilon at `delta` of `rounds` rounds of Gaussian DP-FedAvg (see ``AccountantConfig`` for the arguments)."""
    config = AccountantConfig(
        noise_multiplier=noise_multiplier,
        delta=delta,
        sampling_probability=sampling_probability,
        population=population,
        per_round=per_round,
        sampling=sampling,
        accountant=accountant,
    )
    return epsilon_for(config, rounds)


def local_epsilon(noise_multiplier: float, participations: int, delta: float = DEFAULT_DELTA) -> float:
    """Local DP: epsilon of one client's uploads after it took part `participations` times.

    Each upload is clip(update) + N(0, (zC)^2); two datasets of the client move the clipped update by up to 2C,
    so each upload is a Gaussian mechanism with multiplier z / 2, composed over the client's participations
    (no amplification by sampling: whoever receives an upload knows it was sampled).
    """
    if noise_multiplier < 0 or participations < 0:
        raise FedarenaError("local DP needs noise_multiplier >= 0 and participations >= 0")
    if participations == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise_multiplier / 2), participations)
    return float(RdpAccountant().compose(event).get_epsilon(delta))


def check_delta(delta: float, population: int) -> str | None:
    """A warning (also logged) when delta >= 1/population: such a delta allows leaking one user outright."""
    if population >= 1 and delta >= 1.0 / population:
        message = (
            f"dp delta={delta:g} is >= 1/population (1/{population} = {1.0 / population:.3g}); "
            "choose delta well below 1/population"
        )
        log.warning(message)
        return message
    return None


# --- Skellam (distributed DP) ---------------------------------------------------------------------------


def skellam_base_rdp(alpha: int, l2: float, l1: float, variance: float) -> float:
    """RDP of one release with Skellam noise of `variance` per coordinate (Agarwal et al. 2021, Sec. 3)."""
    gaussian = alpha * l2**2 / (2 * variance)
    discrete = min(((2 * alpha - 1) * l2**2 + 6 * l1) / (4 * variance**2), 3 * l1 / (2 * variance))
    return gaussian + discrete


def poisson_subsampled_rdp(
    base_rdp: Callable[[int], float], q: float, orders: Sequence[int], *, tail_factor: float = 3.0
) -> np.ndarray:
    """RDP at integer `orders` of a mechanism with RDP `base_rdp`, run on a Poisson sample with rate `q`.

    ``tail_factor=3`` is the general upper bound of Zhu & Wang (ICML 2019, Theorem 6), valid for any base
    mechanism; ``tail_factor=1`` is their lower bound (Theorem 5), which is exact for the Gaussian mechanism.
    Each order's value is capped by ``base_rdp`` (subsampling never hurts).
    """
    if not 0 < q <= 1:
        raise FedarenaError(f"sampling probability must be in (0, 1], got {q}")
    base = np.array([base_rdp(int(a)) for a in orders], dtype=np.float64)
    if q == 1:
        return base
    eps_at = {int(a): float(r) for a, r in zip(orders, base)}
    out = np.empty(len(orders), dtype=np.float64)
    for i, alpha in enumerate(int(a) for a in orders):
        if alpha < 2:
            raise FedarenaError(f"RDP orders must be integers >= 2, got {alpha}")
        out[i] = min(base[i], _subsampled_log_moment(eps_at, base_rdp, q, alpha, tail_factor) / (alpha - 1))
    return out


def _subsampled_log_moment(
    eps_at: dict[int, float], base_rdp: Callable[[int], float], q: float, alpha: int, tail_factor: float
) -> float:
    ls = np.arange(2, alpha + 1)
    eps = np.array([eps_at[order] if order in eps_at else base_rdp(int(order)) for order in ls], dtype=np.float64)
    log_binom = gammaln(alpha + 1) - gammaln(ls + 1) - gammaln(alpha - ls + 1)
    terms = log_binom + ls * math.log(q) + (alpha - ls) * math.log1p(-q) + (ls - 1) * eps
    terms[1:] += math.log(tail_factor)  # l >= 3
    head = (alpha - 1) * math.log1p(-q) + math.log(alpha * q - q + 1)
    return float(logsumexp(np.concatenate(([head], terms))))


def skellam_rdp(config: AccountantConfig, orders: Sequence[int] = SKELLAM_ORDERS) -> np.ndarray:
    """Per-round RDP of Poisson-sampled Skellam DP-FedAvg at integer `orders`."""
    l2, l1 = float(config.l2_sensitivity), float(config.l1_sensitivity)  # type: ignore[arg-type]
    variance = (config.noise_multiplier * l2) ** 2
    base = functools.partial(skellam_base_rdp, l2=l2, l1=l1, variance=variance)
    return poisson_subsampled_rdp(base, config.q, orders)


# --- the run's budget -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accountant:
    """A run's privacy budget: the accounting config and how many rounds were already spent.

    Frozen: ``spend`` returns a new Accountant. ``state()`` / ``from_state()`` round-trip through plain JSON,
    so a run continued from a checkpoint starts from the rounds it had spent.
    """

    config: AccountantConfig
    rounds_spent: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.rounds_spent, bool) or not isinstance(self.rounds_spent, int) or self.rounds_spent < 0:
            raise FedarenaError(f"dp rounds_spent must be an integer >= 0, got {self.rounds_spent!r}")

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far."""
        return epsilon_for(self.config, self.rounds_spent)

    def epsilon_after(self, rounds: int) -> float:
        """Epsilon after `rounds` rounds in total (spent ones included)."""
        return epsilon_for(self.config, rounds)

    def spend(self, rounds: int = 1) -> Accountant:
        if rounds < 0:
            raise FedarenaError(f"dp cannot spend {rounds} rounds")
        return replace(self, rounds_spent=self.rounds_spent + rounds)

    def can_spend(self, target_epsilon: float, rounds: int = 1) -> bool:
        """Whether `rounds` more rounds keep epsilon <= `target_epsilon`."""
        return self.epsilon_after(self.rounds_spent + rounds) <= target_epsilon

    def max_rounds(self, target_epsilon: float, limit: int) -> int:
        """The largest total number of rounds r <= `limit` with epsilon(r) <= `target_epsilon` (binary search)."""
        if not target_epsilon > 0:
            raise FedarenaError(f"dp target epsilon must be > 0, got {target_epsilon}")
        if limit < 0:
            raise FedarenaError(f"dp round limit must be >= 0, got {limit}")
        if self.epsilon_after(limit) <= target_epsilon:
            return limit
        lo, hi = 0, limit  # invariant: eps(lo) <= target < eps(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.epsilon_after(mid) <= target_epsilon:
                lo = mid
            else:
                hi = mid
        return lo

    def state(self) -> dict[str, Any]:
        """Plain-JSON state (checkpoint it beside the model)."""
        return {"format": STATE_FORMAT, "config": asdict(self.config), "rounds_spent": self.rounds_spent}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Accountant:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise FedarenaError(f"dp accountant state: expected format {STATE_FORMAT!r}")
        if set(state) != {"format", "config", "rounds_spent"}:
            raise FedarenaError(f"dp accountant state: unexpected keys {sorted(set(state))}")
        raw = state["config"]
        known = {f.name for f in fields(AccountantConfig)}
        if not isinstance(raw, dict) or not set(raw) <= known:
            raise FedarenaError(f"dp accountant state: config keys must be among {sorted(known)}")
        try:
            return cls(AccountantConfig(**raw), state["rounds_spent"])
        except TypeError as err:
            raise FedarenaError(f"dp accountant state: bad value type ({err})") from None

    @classmethod
    def resume(cls, state: dict[str, Any], config: AccountantConfig) -> Accountant:
        """The checkpointed budget, continued under `config` (which must be the checkpoint's own)."""
        restored = cls.from_state(state)
        if restored.config != config:
            raise FedarenaError(
                f"dp config changed since the checkpoint ({restored.config} -> {config}); "
                "a continued run must keep its privacy accounting config"
            )
        return restored
