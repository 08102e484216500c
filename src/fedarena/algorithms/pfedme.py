"""pFedMe: T. Dinh, Tran, Nguyen, "Personalized Federated Learning with Moreau Envelopes", NeurIPS 2020,
arXiv 2006.08848.

Each client's personal model is theta_i = argmin_theta f_i(theta) + lam/2 ||theta - w||^2, the proximal
point of its loss at the global w, whose value is the Moreau envelope F_i(w) (the bi-level problem of
Sec. 3). Algorithm 1, for a sampled client (`client_update`), from w_i = w^t and theta = w^t:
  for each local step: sample a batch D and
    theta   <- K gradient steps (learning rate `personal_lr`) on f_i(theta; D) + lam/2 ||theta - w_i||^2,
               warm-started at the previous theta as in the authors' code (`inner_objective`, solved by
               `local_sgd` with K full-batch epochs on D);
    w_i     <- w_i - eta lam (w_i - theta)  (a gradient step on the Moreau envelope, `moreau_step`);
  upload w_i; keep the last theta as the client's personal model (`personalize`: FedAvg's merge of w
  with the full theta).
The server sets w <- (1 - beta) w + beta * mean of the uploads (`aggregate`): the mean is FedAvg's
(weighted by train size; the paper averages uniformly, equal on balanced clients), so beta = 1 *is*
FedAvg's aggregation (tested bit for bit). `global_model` is w. A new client trains one round from the
downloaded w (`onboard`). With BatchNorm, w's statistics follow theta's (the forward passes are theta's).

The local steps ("R" in the paper) are the comparison's E epochs of batches of B: the outer loop
draws its batch order from the client's generator like `local_sgd`, and is written here because the
personal model theta must survive between steps; each inner solve goes through `local_sgd`.

Defaults from the paper's experiments (Sec. 5, MNIST, non-convex DNN: the authors' run command
`--personal_learning_rate 0.09 --beta 1 --lamda 15 --K 5`): lam = 15, K = 5, personal_lr = 0.09,
beta = 1. The local learning rate eta is the comparison's `train.lr`, not a field of its own: the paper
gives every algorithm of its comparison the same eta (0.005 for pFedMe, FedAvg and Per-FedAvg). Tuning
searches lam log-uniformly on [0.01, 100], K over 1..10, personal_lr log-uniformly on [1e-3, 0.5] and beta
uniformly on [0.5, 4].
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING

import torch

from fedarena.algorithms.ditto import keep_full_model
from fedarena.core.algorithm import Batch, algorithm, fedavg_aggregate, onboard_by_local_training
from fedarena.core.local_train import local_sgd
from fedarena.core.params import sq_distance
from fedarena.core.space import hp
from fedarena.core.types import SGD, Broadcast, ClientData, ClientState, FedarenaError, Params, ServerState, Upload

if TYPE_CHECKING:
    from fedarena.tasks import Task


@algorithm("pfedme", "personalized", "T. Dinh et al., NeurIPS 2020, arXiv 2006.08848",
           server_step="mean+optimizer", per_sample_risk=False,
           not_per_sample=("its inner problem adds lambda/2 ||theta - w||^2 (a Moreau envelope), not a per-sample "
                          "loss"))
class PFedMe:
    lam: float = hp(15.0, low=0.01, high=100.0, log=True,
                    source="T. Dinh et al. 2020, Sec. 5 and authors' code (CharlieDinh/pFedMe README, "
                           "main_plot_mnist.py): lam in {7, 10, 15, 20, 30}; pFL-Bench sweeps {0.05, 0.1, 0.2, 0.5} "
                           "(FederatedScope pfl_bench/*/sweep_pFedMe.yaml); widened to cover both, [0.01, 100]")
    K: int = hp(5, low=1, high=10,
                source="authors' code: K in {1, 5, 7} (main_plot_mnist.py, the effect of K), 5 in every comparison "
                       "run; pFL-Bench sweeps {1, 3}; widened to 1..10")
    personal_lr: float = hp(0.09, low=1e-3, high=0.5, log=True,
                            source="authors' code (README): personal_learning_rate in {0.01, 0.05, 0.09, 0.1}; "
                                   "PFLlib default 0.01 (-lrp); widened by a decade below and to 0.5 above")
    beta: float = hp(1.0, low=0.5, high=4.0,
                     source="authors' code (README): beta in {1, 2} in the comparisons and 4 for the effect of beta; "
                            "pFL-Bench keeps 1; widened below to 0.5 (a partial server step)")

    def __post_init__(self) -> None:
        for name in ("lam", "personal_lr", "beta"):
            if not getattr(self, name) > 0:
                raise FedarenaError(f"pfedme.{name} must be > 0, got {getattr(self, name)}")
        if self.K < 1:
            raise FedarenaError(f"pfedme.K must be >= 1, got {self.K}")

    init_client = keep_full_model  # theta_i: the client's personal model
    onboard = onboard_by_local_training

    def inner_objective(self, task: Task, params: Params, *, broadcast: Broadcast, state: ClientState, batch: Batch,
                        anchor: Params) -> torch.Tensor:
        """f_i(theta; D) + lam/2 ||theta - w_i||^2 over the trainable keys (the personalized problem)."""
        x, y = batch
        keys = [k for k in anchor if k in task.parameter_names]
        return task.loss(params, x, y) + 0.5 * self.lam * sq_distance(params, anchor, keys)

    def moreau_step(self, task: Task, w: Params, theta: Params, eta: float) -> Params:
        """w_i <- w_i - eta lam (w_i - theta) on the trainable keys; buffers are theta's."""
        return {k: w[k] - eta * self.lam * (w[k] - theta[k]) if k in task.parameter_names else theta[k] for k in w}

    def client_update(self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData,
                      rng: torch.Generator) -> tuple[Upload, ClientState]:
        w = theta = broadcast.params
        size, losses, steps = task.sgd.batch_size, [], 0
        for _ in range(task.sgd.epochs):
            order = torch.randperm(data.num_train, generator=rng).to(data.x_train.device)
            for start in range(0, data.num_train, size):
                idx = order[start : start + size]
                solve = partial(self.inner_objective, task, broadcast=broadcast, state=state, anchor=w)
                inner = SGD(epochs=self.K, batch_size=int(idx.shape[0]), lr=self.personal_lr)
                x, y = data.x_train[idx], data.y_train[idx]
                theta, loss, k = local_sgd(solve, theta, task.parameter_names, x, y, inner, rng)
                w = self.moreau_step(task, w, theta, task.sgd.lr)
                losses.append(loss)
                steps += k
        metrics = {"train_loss": sum(losses) / len(losses) if losses else float("nan"), "steps": steps}
        return Upload(params=w, num_samples=data.num_train, metrics=metrics), ClientState(params=theta)

    def aggregate(self, server: ServerState, uploads: Mapping[int, Upload]) -> ServerState:
        """w <- (1 - beta) w + beta * (FedAvg's mean of the uploads)."""
        mean = fedavg_aggregate(self, server, uploads)
        if mean.params is server.params:  # nothing uploaded
            return mean
        b = self.beta
        params = {k: ((1 - b) * w + b * mean.params[k]).to(w.dtype) for k, w in server.params.items()}
        return ServerState(params=params, round=mean.round, extra=mean.extra)
