"""The `[attack]` and `[robust]` sections: a simulated poisoning attack and the server's robust aggregation rule.

`[attack]` (sim/attacks.py has the attacks and their papers): `kind` none | label-flip | sign-flip | scale |
gaussian | alie | backdoor, run by a share `malicious` of the training clients. `[robust]` (core/robust.py has the
rules and their papers): `aggregator` mean | median | trimmed-mean | krum | multi-krum | bulyan | centered-clip, for
every algorithm whose server step is a weighted mean of the uploads (`server_step` in MEAN_STEPS), and `f`, the
attackers per round it must tolerate. Split from the config module, which re-exports the two sections; it imports
nothing from it (the checks get the whole config as an argument).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedarena.core import robust
from fedarena.core.algorithm import MEAN_STEPS
from fedarena.core.types import FedarenaError
from fedarena.sim import attacks

if TYPE_CHECKING:
    from fedarena.config import Config

NO_ATTACK = "none"


@dataclass(frozen=True)
class AttackConfig:
    """A simulated poisoning attack (off by default); defaults are sim/attacks.py's, cited there."""

    kind: str = NO_ATTACK  # none | one of sim/attacks.KINDS
    malicious: float = 0.2  # share of the training clients that attack (round(malicious x clients) of them)
    scale: float | None = None  # sign-flip's s (unset: 4); scale's boost gamma (unset: model replacement's N / (f n_k))
    sigma: float = attacks.GAUSSIAN_SIGMA  # gaussian's standard deviation
    target: int = 0  # backdoor and scale: the backdoor's target label
    fraction: float = attacks.BACKDOOR_FRACTION  # backdoor and scale: share of a malicious client's samples triggered

    @property
    def on(self) -> bool:
        return self.kind != NO_ATTACK

    def attack(self) -> attacks.Attack:
        return attacks.Attack(self.kind, self.malicious, self.scale, self.sigma, self.target, self.fraction)


@dataclass(frozen=True)
class RobustConfig:
    """The server's aggregation rule (mean by default); defaults are core/robust.py's, cited there."""

    aggregator: str = "mean"  # one of core/robust.AGGREGATORS
    f: int | None = None  # attackers per round to tolerate; unset: round(attack.malicious x clients_per_round), 0 without
    beta: float = robust.RobustRule.beta  # trimmed-mean: share trimmed at each end
    m: int | None = None  # multi-krum: uploads averaged (unset: n - f)
    tau: float = robust.RobustRule.tau  # centered-clip: clipping radius (norm of one client's update)
    iterations: int = robust.RobustRule.iterations  # centered-clip: clipping iterations

    @property
    def on(self) -> bool:
        return self.aggregator != "mean"


def tolerated(config: Config) -> int:
    """`robust.f`, or where unset the attackers a round is expected to hold: round(attack.malicious x
    train.clients_per_round) under an attack (0 until clients_per_round is known), else 0."""
    if config.robust.f is not None:
        return config.robust.f
    per_round = config.train.clients_per_round
    return round(config.attack.malicious * per_round) if config.attack.on and per_round else 0


def rule(config: Config) -> robust.RobustRule:
    """The robust rule of `config`, its `f` resolved (`tolerated`)."""
    r = config.robust
    return robust.RobustRule(r.aggregator, tolerated(config), r.beta, r.m, r.tau, r.iterations)


def _private_round(config: Config) -> str:
    """What makes rounds private (the private round aggregates itself, privacy/round.py), or ""."""
    p = config.privacy
    return "secure aggregation (privacy.secagg)" if p.secagg else "DP-FedAvg (privacy.dp_clip > 0)" if p.dp_clip > 0 else ""


def robust_checks(config: Config) -> list[tuple[bool, str]]:
    """The `[attack]` and `[robust]` sections' checks that need no data, as (ok, message) pairs for `config.validate`."""
    a, r, private = config.attack, config.robust, _private_round(config)
    checks = [
        (a.kind == NO_ATTACK or a.kind in attacks.KINDS,
         f"unknown attack.kind '{a.kind}'; valid: {', '.join((NO_ATTACK, *attacks.KINDS))}"),
        (r.aggregator in robust.AGGREGATORS,
         f"unknown robust.aggregator '{r.aggregator}'; valid: {', '.join(robust.AGGREGATORS)}"),
        (r.f is None or r.f >= 0, f"robust.f must be >= 0, got {r.f}"),
        (0 <= r.beta < 0.5, f"robust.beta must be in [0, 0.5), got {r.beta}"),
        (r.m is None or r.m >= 1, f"robust.m must be >= 1, got {r.m}"),
        (r.tau > 0, f"robust.tau must be > 0, got {r.tau}"),
        (r.iterations >= 1, f"robust.iterations must be >= 1, got {r.iterations}"),
        (not (r.on and private),
         f"robust.aggregator={r.aggregator} needs each client's update, but under {private} the server sees only "
         "their (noised) sum or mean; use robust.aggregator=mean"),
        (not (a.on and private),
         f"attack.kind={a.kind} is simulated on plain uploads; it does not run under {private}"),
    ]
    if r.on:
        from fedarena.algorithms import REGISTRY

        for name in config.run.algorithms:
            algo = REGISTRY.get(name)
            if algo is not None and algo.communicates and algo.server_step not in MEAN_STEPS:
                checks.append((False, f"robust.aggregator={r.aggregator} replaces a weighted mean of the uploads, but "
                                      f"{name}'s server step is '{algo.server_step}' (it needs each client's upload); "
                                      f"drop {name} or use robust.aggregator=mean"))
    if a.on:
        try:
            attacks.check(a.attack())
        except FedarenaError as exc:  # naming the key
            checks.append((False, str(exc)))
    if r.on and config.train.clients_per_round is not None:
        try:
            robust.check(rule(config), config.train.clients_per_round)
        except FedarenaError as exc:  # names the rule, n, f and the paper's condition
            checks.append((False, f"{exc} (train.clients_per_round)"))
    return checks
