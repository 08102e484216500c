"""FedProx: Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in Heterogeneous
Networks", MLSys 2020, arXiv 1812.06127.

Each client approximately minimizes h_k(w; w^t) = F_k(w) + (mu/2) ||w - w^t||^2 (eq. 2), the
proximal term keeping local models near the broadcast global model w^t (`local_objective`); the
server averages as FedAvg (Algorithm 2 reuses FedAvg's aggregation: `aggregate` *is* FedAvg's).
Inexact local solves are E epochs of SGD, as in the paper's experiments.

Default mu = 0.01: the paper tunes mu per data set over {0.001, 0.01, 0.1, 1} (Sec. 5.3 and
Appendix C.3); 0.01 is from that grid (the one chosen for Sent140) and a common default
elsewhere. mu = 0 is FedAvg exactly (tested bit for bit). Tuning searches mu log-uniformly on [1e-4, 10],
the paper's grid widened by a decade on each side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fedarena.core.algorithm import Batch, algorithm, task_loss
from fedarena.core.params import sq_distance
from fedarena.core.space import hp
from fedarena.core.types import Broadcast, ClientState, FedarenaError, Params

if TYPE_CHECKING:
    from fedarena.tasks import Task


@algorithm("fedprox", "global", "Li et al., MLSys 2020, arXiv 1812.06127",
           server_step="mean", per_sample_risk=False,
           not_per_sample=("its local objective adds (mu/2) ||w - w^t||^2, a parameter-dependent term whose gradient "
                          "is not per-sample"))
class FedProx:
    mu: float = hp(0.01, low=1e-4, high=10.0, log=True,
                   source="Li et al. 2020, Sec. 5.3 / App. C.3: mu in {0.001, 0.01, 0.1, 1}; "
                          "widened by a decade on each side for other budgets")

    def __post_init__(self) -> None:
        if self.mu < 0:
            raise FedarenaError(f"fedprox.mu must be >= 0, got {self.mu}")

    def local_objective(self, task: Task, params: Params, *, broadcast: Broadcast, state: ClientState,
                        batch: Batch) -> torch.Tensor:
        """h_k(w; w^t) = F_k(w) + mu/2 ||w - w^t||^2  (eq. 2)."""
        loss = task_loss(self, task, params, broadcast=broadcast, state=state, batch=batch)
        if self.mu == 0:
            return loss
        return loss + 0.5 * self.mu * sq_distance(params, broadcast.params, broadcast.params.keys())
