"""How much of a client is left in a model: membership inference and a backdoor probe.

- Membership inference: the loss-threshold attack of Yeom et al., "Privacy Risk in Machine Learning:
  Analyzing the Connection to Overfitting" (CSF 2018): a sample is called a member when the model's loss
  on it is low. It needs no shadow model. Reported as the ROC AUC of the score -loss separating the
  forgotten client's training samples (members) from its own test samples (non-members, same
  distribution, never trained on): 0.5 = no membership signal left.
- Backdoor probe (`--forget-probe ID`): a fixed trigger (the last `TRIGGER_FEATURES` input features set to
  their maximum over the training data; data/backdoor.py, shared with the poisoning attacks of sim/attacks.py)
  is planted, with the target label, in a fraction of client ID's training samples before training. Attack
  success = the share of triggered test samples of the other clients, whose true label is not the target, that
  the model assigns to the target label. A model that forgot the client should lose the backdoor.
"""

from __future__ import annotations

import dataclasses

import torch

from fedarena.core.types import FedarenaError, FederatedData
from fedarena.data import backdoor
from fedarena.data.backdoor import TRIGGER_FEATURES, add_trigger, backdoor_success, trigger_value  # noqa: F401  (re-exported)
from fedarena.privacy.leakage import auc, mia_auc, sample_losses  # noqa: F401  (re-exported: the forget probes use them)


def plant(data: FederatedData, client: int, fraction: float, target: int, seed: int) -> FederatedData:
    """A copy of `data` in which `fraction` of `client`'s training samples carry the trigger and `target`."""
    if not 0 < fraction <= 1:
        raise FedarenaError(f"forget.probe_fraction must be in (0, 1], got {fraction}")
    if not 0 <= target < data.num_classes:
        raise FedarenaError(f"forget.probe_target must be a class in [0, {data.num_classes}), got {target}")
    rows = planted_rows(data, client, fraction, seed)
    x, y = data.x_train.clone(), data.y_train.clone()
    x[rows] = add_trigger(x[rows], trigger_value(data))
    y[rows] = target
    return dataclasses.replace(data, x_train=x, y_train=y)


def planted_rows(data: FederatedData, client: int, fraction: float, seed: int) -> torch.Tensor:
    """The rows of `x_train` that carry the trigger (the same every time for the same seed)."""
    return backdoor.planted_rows(data, client, fraction, seed, "forget-probe")
