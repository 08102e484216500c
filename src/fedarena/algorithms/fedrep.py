"""FedRep: Collins, Hassani, Mokhtari, Shakkottai, "Exploiting Shared Representations for Personalized
Federated Learning", ICML 2021, arXiv 2102.07078.

Clients share a representation phi (the `body`, averaged by the server) and each keeps its own head
h_i (Sec. 3). One round of Algorithm 1 for client i (`client_update`):
  1. head update: from h_i and the downloaded phi^t, tau_h epochs of SGD on the head only, phi frozen
     (`_phase` over the personal keys; Algorithm 1's tau local updates of h_i);
  2. representation update: from the new head, the comparison's E epochs of SGD on phi only, the
     head frozen (`_phase` over the shared keys);
  3. keep h_i, send phi_i^{t+1}; the server sets phi^{t+1} = sum_i (n_i / n) phi_i^{t+1}
     (`aggregate` *is* FedAvg's; the paper averages uniformly over the sampled clients, equal on
     balanced clients).
A client's model is phi^{t+1} with its own head (`personalize`, FedAvg's merge). A new client fits
a head for the downloaded representation with it frozen (`onboard`: step 1 only), as in the paper's
experiment on new clients (Sec. 5): only the head is learned, so a new client costs tau_h epochs.

Hyperparameters:
- `tau_h = 10` head epochs per round: the paper's experiments train the head for 10 local epochs and
  the representation for 1 (Sec. 5 and its appendix); the authors' code defaults agree
  (`--local_ep 11 --local_rep_ep 1`: the first 10 of 11 epochs train the head only). Epochs, not
  steps: Algorithm 1 writes tau local updates, the experiments and code count them in epochs. Tuning
  searches tau_h over the whole numbers 1..20.
- representation epochs: the comparison's `train.local_epochs` (default 1, the paper's value), so
  the shared part gets the same local work as under FedAvg.
- `personal_layers = ("head.*",)`: the head. With `personal_layers = ()` there is no head to train,
  step 1 is skipped (no key to train: it draws no random numbers and runs no forward pass) and step
  2 is FedAvg's local SGD on every key, so FedRep *is* FedAvg bit for bit, for any tau_h (tested).
  tau_h = 0 alone is not FedAvg: the head is then never trained (it stays at its initial value).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch

from fedarena.algorithms.fedper import global_if_nothing_personal, init_client_checked, layer_filter, setup_layers
from fedarena.core.algorithm import algorithm, merged_personalize, task_loss
from fedarena.core.local_train import local_sgd
from fedarena.core.params import merge, split
from fedarena.core.space import hp
from fedarena.core.types import Broadcast, ClientData, ClientState, FedarenaError, Onboarding, Params, Upload

if TYPE_CHECKING:
    from fedarena.tasks import Task


def _mean_loss(*phases: tuple[float, int]) -> float:
    """Step-weighted mean loss over the phases that took steps (a single phase's loss as it is)."""
    ran = [(loss, n) for loss, n in phases if n]
    if len(ran) == 1:
        return ran[0][0]
    return sum(loss * n for loss, n in ran) / sum(n for _, n in ran) if ran else float("nan")


@algorithm("fedrep", "personalized", "Collins et al., ICML 2021, arXiv 2102.07078",
           server_step="mean", per_sample_risk=True)
class FedRep:
    tau_h: int = hp(10, low=1, high=20,
                    source="Collins et al. 2021, Sec. 5: 10 head epochs (authors' code --local_ep 11 --local_rep_ep 1); "
                           "PFLlib's default 1 (--plocal_epochs); widened to 1..20")
    personal_layers: tuple[str, ...] = ("head.*",)

    def __post_init__(self) -> None:
        setup_layers(self)
        if self.tau_h < 0:
            raise FedarenaError(f"fedrep.tau_h must be >= 0, got {self.tau_h}")

    personal = property(layer_filter)
    init_client = init_client_checked
    local_objective = task_loss  # FedAvg's (named here: `_phase` calls it)
    global_model = global_if_nothing_personal

    def _phase(self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData, rng: torch.Generator,
               params: Params, head: bool, epochs: int) -> tuple[Params, float, int]:
        """`epochs` epochs of local SGD on the head keys (head=True) or the representation keys only;
        skipped (no step, no random draw) when there is nothing to train."""
        keys = [k for k in task.parameter_names if self.personal(k) == head]
        if not keys or epochs == 0:
            return params, float("nan"), 0
        objective = partial(self.local_objective, task, broadcast=broadcast, state=state)
        return local_sgd(objective, params, keys, data.x_train, data.y_train, task.sgd, rng, epochs)

    def client_update(self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData,
                      rng: torch.Generator) -> tuple[Upload, ClientState]:
        """Algorithm 1, one round: head with phi frozen, then phi with the head frozen; upload phi."""
        start = merge(broadcast.params, state.params)
        fitted, head_loss, head_steps = self._phase(task, broadcast, state, data, rng, start, True, self.tau_h)
        trained, rep_loss, rep_steps = self._phase(task, broadcast, state, data, rng, fitted, False, task.sgd.epochs)
        shared, mine = split(trained, self.personal)
        loss = _mean_loss((head_loss, head_steps), (rep_loss, rep_steps))
        metrics = {"train_loss": loss, "steps": head_steps + rep_steps}
        upload = Upload(params=shared, num_samples=data.num_train, metrics=metrics)
        return upload, ClientState(params=mine, extra=state.extra)

    def onboard(self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData,
                rng: torch.Generator) -> Onboarding:
        """A new client fits its head (tau_h epochs) for the downloaded representation, kept frozen."""
        before = merged_personalize(self, task, broadcast, state, data, rng)
        fitted, _, steps = self._phase(task, broadcast, state, data, rng, before, True, self.tau_h)
        return Onboarding(before=before, after=merge(broadcast.params, split(fitted, self.personal)[1]), steps=steps)
