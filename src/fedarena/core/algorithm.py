"""The algorithm contract (DESIGN.md) and the plain functions algorithms build it from.

An algorithm is a frozen dataclass of its hyperparameters plus these functions; there is no base
class. Algorithms whose client work is SGD on a per-batch objective define
``local_objective(task, params, *, broadcast, state, batch)`` and use :func:`sgd_client_update`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import torch
from typing_extensions import dataclass_transform

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
Batch = tuple[torch.Tensor, torch.Tensor]  # (x, y) of one minibatch
T = TypeVar("T")

# ---------------------------------------------------------------- capabilities
# What an algorithm can do is declared by the algorithm (class variables set by `@algorithm`), read by the
# packages that depend on it (privacy, forget, the runtimes) and checked against behaviour by a registry-wide
# test (tests/algorithms/test_capabilities.py). Nothing decides it from an algorithm's name or functions.
#
# `server_step`: how the server step uses the round's uploads, one of SERVER_STEPS:
# - "mean": the new server params are FedAvg's weighted mean of the uploaded (shared) params, weighted by
#   `num_samples` (`fedavg_aggregate`); nothing else of the uploads is read.
# - "mean+optimizer": that weighted mean, then a step that reads only the mean and the server state (a
#   server optimizer, `core.server_opt`; pFedMe's beta-mixing): replacing the uploads by one upload holding
#   their weighted mean, with their summed weight, gives the same server state.
# - "custom": anything else (SCAFFOLD's control variates, IFCA's clusters, MOCHA's personal weights): the
#   server needs each client's upload.
# DP-FedAvg and secure aggregation deliver only the (noised) weighted mean, which the private round hands to
# the algorithm's own `aggregate` as one upload: they accept MEAN_STEPS. FedEraser calibrates the mean update
# and takes it as the next model: it accepts "mean" only.
#
# `per_sample_risk`: True where every `local_sgd` call of `client_update` is SGD on the plain per-sample
# empirical risk (`task_loss`), so DP-SGD (privacy/dpsgd.py: per-sample clipping and noise) trains exactly
# it. False where the local objective adds a parameter-dependent term (FedProx, SCAFFOLD, Ditto, pFedMe), is a
# meta-gradient (Per-FedAvg), a joint (APFL) or dual (MOCHA) objective, or the client releases something
# computed from its data outside those SGD calls (IFCA's cluster choice). An algorithm declaring False
# also says why in `not_per_sample` (one clause, shown in DP-SGD's refusal); "" where True.
#
# `communicates`: False where no message crosses the network (`centralized`: pooled data; `local`: every key
# personal). `federated` (summary.json's field) is False for `centralized` only: `local` trains on the
# clients' own data but sends nothing.
SERVER_STEPS = ("mean", "mean+optimizer", "custom")
MEAN_STEPS = ("mean", "mean+optimizer")  # server steps that need only the uploads' weighted mean


class Algorithm(Protocol):
    name: ClassVar[str]
    family: ClassVar[str]  # one of FAMILIES
    paper: ClassVar[str]
    personal: ClassVar[KeyFilter]  # keys that never leave a client
    federated: ClassVar[bool]  # False only for `centralized` (pooled data, no messages)
    uploads_personal: ClassVar[bool]  # True only for MOCHA
    # capabilities (declared with `@algorithm`, documented above)
    server_step: ClassVar[str]  # one of SERVER_STEPS
    per_sample_risk: ClassVar[bool]
    not_per_sample: ClassVar[str]  # why per_sample_risk is False ("" where True)
    communicates: ClassVar[bool]

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


class SGDAlgorithm(Algorithm, Protocol):
    """An algorithm whose client work is SGD on a per-batch objective (what `sgd_client_update` needs)."""

    def local_objective(self, task: Task, params: Params, *, broadcast: Broadcast, state: ClientState,
                        batch: Batch) -> torch.Tensor: ...


# ---------------------------------------------------------------- building blocks
# `self` is the algorithm object (typed Any: an algorithm class gets the contract's steps from `@algorithm` at
# run time, so no class satisfies `Algorithm` statically; `SGDAlgorithm` documents what `sgd_client_update` reads).


def init_server(self: Any, shared_params: Params) -> ServerState:
    return ServerState(params=dict(shared_params))


def broadcast_params(self: Any, server: ServerState, client_id: int) -> Broadcast:
    return Broadcast(params=server.params)


def init_client_personal(self: Any, params: Params) -> ClientState:
    """The client keeps the personal keys of the initial model (nothing for global algorithms)."""
    return ClientState(params=split(params, self.personal)[1])


def task_loss(self: Any, task: Task, params: Params, *, broadcast: Broadcast, state: ClientState,
              batch: Batch) -> torch.Tensor:
    """The plain empirical risk F_k(w) on one batch (FedAvg's local objective)."""
    x, y = batch
    return task.loss(params, x, y)


def sgd_client_update(
    self: Any, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData, rng: torch.Generator
) -> tuple[Upload, ClientState]:
    """Local SGD on ``self.local_objective`` from the broadcast model merged with the personal state;
    upload the shared keys (weighted by the train size), keep the personal keys."""
    objective = partial(self.local_objective, task, broadcast=broadcast, state=state)
    start = merge(broadcast.params, state.params)
    trained, loss, steps = local_sgd(objective, start, task.parameter_names, data.x_train, data.y_train, task.sgd, rng)
    shared, mine = split(trained, self.personal)
    upload = Upload(params=shared, num_samples=data.num_train, metrics={"train_loss": loss, "steps": steps})
    return upload, ClientState(params=mine, extra=state.extra)


def fedavg_aggregate(self: Any, server: ServerState, uploads: Mapping[int, Upload]) -> ServerState:
    """w <- sum_k n_k w_k / sum_k n_k over the round's uploads (McMahan et al. 2017, Alg. 1)."""
    ups = [u for u in uploads.values() if u.params]
    if not ups:
        return ServerState(params=server.params, round=server.round + 1, extra=server.extra)
    mean = weighted_mean([u.params for u in ups], [u.num_samples for u in ups])
    return ServerState(params=mean, round=server.round + 1, extra=server.extra)


def merged_personalize(
    self: Any, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData, rng: torch.Generator
) -> Params:
    """The personal model is the broadcast model with the client's personal keys on top."""
    return merge(broadcast.params, state.params)


def server_params(self: Any, server: ServerState) -> Params | None:
    return server.params


def onboard_without_training(
    self: Any, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData, rng: torch.Generator
) -> Onboarding:
    """A new client uses the downloaded model as it is (global algorithms: the global model)."""
    model = self.personalize(task, broadcast, state, data, rng)
    return Onboarding(before=model, after=model, steps=0)


def onboard_by_local_training(
    self: Any, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData, rng: torch.Generator
) -> Onboarding:
    """A new client does one round's local work (`client_update`, its upload discarded: no
    re-federation), then personalizes. `before` is the downloaded shared model completed by the
    fresh personal state."""
    before = merged_personalize(self, task, broadcast, state, data, rng)
    upload, new_state = self.client_update(task, broadcast, state, data, rng)
    after = self.personalize(task, broadcast, new_state, data, rng)
    return Onboarding(before=before, after=after, steps=int(upload.metrics.get("steps", 0)))


# ---------------------------------------------------------------- declaring an algorithm

FEDAVG_STEPS: dict[str, Callable[..., Any]] = {
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


@dataclass_transform(frozen_default=True)
def algorithm(
    name: str,
    family: str,
    paper: str,
    *,
    server_step: str,
    per_sample_risk: bool,
    not_per_sample: str = "",
    communicates: bool = True,
    personal: KeyFilter = NOTHING,
    federated: bool = True,
    uploads_personal: bool = False,
) -> Callable[[type[T]], type[T]]:
    """Declare an algorithm: a frozen dataclass of hyperparameters whose contract functions are the
    ones the class defines, and FedAvg's building blocks (``FEDAVG_STEPS``) for every one it does
    not. Reading an algorithm file therefore shows exactly where it departs from FedAvg.

    `server_step` and `per_sample_risk` are its capabilities (see the comment above SERVER_STEPS), declared
    by every algorithm, with `not_per_sample` saying why where per_sample_risk is False; `communicates` is
    False only where nothing crosses the network.
    `uploads_personal` is True only for an algorithm whose personal weights must reach the server
    (MOCHA learns task relationships from them); it exempts it from the no-personal-upload test."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if server_step not in SERVER_STEPS:
        raise ValueError(f"server_step must be one of {SERVER_STEPS}, got {server_step!r}")
    if per_sample_risk == bool(not_per_sample):
        raise ValueError(f"{name}: give not_per_sample (why) exactly when per_sample_risk is False")
    if communicates and not federated:
        raise ValueError(f"{name}: an algorithm that pools the data (federated=False) sends nothing (communicates=False)")

    def wrap(cls: type[T]) -> type[T]:
        for step, fn in FEDAVG_STEPS.items():
            if step not in cls.__dict__:
                setattr(cls, step, fn)
        declared = {"name": name, "family": family, "paper": paper, "federated": federated,
                    "uploads_personal": uploads_personal, "server_step": server_step,
                    "per_sample_risk": per_sample_risk, "not_per_sample": not_per_sample, "communicates": communicates}
        for attr, value in declared.items():
            setattr(cls, attr, value)
        if "personal" not in cls.__dict__:  # a class may derive it from a hyperparameter (a property)
            setattr(cls, "personal", personal)
        return dataclass(frozen=True)(cls)

    return wrap
