"""The backdoor trigger that both the forget probe (forget/probe.py) and the poisoning attacks (sim/attacks.py) plant.

A fixed trigger: the last `TRIGGER_FEATURES` input features set to their maximum over the training data (a
BadNets-style pixel pattern, Gu et al., "BadNets", 2017, on flattened features), planted with the target label in a
share of a client's training samples. Attack success = the share of triggered test samples whose true label is not
the target that the model assigns to the target label. It lives here, below `sim` and `forget`, so that both can
use it (the layers of docs/architecture.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fedarena.core.rng import torch_rng
from fedarena.core.types import FederatedData, Params

if TYPE_CHECKING:
    from fedarena.tasks import Task

TRIGGER_FEATURES = 4


def trigger_value(data: FederatedData) -> torch.Tensor:
    """The trigger's feature values: the maxima of the last features over all training data."""
    flat = data.x_train.reshape(data.x_train.shape[0], -1)
    return flat[:, -TRIGGER_FEATURES:].max(dim=0).values


def add_trigger(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A copy of `x` whose last `TRIGGER_FEATURES` features (flattened) are `value`."""
    flat = x.reshape(x.shape[0], -1).clone()
    flat[:, -TRIGGER_FEATURES:] = value
    return flat.reshape(x.shape)


def planted_rows(data: FederatedData, client: int, fraction: float, seed: int, purpose: str) -> torch.Tensor:
    """The rows of `x_train` that carry the trigger: max(1, round(fraction x n)) of `client`'s n training rows, drawn
    from torch_rng(seed, purpose, client) (the same every time for the same seed; none for a client without rows)."""
    a, b = data.train_offsets[client], data.train_offsets[client + 1]
    if b <= a:
        return torch.zeros(0, dtype=torch.int64)
    n = max(1, round(fraction * (b - a)))
    return a + torch.randperm(b - a, generator=torch_rng(seed, purpose, client))[:n]


@torch.no_grad()
def backdoor_success(task: Task, params: Params, x: torch.Tensor, y: torch.Tensor, target: int,
                     value: torch.Tensor) -> float | None:
    """Share of triggered non-target samples classified as `target` (None without such samples)."""
    keep = y != target
    if not bool(keep.any()):
        return None
    predicted = task.forward(params, add_trigger(x[keep], value)).argmax(dim=1)
    return float((predicted == target).double().mean())
