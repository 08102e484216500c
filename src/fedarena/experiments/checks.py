"""What a comparison refuses before any training (or, on Flower, before any process starts)."""

from __future__ import annotations

from fedarena import config as cfg
from fedarena.core.types import FedarenaError
from fedarena.flower import common
from fedarena.privacy import checks as privacy_checks


def check_privacy(config: cfg.Config, names: list[str] | None = None) -> None:
    """Refuse impossible privacy settings before any training."""
    for name in names if names is not None else config.run.algorithms:
        privacy_checks.check(config.privacy, cfg.hyperparameters(config, name), config.model)


def check_before_start(config: cfg.Config) -> None:
    """Refuse, before any process starts, what the ServerApp would refuse: privacy settings that cannot hold
    together (as `compare` does) for the algorithms that run on Flower (those that federate), and per-round
    client-state snapshots (`forget.keep = all`), which would have to leave the nodes."""
    if config.forget.keep == "all":
        raise FedarenaError(NO_SNAPSHOTS)
    check_no_attack(config, "on Flower")
    check_privacy(config, [n for n in config.run.algorithms if common.federates(cfg.hyperparameters(config, n))])


def check_no_attack(config: cfg.Config, where: str) -> None:
    """Attacks are simulated in this process (sim/attacks.py): a deployment's nodes run honest clients only."""
    if config.attack.on:
        raise FedarenaError(f"attack.kind={config.attack.kind} is simulated by the in-process engines (reference, "
                            f"vectorized) only, not {where}; robust.aggregator works everywhere")


NO_SNAPSHOTS = ("forget.keep=all keeps every client's state after every round; on Flower those states stay on the "
                "nodes: use forget.keep=server (the server's checkpoints, kept where the ServerApp runs)")
