"""The in-process runtime: clients in this process, one after another (`reference`, the ground truth) or
trained together (`vectorized`)."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Callable, ClassVar

from fedarena.core.codec import Ledger, decode, encode
from fedarena.core.types import Broadcast, ClientData, ClientState, FederatedData, Params, Upload
from fedarena.sim.runtime import (
    ClientEval,
    OnboardEval,
    RuntimeFactory,
    evaluate_client,
    onboard_client,
    personal_model,
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
    clients train with DP-SGD (privacy/dpsgd.SampleLevel); evaluation and onboarding stay plain SGD."""

    protects_updates: ClassVar[bool] = False  # the private round protects the uploads it receives here
    transport: ClassVar[str] = "in-process (simulated messages)"

    def __init__(self, algo: Any, task: Task, data: FederatedData, training: list[int], full: Params, seed: int,
                 execute: Any, dpsgd: Any = None, engine: str = "reference") -> None:
        self.algo, self.task, self.data, self.seed, self.execute = algo, task, data, seed, execute
        self.engine = engine  # the executor's name, for the run's summary
        self.ledger = Ledger(verify=execute.verify_messages)
        self.dpsgd = dpsgd
        self.pooled = not algo.federated
        self.pool = data.pooled(training) if self.pooled else None
        self.ids = [0] if self.pooled else list(training)  # the clients that train
        self.states: dict[int, ClientState] = {c: algo.init_client(full) for c in self.ids}
        self.onboard_bytes = 0

    def _data(self, c: int) -> ClientData:
        return self.pool if self.pool is not None else self.data.client(c)

    def _state(self, c: int) -> ClientState:
        return self.states[0] if self.pooled else self.states[c]

    def train(self, rnd: int, broadcasts: dict[int, Broadcast], protect: Any = None) -> dict[int, Upload]:
        """Each client's upload as the server receives it (every client replies in this process)."""
        chosen = list(broadcasts)
        received = {c: b if self.pooled else self.ledger.send_down(rnd, c, b) for c, b in broadcasts.items()}
        results = self.execute.map([
            partial(train_client, self.algo, self.task, received[c], self.states[c], self._data(c), self.seed, rnd, c,
                    self.dpsgd)
            for c in chosen
        ])
        uploads = {}
        for c, (upload, state) in zip(chosen, results):
            self.states[c] = state
            uploads[c] = upload if self.pooled else self.ledger.send_up(rnd, c, upload)
        return uploads

    def evaluate(self, rnd: int, broadcasts: dict[int, Broadcast], global_params: Params | None,
                 membership: bool = False) -> dict[int, ClientEval]:
        """Every client's personal model (and the global model) on its own test split, and with `membership`
        the membership-inference AUCs; evaluation traffic is not counted in the ledger."""
        clients = list(broadcasts)
        models = self.execute.map([
            partial(personal_model, self.algo, self.task, broadcasts[c], self._state(c), self.data.client(c),
                    self.seed, rnd, c)
            for c in clients
        ])
        return {c: evaluate_client(self.task, m, global_params, self.data.client(c), membership)
                for c, m in zip(clients, models)}

    def onboard(self, broadcasts: dict[int, Broadcast], initial: Params) -> dict[int, OnboardEval]:
        """New clients download the shared state once (counted in `bytes_down`) and adapt locally."""
        clients = list(broadcasts)
        self.onboard_bytes = 0
        received = {}
        for c in clients:
            payload = encode(broadcasts[c])
            self.onboard_bytes += len(payload)
            received[c] = decode(payload, Broadcast)
        results = self.execute.map([
            partial(onboard_client, self.algo, self.task, received[c], initial, self.data.client(c), self.seed, c)
            for c in clients
        ])
        return dict(zip(clients, results))

    def close(self) -> None:
        self.execute.close()

    def summary(self) -> dict[str, Any]:
        return {"name": self.engine, **self.execute.summary()}


def local_runtime(engine: str) -> RuntimeFactory:
    """The in-process runtime of `engine` (reference or vectorized). The vectorized engine runs DP-SGD client
    by client (logged in its summary)."""

    def build(algo: Any, task: Task, data: FederatedData, training: list[int], full: Params, seed: int,
              dpsgd: Any) -> LocalClients:
        execute = EXECUTORS[engine](task, algo.name)
        if dpsgd is not None and isinstance(execute, VectorizedExecutor):
            execute.fall_back(f"{algo.name}: runs client by client: DP-SGD (Opacus) computes per-sample gradients of "
                              "one client at a time and cannot be batched across clients")
        return LocalClients(algo, task, data, training, full, seed, execute, dpsgd, engine)

    return build
