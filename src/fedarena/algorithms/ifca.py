"""IFCA: Ghosh, Chung, Yin, Ramchandran, "An Efficient Framework for Clustered Federated Learning",
NeurIPS 2020, arXiv 2006.04088.

Algorithm 1 (IFCA) with the model-averaging option and Algorithm 2 (LocalUpdate). The server keeps k
cluster models theta_1..theta_k and broadcasts all of them (`broadcast`: keys `cluster<j>/<key>`, so the
ledger counts k models down). A sampled client estimates its cluster j = argmin_j F_i(theta_j), its
empirical loss on its own train split (`estimate`), runs the comparison's local SGD from theta_j
(`client_update`: FedAvg's objective, through `local_sgd`) and uploads the trained model plus j as an
int64 tensor (one model up). The server averages each cluster's uploads (`aggregate`, weighted by train
size like FedAvg; the paper averages uniformly); a cluster nobody chose keeps its model.

Personal state: the client's cluster identity (8 bytes in `ClientState.extra`). `personalize` returns
the model of that cluster; a client without one (never sampled, or new) estimates it first, which is
also how a new client onboards (`onboard`: k forward passes over its train split, no SGD).
`global_model` is None: there is no single global model; the k cluster models are the shared part.

Initialization: the engine gives one initial model (shared by every algorithm of a comparison), which
becomes theta_1 unchanged (so k = 1 is FedAvg bit for bit; tested). The paper initializes the clusters
independently at random; theta_2..theta_k are drawn here without knowing the task by shuffling the
entries of each tensor of the initial model with a generator seeded by `init_seed`. Shuffling an
i.i.d.-initialized tensor gives another draw from the same distribution (PyTorch's default uniform
init), and leaves constant tensors (BatchNorm weights, biases, statistics) as they are.

Defaults: k = 3, the setting of the paper's FEMNIST experiment (its real-data benchmark without planted
clusters; the rotated MNIST/CIFAR-10 experiments set k to the number of planted rotations, 4 and 2).
init_seed = 0 (any fixed value: it only picks the shuffles). Tuning searches k over the whole numbers 1..10.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

import torch

from fedarena.core.algorithm import algorithm, fedavg_aggregate, onboard_without_training, task_loss
from fedarena.core.local_train import local_sgd
from fedarena.core.space import hp
from fedarena.core.types import Broadcast, ClientData, ClientState, FedarenaError, Params, ServerState, Upload
from fedarena.tasks import evaluate

if TYPE_CHECKING:
    from fedarena.tasks import Task

CLUSTER = "cluster"


def pack(models: Sequence[Params]) -> Params:
    """k models -> one Params with keys `cluster<j>/<key>`."""
    return {f"{CLUSTER}{j}/{k}": v for j, model in enumerate(models) for k, v in model.items()}


def shuffled(tensor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The tensor's entries in a random order (same shape, dtype and multiset of values)."""
    order = torch.randperm(tensor.numel(), generator=generator)
    return tensor.reshape(-1)[order].reshape(tensor.shape)


@algorithm("ifca", "personalized", "Ghosh et al., NeurIPS 2020, arXiv 2006.04088",
           server_step="custom", per_sample_risk=False,
           not_per_sample=("it chooses its cluster from the losses of every cluster model on the whole train split, "
                          "a data-dependent release outside DP-SGD"))
class IFCA:
    k: int = hp(3, low=1, high=10,
                source="Ghosh et al. 2020, experiments: k = 4 (rotated MNIST), 2 (rotated CIFAR-10), 3 (FEMNIST); "
                       "widened to 1..10 (k = 1 is FedAvg)")
    init_seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise FedarenaError(f"ifca.k must be >= 1, got {self.k}")

    def init_server(self, shared_params: Params) -> ServerState:
        g = torch.Generator().manual_seed(self.init_seed)
        others = [{key: shuffled(v, g) for key, v in shared_params.items()} for _ in range(self.k - 1)]
        return ServerState(params=pack([dict(shared_params), *others]))

    def models(self, params: Params) -> list[Params]:
        """`cluster<j>/<key>` Params -> [theta_1, ..., theta_k]."""
        out: list[Params] = [{} for _ in range(self.k)]
        for name, v in params.items():
            j, _, key = name.removeprefix(CLUSTER).partition("/")
            out[int(j)][key] = v
        return out

    def estimate(self, task: Task, models: Sequence[Params], data: ClientData) -> int:
        """j = argmin_j F_i(theta_j) on the client's train split (Alg. 1, cluster identity estimate)."""
        losses = [evaluate(task, theta, data.x_train, data.y_train)[1] for theta in models]
        return min(range(len(models)), key=losses.__getitem__)

    local_objective = task_loss  # FedAvg's (named here: `client_update` calls it)

    def client_update(self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData,
                      rng: torch.Generator) -> tuple[Upload, ClientState]:
        models = self.models(broadcast.params)
        j = self.estimate(task, models, data)
        mine = ClientState(params=state.params, extra={CLUSTER: torch.tensor(j, dtype=torch.int64)})
        objective = partial(self.local_objective, task, broadcast=broadcast, state=mine)
        trained, loss, steps = local_sgd(
            objective, models[j], task.parameter_names, data.x_train, data.y_train, task.sgd, rng)
        upload = Upload(params=trained, num_samples=data.num_train, extra=mine.extra,
                        metrics={"train_loss": loss, "steps": steps})
        return upload, mine

    def aggregate(self, server: ServerState, uploads: Mapping[int, Upload]) -> ServerState:
        """theta_j <- the train-size-weighted mean of the models uploaded for cluster j (model averaging)."""
        models = self.models(server.params)
        groups: list[dict[int, Upload]] = [{} for _ in range(self.k)]
        for cid, u in uploads.items():
            j = int(u.extra[CLUSTER]) if CLUSTER in u.extra else -1
            if not 0 <= j < self.k:
                raise FedarenaError(f"ifca: client {cid} uploaded cluster {j}, expected 0..{self.k - 1}")
            groups[j][cid] = u
        for j, group in enumerate(groups):
            if group:
                models[j] = fedavg_aggregate(self, ServerState(params=models[j]), group).params
        return ServerState(params=pack(models), round=server.round + 1, extra=server.extra)

    def personalize(self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData,
                    rng: torch.Generator) -> Params:
        models = self.models(broadcast.params)
        j = int(state.extra[CLUSTER]) if CLUSTER in state.extra else self.estimate(task, models, data)
        return models[j]

    onboard = onboard_without_training  # a new client estimates its cluster and uses that model

    def global_model(self, server: ServerState) -> Params | None:
        return None
