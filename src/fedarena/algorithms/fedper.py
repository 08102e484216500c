"""FedPer: Arivazhagan, Aggarwal, Singh, Choudhary, "Federated Learning with Personalization Layers",
arXiv 1912.00818 (2019).

The model is split into base layers, shared and averaged by the server, and personalization layers,
which never leave the client (Sec. 3). Client side: start from the downloaded base layers W_B and
the client's own personalization layers W_P, run E epochs of minibatch SGD on both with the client's
loss, keep W_P and send W_B back (`client_update` *is* FedAvg's `sgd_client_update`, which splits
the trained model by the personal keys). Server side: W_B <- sum_j (n_j / n) W_B,j, FedAvg's
weighted average over the base layers only (`aggregate` *is* FedAvg's). A client's model is the
current base with its own personalization layers on top (`personalize`, FedAvg's merge).

Hyperparameters:
- `personal_layers = ("head.*",)`: the personalization layers as glob patterns over state-dict keys.
  The paper varies their number K_P (Sec. 4); here the default is the classifier (the `head`), the
  FedPer baseline of Collins et al. 2021 (FedRep, Sec. 5) and of most pFL benchmarks. With
  `personal_layers = ()` nothing is personal and FedPer *is* FedAvg (tested bit for bit).
- E, B and the learning rate are the comparison's local SGD settings.

No full global model exists (the server has no head): `global_model` is None, except with an empty
personal set, where the server's model is FedAvg's. A new client downloads the base, starts from
fresh personalization layers and does one round's local training (`onboard_by_local_training`).

This file also holds the small plain functions the personalization-layer family (FedPer, LG-FedAvg,
FedRep, FedBN) share: a personal key set given by a hyperparameter, and a once-per-run warning when
the personal patterns match no key of the model (then the algorithm silently is FedAvg).
"""

from __future__ import annotations

import logging
from typing import Any

from fedarena.core.algorithm import algorithm, init_client_personal, onboard_by_local_training
from fedarena.core.types import ClientState, FedarenaError, KeyFilter, Params, ServerState

log = logging.getLogger(__name__)


def setup_layers(self: Any) -> None:
    """Validate `personal_layers` (when the algorithm has it) and start the once-per-run warning memo
    (an algorithm object is made per run; the memo is not a hyperparameter)."""
    layers = getattr(self, "personal_layers", ())
    if not isinstance(layers, tuple) or not all(isinstance(p, str) and p.strip() for p in layers):
        raise FedarenaError(f"{self.name}.personal_layers must be a list of non-empty glob patterns, got {layers!r}")
    object.__setattr__(self, "_warned", [])


def layer_filter(self: Any) -> KeyFilter:
    """The personal keys: the `personal_layers` hyperparameter as a key filter."""
    return KeyFilter(self.personal_layers)


def init_client_checked(self: Any, params: Params, hint: str = "") -> ClientState:
    """FedAvg's `init_client_personal` (the client keeps the initial model's personal keys), logging a
    warning once per run when personal patterns are given but match no key of the model."""
    patterns = self.personal.patterns
    if patterns and not self._warned and not any(self.personal(k) for k in params):
        self._warned.append(True)
        log.warning("%s: the personal keys %s match no key of this model, so %s is plain FedAvg here%s",
                    self.name, list(patterns), self.name, hint)
    return init_client_personal(self, params)


def global_if_nothing_personal(self: Any, server: ServerState) -> Params | None:
    """No full global model while some keys are personal; with none, the server's model is FedAvg's."""
    return None if self.personal.patterns else server.params


@algorithm("fedper", "personalized", "Arivazhagan et al., arXiv 1912.00818 (2019)",
           server_step="mean", per_sample_risk=True)
class FedPer:
    personal_layers: tuple[str, ...] = ("head.*",)

    def __post_init__(self) -> None:
        setup_layers(self)

    personal = property(layer_filter)
    init_client = init_client_checked
    onboard = onboard_by_local_training
    global_model = global_if_nothing_personal
