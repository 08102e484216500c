"""The in-process runtime: clients in this process, one after another (`reference`, the ground truth) or
trained together (`vectorized`), on the run's device (`run.device`, core/device.py): the clients' data and the model
template live there for the run, a client's broadcast and state are moved there for its work and its upload and new
state come back to the CPU, where the round loop, the server and the ledger see them."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Callable, ClassVar

import torch

from fedarena.core.codec import Ledger, decode, encode
from fedarena.core.device import CPU, to_device
from fedarena.core.types import Broadcast, ClientData, ClientState, FederatedData, Params, Upload
from fedarena.sim.runtime import (
    ClientEval,
    OnboardEval,
    RuntimeFactory,
    evaluate_client,
    onboard_client,
    personal_model,
    task_on,
    train_client,
)
from fedarena.sim.vectorized import VectorizedExecutor
from fedarena.tasks import Task

log = logging.getLogger(__name__)


class ReferenceExecutor:
    """The reference engine: clients one after another, the ground truth."""

    def __init__(self, task: Task, algo_name: str) -> None:
        pass

    def map(self, calls: list[Callable[[], Any]]) -> list[Any]:
        """Run one call per client (a client_update, a personalize, an onboard)."""
        return [call() for call in calls]

    verify_messages = True  # see Ledger.verify

    def summary(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


EXECUTORS: dict[str, Callable[[Task, str], Any]] = {"reference": ReferenceExecutor, "vectorized": VectorizedExecutor}


class LocalClients:
    """Clients in this process: their data and state live here; `execute` runs their work (one after
    another, or vectorized). Every message crosses `ledger`. With `pooled`, one pseudo-client 0 holds the
    training clients' data (`centralized`) and its messages are not counted (nothing is sent). `dpsgd`: the
    clients train with DP-SGD (privacy/dpsgd.SampleLevel); evaluation and onboarding stay plain SGD. `device`: where
    the clients compute (module docstring); `states` stay on the CPU between rounds."""

    protects_updates: ClassVar[bool] = False  # the private round protects the uploads it receives here
    transport: ClassVar[str] = "in-process (simulated messages)"

    def __init__(self, algo: Any, task: Task, data: FederatedData, training: list[int], full: Params, seed: int,
                 execute: Any, dpsgd: Any = None, engine: str = "reference", device: torch.device = CPU) -> None:
        self.device = device
        self.algo, self.task, self.seed, self.execute = algo, task_on(task, device), seed, execute
        self.data = to_device(data, device)  # (local_runtime moves it once for every algorithm of the run)
        self.engine = engine  # the executor's name, for the run's summary
        self.ledger = Ledger(verify=execute.verify_messages)
        self.dpsgd = dpsgd
        self.pooled = not algo.federated
        self.pool = self.data.pooled(training) if self.pooled else None
        self.ids = [0] if self.pooled else list(training)  # the clients that train
        self.states: dict[int, ClientState] = {c: algo.init_client(full) for c in self.ids}
        self.onboard_bytes = 0

    def _data(self, c: int) -> ClientData:
        return self.pool if self.pool is not None else self.data.client(c)

    def _state(self, c: int) -> ClientState:
        return self.states[0] if self.pooled else self.states[c]

    def _on(self, value: Any, memo: dict[int, Any]) -> Any:
        """`value` on the run's device (`memo`: one copy of the tensors several clients' values share)."""
        return to_device(value, self.device, memo)

    def train(self, rnd: int, broadcasts: dict[int, Broadcast], protect: Any = None) -> dict[int, Upload]:
        """Each client's upload as the server receives it (every client replies in this process)."""
        chosen, memo = list(broadcasts), dict[int, Any]()
        received = {c: b if self.pooled else self.ledger.send_down(rnd, c, b) for c, b in broadcasts.items()}
        results = self.execute.map([
            partial(train_client, self.algo, self.task, self._on(received[c], memo), self._on(self.states[c], memo),
                    self._data(c), self.seed, rnd, c, self.dpsgd)
            for c in chosen
        ])
        uploads = {}
        for c, (upload, state) in zip(chosen, to_device(results, CPU)):
            self.states[c] = state
            uploads[c] = upload if self.pooled else self.ledger.send_up(rnd, c, upload)
        return uploads

    def evaluate(self, rnd: int, broadcasts: dict[int, Broadcast], global_params: Params | None,
                 membership: bool = False) -> dict[int, ClientEval]:
        """Every client's personal model (and the global model) on its own test split, and with `membership`
        the membership-inference AUCs; evaluation traffic is not counted in the ledger."""
        clients, memo = list(broadcasts), dict[int, Any]()
        g = self._on(global_params, memo)  # the personal models stay on the device for their evaluation
        models = self.execute.map([
            partial(personal_model, self.algo, self.task, self._on(broadcasts[c], memo), self._on(self._state(c), memo),
                    self.data.client(c), self.seed, rnd, c)
            for c in clients
        ])
        return {c: evaluate_client(self.task, m, g, self.data.client(c), membership) for c, m in zip(clients, models)}

    def onboard(self, broadcasts: dict[int, Broadcast], initial: Params) -> dict[int, OnboardEval]:
        """New clients download the shared state once (counted in `bytes_down`) and adapt locally."""
        clients = list(broadcasts)
        self.onboard_bytes = 0
        received = {}
        for c in clients:
            payload = encode(broadcasts[c])
            self.onboard_bytes += len(payload)
            received[c] = decode(payload, Broadcast)
        memo: dict[int, Any] = {}
        results = self.execute.map([
            partial(onboard_client, self.algo, self.task, self._on(received[c], memo), self._on(initial, memo),
                    self.data.client(c), self.seed, c)
            for c in clients
        ])
        return dict(zip(clients, results))

    def close(self) -> None:
        self.execute.close()

    def summary(self) -> dict[str, Any]:
        return {"name": self.engine, "device": str(self.device), **self.execute.summary()}


def local_runtime(engine: str, device: torch.device = CPU) -> RuntimeFactory:
    """The in-process runtime of `engine` (reference or vectorized) on `device` (resolved: core.device.resolve_device).
    The vectorized engine runs DP-SGD client by client (logged in its summary). The clients' data is moved to the
    device once, for every run the factory builds on it (the last data it was given)."""
    moved: dict[int, tuple[FederatedData, FederatedData]] = {}

    def build(algo: Any, task: Task, data: FederatedData, training: list[int], full: Params, seed: int,
              dpsgd: Any) -> LocalClients:
        if id(data) not in moved:
            moved.clear()
            moved[id(data)] = (data, to_device(data, device))
        execute = EXECUTORS[engine](task, algo.name)
        if dpsgd is not None and isinstance(execute, VectorizedExecutor):
            execute.fall_back(f"{algo.name}: runs client by client: DP-SGD (Opacus) computes per-sample gradients of "
                              "one client at a time and cannot be batched across clients")
        return LocalClients(algo, task, moved[id(data)][1], training, full, seed, execute, dpsgd, engine, device)

    return build
