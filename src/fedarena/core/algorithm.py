"""The algorithm contract (DESIGN.md) and the plain functions algorithms build it from.

An algorithm is a frozen dataclass of its hyperparameters plus these functions; there is no base
class. Algorithms whose client work is SGD on a per-batch objective define
``local_objective(task, params, *, broadcast, state, batch)`` and use :func:`sgd_client_update`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, ClassVar, Mapping, Protocol

import torch

from fedarena.core.local_train import local_sgd
from fedarena.core.params import merge, split, weighted_mean
from fedarena.core.types import (
    NOTHING,
    Broadcast,
    ClientData,
    ClientState,
    KeyFilter,
    Onboarding,
    Params,
    ServerState,
    Upload,
)

if TYPE_CHECKING:
    from fedarena.tasks import Task

FAMILIES = ("global", "personalized", "baseline")


class Algorithm(Protocol):
    name: ClassVar[str]
    family: ClassVar[str]  # one of FAMILIES
    paper: ClassVar[str]
    personal: ClassVar[KeyFilter]  # keys that never leave a client
    federated: ClassVar[bool]  # False only for `centralized` (pooled data, no messages)
    uploads_personal: ClassVar[bool]  # True only for MOCHA

    def init_server(self, shared_params: Params) -> ServerState: ...
    def broadcast(self, server: ServerState, client_id: int) -> Broadcast: ...
    def init_client(self, params: Params) -> ClientState: ...
    def client_update(
        self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData, rng: torch.Generator
    ) -> tuple[Upload, ClientState]: ...
    def aggregate(self, server: ServerState, uploads: Mapping[int, Upload]) -> ServerState: ...
    def personalize(
        self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData, rng: torch.Generator
    ) -> Params: ...
    def global_model(self, server: ServerState) -> Params | None: ...
    def onboard(
        self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData, rng: torch.Generator
    ) -> Onboarding: ...


# ---------------------------------------------------------------- building blocks


def init_server(self, shared_params: Params) -> ServerState:
    return ServerState(params=dict(shared_params))


def broadcast_params(self, server: ServerState, client_id: int) -> Broadcast:
    return Broadcast(params=server.params)


def init_client_personal(self, params: Params) -> ClientState:
    """The client keeps the personal keys of the initial model (nothing for global algorithms)."""
    return ClientState(params=split(params, self.personal)[1])


def task_loss(self, task: Task, params: Params, *, broadcast: Broadcast, state: ClientState, batch) -> torch.Tensor:
    """The plain empirical risk F_k(w) on one batch (FedAvg's local objective)."""
    x, y = batch
    return task.loss(params, x, y)


def sgd_client_update(
    self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData, rng: torch.Generator
) -> tuple[Upload, ClientState]:
    """Local SGD on ``self.local_objective`` from the broadcast model merged with the personal state;
    upload the shared keys (weighted by the train size), keep the personal keys."""
    objective = partial(self.local_objective, task, broadcast=broadcast, state=state)
    start = merge(broadcast.params, state.params)
    trained, loss, steps = local_sgd(objective, start, task.parameter_names, data.x_train, data.y_train, task.sgd, rng)
    shared, mine = split(trained, self.personal)
    upload = Upload(params=shared, num_samples=data.num_train, metrics={"train_loss": loss, "steps": steps})
    return upload, ClientState(params=mine, extra=state.extra)


def fedavg_aggregate(self, server: ServerState, uploads: Mapping[int, Upload]) -> ServerState:
    """w <- sum_k n_k w_k / sum_k n_k over the round's uploads (McMahan et al. 2017, Alg. 1)."""
    ups = [u for u in uploads.values() if u.params]
    if not ups:
        return ServerState(params=server.params, round=server.round + 1, extra=server.extra)
    mean = weighted_mean([u.params for u in ups], [u.num_samples for u in ups])
    return ServerState(params=mean, round=server.round + 1, extra=server.extra)


def merged_personalize(
    self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData, rng: torch.Generator
) -> Params:
    """The personal model is the broadcast model with the client's personal keys on top."""
    return merge(broadcast.params, state.params)


def server_params(self, server: ServerState) -> Params | None:
    return server.params


def onboard_without_training(
    self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData, rng: torch.Generator
) -> Onboarding:
    """A new client uses the downloaded model as it is (global algorithms: the global model)."""
    model = self.personalize(task, broadcast, state, data, rng)
    return Onboarding(before=model, after=model, steps=0)


def onboard_by_local_training(
    self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData, rng: torch.Generator
) -> Onboarding:
    """A new client does one round's local work (`client_update`, its upload discarded: no
    re-federation), then personalizes. `before` is the downloaded shared model completed by the
    fresh personal state."""
    before = merged_personalize(self, task, broadcast, state, data, rng)
    upload, new_state = self.client_update(task, broadcast, state, data, rng)
    after = self.personalize(task, broadcast, new_state, data, rng)
    return Onboarding(before=before, after=after, steps=int(upload.metrics.get("steps", 0)))


# ---------------------------------------------------------------- declaring an algorithm

FEDAVG_STEPS = {
    "init_server": init_server,
    "broadcast": broadcast_params,
    "init_client": init_client_personal,
    "local_objective": task_loss,
    "client_update": sgd_client_update,
    "aggregate": fedavg_aggregate,
    "personalize": merged_personalize,
    "global_model": server_params,
    "onboard": onboard_without_training,
}


def algorithm(
    name: str,
    family: str,
    paper: str,
    personal: KeyFilter = NOTHING,
    federated: bool = True,
    uploads_personal: bool = False,
):
    """Declare an algorithm: a frozen dataclass of hyperparameters whose contract functions are the
    ones the class defines, and FedAvg's building blocks (``FEDAVG_STEPS``) for every one it does
    not. Reading an algorithm file therefore shows exactly where it departs from FedAvg.

    `uploads_personal` is True only for an algorithm whose personal weights must reach the server
    (MOCHA learns task relationships from them); it exempts it from the no-personal-upload test."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

    def wrap(cls):
        for step, fn in FEDAVG_STEPS.items():
            if step not in cls.__dict__:
                setattr(cls, step, fn)
        cls.name, cls.family, cls.paper = name, family, paper
        cls.federated, cls.uploads_personal = federated, uploads_personal
        if "personal" not in cls.__dict__:  # a class may derive it from a hyperparameter (a property)
            cls.personal = personal
        return dataclass(frozen=True)(cls)

    return wrap


def averages_uploads(algo) -> bool:
    """Whether the server step is FedAvg's weighted mean of the uploaded (shared) params: what FedEraser
    calibrates and what secure aggregation and DP-FedAvg can replace by a (noised) sum."""
    return type(algo).aggregate is fedavg_aggregate
