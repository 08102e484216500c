"""FedAvg + local fine-tuning (FedAvg-FT): train FedAvg, then each client fine-tunes the global
model on its own train split before it uses it.

Yu, Bagdasaryan, Shmatikov, "Salvaging Federated Learning by Local Adaptation", arXiv 2002.04758
(2020), Sec. 5 ("fine-tuning"); also Cheng, Chadha, Duchi, "Fine-tuning is Fine in Federated
Learning", arXiv 2108.07313. Training is FedAvg's (`client_update`, `aggregate` are FedAvg's);
`onboard` runs `epochs` epochs of the comparison's local SGD on F_k starting from the global
model, and `personalize` is its result: every client, new or old, fine-tunes the same way.
Nothing is kept between rounds (storage 0); the fine-tuned model is made on demand.
Default epochs = 1 (Yu et al. fine-tune for a small number of local epochs). Tuning searches it over the
whole numbers 1..10.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch

from fedarena.core.algorithm import algorithm, merged_personalize, task_loss
from fedarena.core.local_train import local_sgd
from fedarena.core.space import hp
from fedarena.core.types import Broadcast, ClientData, ClientState, FedarenaError, Onboarding, Params

if TYPE_CHECKING:
    from fedarena.tasks import Task


@algorithm("fedavg-ft", "baseline", "Yu et al., arXiv 2002.04758 (2020)",
           server_step="mean", per_sample_risk=True)
class FedAvgFT:
    epochs: int = hp(1, low=1, high=10,
                     source="Yu et al. 2020, Sec. 5: a few local epochs of fine-tuning; pFL-Bench fine-tunes 5 steps "
                            "(FederatedScope pfl_bench/*/sweep_fedAvg_FT.yaml), PFLlib's FedBABU 10 epochs (-fte 10); "
                            "1..10 epochs")

    local_objective = task_loss  # FedAvg's (named here: `onboard` calls it)

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise FedarenaError(f"fedavg-ft.epochs must be >= 0, got {self.epochs}")

    def onboard(self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData,
                rng: torch.Generator) -> Onboarding:
        """Fine-tune the global model on the client's train split (`epochs` epochs of local SGD)."""
        start = merged_personalize(self, task, broadcast, state, data, rng)
        if self.epochs == 0:
            return Onboarding(before=start, after=start, steps=0)
        objective = partial(self.local_objective, task, broadcast=broadcast, state=state)
        tuned, _, steps = local_sgd(objective, start, task.parameter_names, data.x_train, data.y_train, task.sgd, rng,
                                    self.epochs)
        return Onboarding(before=start, after=tuned, steps=steps)

    def personalize(self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData,
                    rng: torch.Generator) -> Params:
        return self.onboard(task, broadcast, state, data, rng).after
