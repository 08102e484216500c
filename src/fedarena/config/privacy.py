"""The `[privacy]` section: secure aggregation and differential privacy settings and their checks.

Split from the config module, which re-exports `PrivacyConfig`; it imports nothing from it (the checks get the
whole config as an argument).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedarena.config import Config


@dataclass(frozen=True)
class PrivacyConfig:
    """Secure aggregation and differential privacy (src/fedarena/privacy/round.py); all off by default."""

    dp_clip: float = 0.0  # C: L2 clip of each client update; 0 = DP off
    dp_noise: float = 0.0  # z: noise multiplier (std = z * C)
    dp_delta: float = 1e-5
    dp_mode: str = "central"  # central (trusted server adds noise) | local (each client adds noise)
    target_epsilon: float | None = None  # stop before the first round that would exceed it
    sampling: str = "poisson"  # poisson (DP-FedAvg) | fixed (clients_per_round each round)
    accountant: str = "rdp"  # rdp | pld (dp-accounting)
    secure_noise: bool = False  # True: noise from the OS's secure generator; False: seeded (simulation only)
    secagg: bool = False
    secagg_threshold: int = 0  # t of n survivors needed; 0 = n // 2 + 1
    secagg_neighbours: int = 0  # SecAgg+ graph degree k (even); 0 = complete graph (SecAgg)
    secagg_bits: int = 32  # modulus 2^bits of the masked sum
    secagg_clip: float = 10.0  # fixed-point range of each update coordinate (values beyond are clipped)
    sgd_noise: float = 0.0  # DP-SGD's sigma (sample-level DP of local training, privacy/dpsgd.py); 0 = off
    sgd_clip: float = 0.0  # DP-SGD's per-sample L2 clip C (> 0 when sgd_noise > 0)


def privacy_checks(config: Config) -> list[tuple[bool, str]]:
    """The `[privacy]` section's checks that need no data, as (ok, message) pairs for `config.validate`."""
    return [
        (config.privacy.dp_clip >= 0 and config.privacy.dp_noise >= 0,
         "privacy.dp_clip and privacy.dp_noise must be >= 0"),
        (config.privacy.dp_clip > 0 or config.privacy.dp_noise == 0,
         "privacy.dp_noise needs privacy.dp_clip > 0 (the noise is calibrated to the clip)"),
        (0 < config.privacy.dp_delta < 1, f"privacy.dp_delta must be in (0, 1), got {config.privacy.dp_delta}"),
        (config.privacy.dp_mode in ("central", "local"), "privacy.dp_mode must be central or local"),
        (config.privacy.sampling in ("poisson", "fixed"), "privacy.sampling must be poisson or fixed"),
        (config.privacy.accountant in ("rdp", "pld"), "privacy.accountant must be rdp or pld"),
        (not (config.privacy.sampling == "fixed" and config.privacy.accountant == "pld"),
         "privacy.accountant=pld cannot account fixed-size sampling; use rdp"),
        (config.privacy.target_epsilon is None or config.privacy.target_epsilon > 0,
         "privacy.target_epsilon must be > 0"),
        (config.privacy.target_epsilon is None or config.privacy.dp_clip > 0,
         "privacy.target_epsilon needs DP on (privacy.dp_clip > 0)"),
        (not config.privacy.secagg or config.train.clients_per_round is None or config.train.clients_per_round >= 3,
         "privacy.secagg needs train.clients_per_round >= 3 (a sum of fewer reveals too much)"),
        (config.privacy.secagg_bits in (16, 24, 32, 48, 64) or 8 <= config.privacy.secagg_bits <= 64,
         "privacy.secagg_bits must be in [8, 64]"),
        (config.privacy.secagg_clip > 0, "privacy.secagg_clip must be > 0"),
        (config.privacy.secagg_neighbours >= 0 and config.privacy.secagg_neighbours % 2 == 0,
         "privacy.secagg_neighbours must be an even number >= 0 (SecAgg+ Harary graph)"),
        (config.privacy.secagg_threshold >= 0, "privacy.secagg_threshold must be >= 0"),
        (config.train.clients_per_round is None or config.privacy.secagg_threshold <= config.train.clients_per_round,
         (f"privacy.secagg_threshold ({config.privacy.secagg_threshold}) exceeds train.clients_per_round "
          f"({config.train.clients_per_round})")),
        (not config.privacy.secagg_neighbours or config.privacy.secagg_threshold <= config.privacy.secagg_neighbours + 1,
         "privacy.secagg_threshold must be <= secagg_neighbours + 1 (a client's SecAgg+ neighbourhood)"),
        (config.privacy.sgd_noise >= 0 and config.privacy.sgd_clip >= 0,
         "privacy.sgd_noise and privacy.sgd_clip must be >= 0"),
        (config.privacy.sgd_noise == 0 or config.privacy.sgd_clip > 0,
         "privacy.sgd_noise (DP-SGD) needs privacy.sgd_clip > 0 (the noise is calibrated to the per-sample clip)"),
        (config.privacy.sgd_clip == 0 or config.privacy.sgd_noise > 0,
         "privacy.sgd_clip needs privacy.sgd_noise > 0 (DP-SGD is on when its noise is)"),
    ]


def check_secagg_capacity(config: Config) -> None:
    """The masked sum of every client must fit secure aggregation's modulus (known once data.num_clients is)."""
    d = config.data
    if config.privacy.secagg and d.num_clients is not None:  # the masked sum of every client must fit the modulus
        from fedarena.privacy.fixedpoint import check_capacity

        check_capacity(d.num_clients, max(config.privacy.secagg_clip, 1.0), config.privacy.secagg_bits)
