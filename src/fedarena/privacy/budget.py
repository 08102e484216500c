"""What a private run spends: user-level DP's epsilon, the target-epsilon stop, and the reported DP fields.

- central DP (DP-FedAvg): the sampled Gaussian mechanism over users, accounted by dp-accounting
  (`accountant.AccountantConfig`) over `sampling` (Poisson or fixed-size) with `privacy.accountant`;
- local DP: each client's own Gaussian mechanism composed over its participations, without amplification;
  the reported epsilon is the worst client's (the most uploads any client made through that round);
- central DP under SecAgg: the Skellam mechanism the clients add (`encoding.encode_update`). Two epsilons are
  reported: `epsilon`, its RDP under Poisson sampling (against whoever sees the models but not who took part),
  and `epsilon_vs_server`, the same mechanism without amplification composed over the most rounds any client
  took part in (the server draws the sample and sees who answered, so amplification by sampling does not hold
  against it). A round with fewer than 3 sampled clients (or fewer than t survivors) aborts and releases no
  update; whether it aborts depends on who was sampled, which neither epsilon covers: the run warns when Poisson
  sampling makes such rounds likely (expected clients per round below 20).

`Budget.state` and `restore` carry all of it across a continued run, whose epsilon counts every round since the
first, never from zero.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from fedarena.core.types import FedarenaError
from fedarena.privacy import accountant as acc

log = logging.getLogger(__name__)


@dataclass
class Budget:
    settings: Any  # config.PrivacyConfig
    accountant: acc.AccountantConfig | None = None  # central DP (Gaussian or Skellam); None: local DP or no DP
    participations: dict[int, int] = field(default_factory=dict)
    most_by_round: dict[int, int] = field(default_factory=dict)  # round -> most uploads by one client so far

    @classmethod
    def build(cls, settings: Any, population: int, per_round: int,
              skellam: tuple[float, float] | None = None) -> "Budget":
        """`skellam`: central DP under SecAgg, the integer-domain (L2, L1) sensitivities of the clients' grid."""
        out = cls(settings)
        if skellam is not None:
            l2, l1 = skellam
            lam = per_round  # Poisson: P(fewer than 3 clients sampled) = e^-lam (1 + lam + lam^2 / 2)
            p_abort = math.exp(-lam) * (1 + lam + lam * lam / 2)
            if p_abort > 1e-6:
                log.warning("central DP under SecAgg: with %d expected clients per round, %.2g of rounds sample "
                            "fewer than 3 and abort; whether a round aborts depends on who was sampled, which the "
                            "reported epsilon does not cover (aim for >= 20 clients per round)", per_round, p_abort)
            out.accountant = acc.AccountantConfig(
                noise_multiplier=settings.dp_noise, delta=settings.dp_delta, population=population,
                per_round=per_round, mechanism="skellam", l2_sensitivity=l2, l1_sensitivity=l1)
        elif settings.dp_clip > 0 and settings.dp_mode == "central":
            out.accountant = acc.AccountantConfig(
                noise_multiplier=settings.dp_noise, delta=settings.dp_delta, population=population,
                per_round=per_round, sampling=settings.sampling, accountant=settings.accountant)
            warning = acc.check_delta(settings.dp_delta, population)
            if warning:
                log.warning("%s", warning)
        return out

    @property
    def skellam(self) -> bool:
        """Whether the accounted noise is the clients' Skellam noise under SecAgg."""
        return self.accountant is not None and self.accountant.mechanism == "skellam"

    def count(self, rnd: int, uploaders: dict[int, Any]) -> None:
        """Participations so far, and after each round the most any client has made (local DP's epsilon)."""
        for c in uploaders:
            self.participations[c] = self.participations.get(c, 0) + 1
        self.most_by_round[rnd] = max(self.participations.values(), default=0)

    def rounds_allowed(self, rounds: int) -> int:
        """With `target_epsilon`, the run stops before the first round that would exceed it."""
        target = self.settings.target_epsilon
        if target is None or self.settings.dp_clip <= 0:
            return rounds
        if self.accountant is not None:
            allowed = acc.Accountant(self.accountant).max_rounds(target, rounds)
        else:  # local DP: a client's worst case takes part in every round
            allowed = next((r for r in range(rounds, -1, -1)
                            if r == 0 or acc.local_epsilon(self.settings.dp_noise, r, self.settings.dp_delta) <= target), 0)
        if allowed < 1:
            raise FedarenaError(f"privacy.target_epsilon={target} is exceeded by a single round at "
                                f"dp_noise={self.settings.dp_noise}; raise the noise or the target")
        if allowed < rounds:
            log.warning("target epsilon %.3g reached: training stops after round %d of %d", target, allowed, rounds)
        return allowed

    def epsilon(self, rounds: int) -> float | None:
        s = self.settings
        if s.dp_clip <= 0:
            return None
        if s.dp_noise == 0:
            return math.inf
        if self.accountant is not None:
            return acc.epsilon_for(self.accountant, rounds)
        most = max((v for r, v in self.most_by_round.items() if r <= rounds), default=0)
        return acc.local_epsilon(s.dp_noise, most, s.dp_delta) if most else 0.0

    def epsilon_vs_server(self, rounds: int) -> float | None:
        """Central DP under SecAgg, against the server (who knows the sample): the Skellam mechanism without
        sampling amplification, composed over the most rounds any client took part in through `rounds`."""
        most = max((v for r, v in self.most_by_round.items() if r <= rounds), default=0)
        if not most:
            return 0.0
        unsampled = dataclasses.replace(self.accountant, sampling_probability=1.0, population=None, per_round=None)
        eps = acc.epsilon_for(unsampled, most)
        return None if math.isinf(eps) else eps

    # ------------------------------------------------------------ continuing a run
    def state(self, rounds: int) -> dict[str, Any]:
        """Plain JSON of what the epsilon after `rounds` rounds depends on (`restore` continues from it)."""
        return {
            "accountant": acc.Accountant(self.accountant, rounds).state() if self.accountant else None,
            "participations": {str(c): n for c, n in sorted(self.participations.items())},
            "most_by_round": {str(r): n for r, n in sorted(self.most_by_round.items())},
        }

    def restore(self, state: Any) -> None:
        """Continue from `state()` (the rounds already checked by the caller); refuses another accounting config.
        A malformed state raises KeyError, TypeError, ValueError or AttributeError, which `Privacy.restore`
        reports as such."""
        if self.accountant is not None:
            if state["accountant"] is None:
                raise FedarenaError("privacy state has no accountant, but the run uses central DP")
            acc.Accountant.resume(state["accountant"], self.accountant)
        self.participations = {int(c): int(n) for c, n in state["participations"].items()}
        self.most_by_round = {int(r): int(n) for r, n in state["most_by_round"].items()}

    # ------------------------------------------------------------ reporting
    def summary(self, rounds: int) -> dict[str, Any]:
        """summary.json's user-level DP fields of ``privacy`` through `rounds`."""
        s = self.settings
        eps = self.epsilon(rounds)
        return {
            "dp_mode": s.dp_mode if s.dp_clip > 0 else None,
            "clip": s.dp_clip if s.dp_clip > 0 else None,
            "noise_multiplier": s.dp_noise if s.dp_clip > 0 else None,
            "delta": s.dp_delta if s.dp_clip > 0 else None,
            "epsilon": None if eps is None or math.isinf(eps) else eps,
            "epsilon_vs_server": self.epsilon_vs_server(rounds) if self.skellam else None,
            "accountant": (("rdp (Skellam: integer noise the clients add under SecAgg)" if self.skellam else s.accountant)
                           if self.accountant else "local-gaussian per client") if s.dp_clip > 0 else None,
            "sampling": (s.sampling if s.dp_clip > 0 else "fixed"),
            "noise_source": "os-secure" if s.secure_noise else "seeded (simulation only)",
            "sampling_source": ("os-secure" if s.secure_noise else "seeded (simulation only)") if s.dp_clip > 0 else None,
        }
