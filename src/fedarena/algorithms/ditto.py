"""Ditto: Li, Hu, Beirami, Smith, "Ditto: Fair and Robust Federated Learning Through Personalization",
ICML 2021, arXiv 2012.04221.

Algorithm 1. A sampled client k, given the global model w^t:
- global update: E epochs of local SGD on F_k from w^t (FedAvg's `local_objective` and
  `sgd_client_update`), uploaded and averaged as FedAvg (`aggregate` *is* FedAvg's);
- personal update: the same number of SGD steps on h_k(v; w^t) = F_k(v) + lam/2 ||v - w^t||^2
  (eq. 2, `personal_objective`) from its personal model v_k, anchored at the received w^t.
v_k is the client's personal model (`personalize`, FedAvg's merge of w with the full v) and all the
state it keeps; `global_model` is w. `personal` is NOTHING: every key of w is shared, and v is a
second full model that never leaves the client. A new client starts v from the downloaded w and does
one round of the above (`onboard`).

Random numbers: both updates see the same minibatches in the same order, as in the authors' code
(one batch per local iteration, used for v and for w). The personal update draws its batch order
from the client's generator `rng`, exactly as `local` does; the global update from a copy of `rng`
taken before. Hence, same seed: lam = 0 gives `local`'s personal models bit for bit, and w is
FedAvg's model bit for bit for every lam (both tested).

Defaults: lam = 1, the value of the authors' run scripts for clean (attack-free) data
(`run_fashion_clean_ditto_lam1.sh`, `run_vehicle_clean_ditto_lam1.sh`) and the fixed lam the paper
uses outside strong attacks (Sec. 5 / App. C; per-client tuning picks from {0.1, 1, 2}). The personal
update uses the comparison's local SGD (E, B, learning rate), as the authors' code uses one learning
rate and one number of local iterations for both updates.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from fedarena.core.algorithm import Batch, algorithm, onboard_by_local_training, sgd_client_update, task_loss
from fedarena.core.local_train import local_sgd
from fedarena.core.params import sq_distance
from fedarena.core.space import hp
from fedarena.core.types import Broadcast, ClientData, ClientState, FedarenaError, Params, Upload

if TYPE_CHECKING:
    from fedarena.tasks import Task


def keep_full_model(self: Any, params: Params) -> ClientState:
    """The client's own full model starts as the initial model (a new client: the downloaded one)."""
    return ClientState(params=dict(params))


def same_stream(rng: torch.Generator) -> torch.Generator:
    """A generator in `rng`'s current state: it draws the numbers `rng` will draw next."""
    copy = torch.Generator()
    copy.set_state(rng.get_state())
    return copy


@algorithm("ditto", "personalized", "Li et al., ICML 2021, arXiv 2012.04221",
           server_step="mean", per_sample_risk=False,
           not_per_sample=("its personal objective adds lambda/2 ||v - w||^2, a parameter-dependent term whose "
                          "gradient is not per-sample"))
class Ditto:
    lam: float = hp(1.0, low=1e-3, high=10.0, log=True,
                    source="Li et al. 2021, Sec. 5 / App. C: lam in {0.01, 0.1, 1, 2} (per-client tuning from {0.1, 1, 2}); "
                           "widened on a log scale for other budgets")

    def __post_init__(self) -> None:
        if not self.lam >= 0:
            raise FedarenaError(f"ditto.lam must be >= 0, got {self.lam}")

    init_client = keep_full_model
    onboard = onboard_by_local_training

    def personal_objective(self, task: Task, params: Params, *, broadcast: Broadcast, state: ClientState,
                           batch: Batch) -> torch.Tensor:
        """h_k(v; w^t) = F_k(v) + lam/2 ||v - w^t||^2 over the trainable keys (eq. 2)."""
        loss = task_loss(self, task, params, broadcast=broadcast, state=state, batch=batch)
        if self.lam == 0:
            return loss
        keys = [k for k in broadcast.params if k in task.parameter_names]
        return loss + 0.5 * self.lam * sq_distance(params, broadcast.params, keys)

    def client_update(self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData,
                      rng: torch.Generator) -> tuple[Upload, ClientState]:
        """Algorithm 1 for one client: personal update of v_k (kept), global update of w^t (uploaded)."""
        global_batches = same_stream(rng)
        personal = partial(self.personal_objective, task, broadcast=broadcast, state=state)
        v, _, _ = local_sgd(personal, state.params, task.parameter_names, data.x_train, data.y_train, task.sgd, rng)
        upload, _ = sgd_client_update(self, task, broadcast, ClientState(), data, global_batches)
        return upload, ClientState(params=v)
