"""Where clients run: the runtime Protocol the round loop drives, and what one client does wherever it runs.

A runtime holds (or reaches) the clients of one algorithm's run. The in-process one (:mod:`fedarena.sim.local`)
keeps their data and state here; the Flower one (:mod:`fedarena.flower.runtime`) sends each client's work to its
SuperNode. Both call the same client functions below with the same random streams (derived from seed, round
and client), so every runtime computes the same numbers.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from fedarena.core.codec import Ledger
from fedarena.core.device import CPU, to_device
from fedarena.core.params import same_params
from fedarena.core.rng import torch_rng
from fedarena.core.types import Broadcast, ClientData, ClientState, FederatedData, Params, Upload
from fedarena.privacy import leakage
from fedarena.tasks import Task, evaluate


@dataclass(frozen=True)
class ClientEval:
    """One client's evaluation: its personal model (and the global model, where one exists) on its own
    test split, and the personal model on its validation split (`val_acc`, None where it has none)."""

    acc: float
    loss: float
    num_test: int
    global_acc: float | None
    member_auc: float | None = None  # privacy/leakage: membership inference on the personal model (final round)
    global_member_auc: float | None = None  # ... and on the global model
    val_acc: float | None = None
    num_val: int = 0


@dataclass(frozen=True)
class OnboardEval:
    """A new client's accuracy on arrival and after local adaptation, and the adaptation's SGD steps."""

    before: float
    after: float
    steps: int


class Runtime(Protocol):
    """The clients of one algorithm's run, as the round loop (`sim.engine.run_algorithm`) drives them.

    Every message it carries crosses `ledger`. `states` holds the clients' states where the runtime can
    see them (empty where they live on the clients' own machines). A runtime with `protects_updates`
    trains with the round's `privacy.encoding.ClientPrivacy` on the clients (local DP: `train(..., protect=)`)
    and also has `train_secure(rnd, broadcasts, cp)` (SecAgg's client stages, only the sum comes back), which the
    private round calls only then; otherwise the private round protects its uploads itself."""

    ids: list[int]  # the clients that train (one pseudo-client 0 when `pooled`)
    pooled: bool  # one pseudo-client holds every training client's data (`centralized`)
    states: dict[int, ClientState]
    ledger: Ledger
    onboard_bytes: int  # what onboarding the new clients downloaded
    protects_updates: ClassVar[bool]
    transport: ClassVar[str]  # how messages travel, for the summary's privacy block

    def train(self, rnd: int, broadcasts: dict[int, Broadcast], protect: Any = None) -> dict[int, Upload]: ...
    def evaluate(self, rnd: int, broadcasts: dict[int, Broadcast], global_params: Params | None,
                 membership: bool = False) -> dict[int, ClientEval]: ...
    def onboard(self, broadcasts: dict[int, Broadcast], initial: Params) -> dict[int, OnboardEval]: ...
    def close(self) -> None: ...
    def summary(self) -> dict[str, Any]: ...


class RuntimeFactory(Protocol):
    """Builds the runtime for one algorithm's run: `training` clients, the run's initial model `full`, and
    `dpsgd` (privacy/dpsgd.SampleLevel: the clients' local SGD is DP-SGD, accounted into it) or None."""

    def __call__(self, algo: Any, task: Task, data: FederatedData, training: list[int], full: Params, seed: int,
                 dpsgd: Any) -> Runtime: ...


# What one client does, wherever it runs (this process, or a Flower SuperNode): the same functions, the
# same random streams, so that every runtime computes the same numbers.


def train_client(algo: Any, task: Task, b: Broadcast, state: ClientState, d: ClientData, seed: int, rnd: int,
                 client: int, dpsgd: Any = None) -> tuple[Upload, ClientState]:
    """One client's training; with `dpsgd` (privacy/dpsgd.SampleLevel) its local SGD is DP-SGD."""
    rng = torch_rng(seed, "client", rnd, client)
    if dpsgd is None:
        return algo.client_update(task, b, state, d, rng)  # type: ignore[no-any-return]
    return dpsgd.client_update(algo, task, b, state, d, rng, rnd, client)  # type: ignore[no-any-return]


def personal_model(algo: Any, task: Task, b: Broadcast, state: ClientState, d: ClientData, seed: int, rnd: int,
                   client: int) -> Params:
    return algo.personalize(task, b, state, d, torch_rng(seed, "personalize", rnd, client))  # type: ignore[no-any-return]


def evaluate_client(task: Task, personal: Params, global_params: Params | None, d: ClientData,
                    membership: bool = False) -> ClientEval:
    """Accuracy on the client's test split and the personal model's on its validation split; with `membership`,
    also the membership-inference AUCs. Where the personal model is the global model (global algorithms), each
    is computed once: the same params give the same numbers."""
    acc, loss = accuracy(task, personal, d)
    same = global_params is not None and same_params(personal, global_params)
    gacc = None if global_params is None else acc if same else accuracy(task, global_params, d)[0]
    val = {"val_acc": validation_accuracy(task, personal, d), "num_val": d.num_val}
    if not membership:
        return ClientEval(acc, loss, d.num_test, gacc, **val)
    if same:
        own = leakage.client_membership(task, personal, None, d)[0]
        return ClientEval(acc, loss, d.num_test, gacc, own, own, **val)
    return ClientEval(acc, loss, d.num_test, gacc, *leakage.client_membership(task, personal, global_params, d), **val)


def onboard_client(algo: Any, task: Task, b: Broadcast, initial: Params, d: ClientData, seed: int,
                   client: int) -> OnboardEval:
    """A new client starts from the initial model with the downloaded shared params and adapts locally (on the
    device of its data: a state `init_client` makes on the CPU is moved there)."""
    state = to_device(algo.init_client({**initial, **b.params}), d.x_train.device)
    result = algo.onboard(task, b, state, d, torch_rng(seed, "onboard", client))
    return OnboardEval(accuracy(task, result.before, d)[0], accuracy(task, result.after, d)[0], result.steps)


def initial_model(task: Task, seed: int) -> Params:
    """The run's initial model: the same for every algorithm of a comparison and on every runtime (on the CPU,
    drawn from a CPU generator, whatever device the task's template is on)."""
    return to_device(task.init_params(torch_rng(seed, "init")), CPU)


def task_on(task: Task, device: torch.device) -> Task:
    """`task` with its model template on `device`: a copy (the task itself stays where it is, for the code that
    computes on the CPU); on the CPU, `task` itself."""
    if device.type == "cpu":
        return task
    return dataclasses.replace(task, module=copy.deepcopy(task.module).to(device))


def accuracy(task: Task, params: Params, d: ClientData) -> tuple[float, float]:
    correct, loss = evaluate(task, params, d.x_test, d.y_test)
    return correct / d.num_test, loss / d.num_test


def validation_accuracy(task: Task, params: Params, d: ClientData) -> float | None:
    """Accuracy on the client's validation split (what tuning reads), None where it has none."""
    if d.x_val is None or d.y_val is None or not d.num_val:
        return None
    return evaluate(task, params, d.x_val, d.y_val)[0] / d.num_val


__all__ = ["ClientEval", "OnboardEval", "Runtime", "RuntimeFactory", "accuracy", "evaluate_client", "initial_model",
           "onboard_client", "personal_model", "task_on", "train_client", "validation_accuracy"]
