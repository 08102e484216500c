"""The round loop: the only one in fedarena. Engines differ only in how a round's clients execute.

One round: sample clients (each client's participation from its own (seed, round, client) key),
broadcast (through the ledger), local work, upload (through the ledger), aggregate; then, every
``eval_every`` rounds and at the last round, evaluate every client's personal model on its own test
split and the global model on the union of test splits. Randomness comes only from generators
derived from (seed, purpose, round, client).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fedarena.core.codec import Ledger, decode, encode
from fedarena.core.params import nbytes, split
from fedarena.core.rng import derive_seed, numpy_rng, torch_rng
from fedarena.core.types import (
    Broadcast, ClientData, ClientState, FedarenaError, FederatedData, Params, ServerState, Upload,
)
from fedarena.privacy import leakage
from fedarena.sim.vectorized import VectorizedExecutor
from fedarena.tasks import Task, evaluate

log = logging.getLogger(__name__)


def sample_clients(
    seed: int, rnd: int, clients: Sequence[int], per_round: int, exclude: Sequence[int] = ()
) -> list[int]:
    """The `per_round` clients with the smallest priority u(seed, round, client), in client order.

    A client's priority depends only on (seed, round, client id), and excluded clients are dropped
    after ranking, so removing a client never changes whether another client is sampled (exact
    retraining relies on this).
    """
    if per_round >= len(clients):
        chosen = list(clients)
    else:
        priority = {c: derive_seed(seed, "sample", rnd, c) for c in clients}
        chosen = sorted(clients, key=lambda c: (priority[c], c))[:per_round]
    drop = set(exclude)
    return sorted(c for c in chosen if c not in drop)


def select_new_clients(seed: int, num_clients: int, fraction: float) -> list[int]:
    """max(1, round(fraction * N)) clients held out of training (none when fraction is 0)."""
    if fraction <= 0:
        return []
    k = max(1, round(fraction * num_clients))
    if k >= num_clients:
        raise FedarenaError(f"data.new_clients={fraction} would hold out all {num_clients} clients")
    return sorted(int(c) for c in numpy_rng(seed, "new-clients").permutation(num_clients)[:k])


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of the training clients (`clients`, in this order)."""

    round: int
    global_acc: float | None  # the global model on the union of the training clients' test splits
    clients: list[int]
    per_client_acc: list[float]  # personal model on the client's own test split
    per_client_loss: list[float]
    test_sizes: list[int]
    global_per_client_acc: list[float] | None  # the global model on each client's test split

    @property
    def personal_acc_mean(self) -> float:
        """Sample-weighted over clients: total correct / total test samples."""
        total = sum(self.test_sizes)
        return sum(a * n for a, n in zip(self.per_client_acc, self.test_sizes)) / total

    @property
    def personal_acc_std(self) -> float:
        return _spread(self.per_client_acc)["std"]

    @property
    def personal_acc_worst10(self) -> float:
        return _spread(self.per_client_acc)["worst10"]


@dataclass(frozen=True)
class Checkpoint:
    """The state of a run after `round`: the server's and every training client's (clients absent from
    `states` are at their initial state)."""

    round: int
    server: ServerState
    states: dict[int, ClientState]


@dataclass
class AlgorithmRun:
    """Everything one algorithm's run produced (the caller turns it into summary.json rows)."""

    evaluations: list[Evaluation] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)  # cumulative, per round (no evaluation)
    sampled: list[list[int]] = field(default_factory=list)
    train_loss: dict[tuple[int, int], float] = field(default_factory=dict)
    ledger: Ledger = field(default_factory=Ledger)
    new_clients: dict[str, Any] | None = None
    engine: dict[str, Any] = field(default_factory=dict)
    server: ServerState | None = None
    states: dict[int, ClientState] = field(default_factory=dict)
    wall_seconds: float = 0.0
    kept: dict[str, bytes] = field(default_factory=dict)  # what `fedarena forget` needs (forget/store.py)
    privacy: Any = None  # privacy/round.Privacy of the run, or None
    membership: dict[str, Any] | None = None  # privacy/leakage.membership of the final models (in-process runs)
    sample_dp: Any = None  # privacy/dpsgd.SampleLevel of the run (DP-SGD's per-client steps), or None


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


@dataclass(frozen=True)
class ClientEval:
    """One client's evaluation: its personal model (and the global model, where one exists) on its own
    test split."""

    acc: float
    loss: float
    num_test: int
    global_acc: float | None
    member_auc: float | None = None  # privacy/leakage: membership inference on the personal model (final round)
    global_member_auc: float | None = None  # ... and on the global model


@dataclass(frozen=True)
class OnboardEval:
    """A new client's accuracy on arrival and after local adaptation, and the adaptation's SGD steps."""

    before: float
    after: float
    steps: int


# What one client does, wherever it runs (this process, or a Flower SuperNode): the same functions, the
# same random streams, so that every runtime computes the same numbers.


def train_client(algo: Any, task: Task, b: Broadcast, state: ClientState, d: ClientData, seed: int, rnd: int,
                 client: int, dpsgd: Any = None) -> tuple[Upload, ClientState]:
    """One client's training; with `dpsgd` (privacy/dpsgd.SampleLevel) its local SGD is DP-SGD."""
    rng = torch_rng(seed, "client", rnd, client)
    if dpsgd is None:
        return algo.client_update(task, b, state, d, rng)
    return dpsgd.client_update(algo, task, b, state, d, rng, rnd, client)


def personal_model(algo: Any, task: Task, b: Broadcast, state: ClientState, d: ClientData, seed: int, rnd: int,
                   client: int) -> Params:
    return algo.personalize(task, b, state, d, torch_rng(seed, "personalize", rnd, client))


def evaluate_client(task: Task, personal: Params, global_params: Params | None, d: ClientData,
                    membership: bool = False) -> ClientEval:
    """Accuracy on the client's test split; with `membership`, also the membership-inference AUCs."""
    acc, loss = _accuracy(task, personal, d)
    gacc = None if global_params is None else _accuracy(task, global_params, d)[0]
    aucs = leakage.client_membership(task, personal, global_params, d) if membership else (None, None)
    return ClientEval(acc, loss, d.num_test, gacc, *aucs)


def onboard_client(algo: Any, task: Task, b: Broadcast, initial: Params, d: ClientData, seed: int,
                   client: int) -> OnboardEval:
    """A new client starts from the initial model with the downloaded shared params and adapts locally."""
    result = algo.onboard(task, b, algo.init_client({**initial, **b.params}), d, torch_rng(seed, "onboard", client))
    return OnboardEval(_accuracy(task, result.before, d)[0], _accuracy(task, result.after, d)[0], result.steps)


class LocalClients:
    """Clients in this process: their data and state live here; `execute` runs their work (one after
    another, or vectorized). Every message crosses `ledger`. With `pooled`, one pseudo-client 0 holds the
    training clients' data (`centralized`) and its messages are not counted (nothing is sent). `dpsgd`: the
    clients train with DP-SGD (privacy/dpsgd.SampleLevel); evaluation and onboarding stay plain SGD."""

    def __init__(self, algo: Any, task: Task, data: FederatedData, training: list[int], full: Params, seed: int,
                 execute: Any, ledger: Ledger, dpsgd: Any = None) -> None:
        self.algo, self.task, self.data, self.seed, self.execute, self.ledger = algo, task, data, seed, execute, ledger
        self.dpsgd = dpsgd
        self.pooled = not algo.federated
        self.pool = data.pooled(training) if self.pooled else None
        self.ids = [0] if self.pooled else list(training)  # the clients that train
        self.states = {c: algo.init_client(full) for c in self.ids}

    def _data(self, c: int) -> ClientData:
        return self.pool if self.pool is not None else self.data.client(c)

    def _state(self, c: int) -> ClientState:
        return self.states[0] if self.pooled else self.states[c]

    def train(self, rnd: int, broadcasts: dict[int, Broadcast]) -> dict[int, Upload]:
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
        return self.execute.summary()


def run_algorithm(
    algo: Any,
    task: Task,
    data: FederatedData,
    *,
    rounds: int,
    clients_per_round: int,
    eval_every: int,
    seed: int,
    engine: str = "reference",
    new_clients: Sequence[int] = (),
    exclude: Sequence[int] = (),
    initial: Params | None = None,
    on_round: Callable[[int], None] | None = None,
    runtime: Callable[..., Any] | None = None,
    resume: Checkpoint | None = None,
    on_start: Callable[[ServerState], None] | None = None,
    privacy: Any = None,
    record: Callable[[int, ServerState, ServerState, dict[int, Upload], dict[int, ClientState]], None] | None = None,
    dpsgd: Any = None,
) -> AlgorithmRun:
    """Train `algo` for `rounds` rounds on `data` and evaluate it; see the module docstring.

    `new_clients` never train (and are not in `centralized`'s pool); after the last round they are
    onboarded with the algorithm's `onboard` step and reported separately. `exclude`d clients take no
    part at all (neither trained nor evaluated): a run that never had them. `runtime(algo, task, training,
    full, seed, ledger)` builds where client work runs (default: `LocalClients` with the `engine`'s executor).
    `resume` continues from a checkpoint (rounds before it are not rerun, not evaluated and not counted);
    `record(round, server_before, server_after, uploads, states)` sees every round (the states of the round's
    clients after it) and may keep what `fedarena forget` needs. `dpsgd` (privacy/dpsgd.SampleLevel): the clients'
    training is DP-SGD, accounted per client (a runtime whose clients train elsewhere reports their steps into it).
    """
    start = time.perf_counter()
    # the same initial model for every algorithm of a comparison
    full = initial if initial is not None else task.init_params(torch_rng(seed, "init"))
    server = algo.init_server(split(full, algo.personal)[0])
    held_out = set(new_clients)
    eligible = [c for c in range(data.num_clients) if c not in held_out]
    training = [c for c in eligible if c not in set(exclude)]
    out = AlgorithmRun()
    if runtime is None:
        execute = EXECUTORS[engine](task, algo.name)
        if dpsgd is not None and isinstance(execute, VectorizedExecutor):
            execute.fall_back(f"{algo.name}: runs client by client: DP-SGD (Opacus) computes per-sample gradients of "
                              "one client at a time and cannot be batched across clients")
        out.ledger = Ledger(verify=execute.verify_messages)
        clients = LocalClients(algo, task, data, training, full, seed, execute, out.ledger, dpsgd)
    else:
        clients = runtime(algo, task, training, full, seed, out.ledger)
        if dpsgd is not None:  # the clients run DP-SGD where they are and report their steps into `dpsgd`
            if not getattr(clients, "reports_dpsgd", False):
                raise FedarenaError("DP-SGD needs a runtime whose clients report their DP-SGD steps")
            clients.dpsgd = dpsgd
    if resume is not None:
        server = resume.server
        clients.states.update({c: s for c, s in resume.states.items() if c in clients.states})
    if privacy is not None:
        rounds = privacy.rounds_allowed(rounds)
    if on_start and resume is None:
        on_start(server)
    train_time = 0.0
    try:
        for rnd in range(1 if resume is None else resume.round + 1, rounds + 1):
            t0 = time.perf_counter()
            # ranked over every eligible client, excluded ones dropped after: excluding a client changes
            # no other client's participation (the run that never had it)
            ranked = clients.ids if clients.pooled else eligible
            chosen = sample_clients(seed, rnd, ranked, clients_per_round, exclude=() if clients.pooled else exclude)
            if privacy is not None:
                chosen = privacy.sample(rnd, clients.ids, chosen)
            broadcasts = {c: algo.broadcast(server, c) for c in chosen}
            before = server
            if privacy is not None:  # what the server may see of the uploads (privacy/round.py): {} when a
                uploads, server = privacy.train_and_aggregate(algo, server, clients, rnd, broadcasts)  # round aborts
            else:
                uploads = in_client_order(clients.train(rnd, broadcasts))
                server = algo.aggregate(server, uploads)
            for c, upload in uploads.items():
                out.train_loss[(rnd, c)] = float(upload.metrics.get("train_loss", float("nan")))
            if record:
                record(rnd, before, server, uploads, {c: clients.states[c] for c in uploads})
            train_time += time.perf_counter() - t0
            out.train_seconds.append(train_time)
            out.sampled.append([] if clients.pooled else sorted(uploads))
            if rnd % eval_every == 0 or rnd == rounds:
                g = algo.global_model(server)
                results = clients.evaluate(rnd, {c: algo.broadcast(server, c) for c in training}, g, membership=rnd == rounds)
                out.evaluations.append(_evaluation(rnd, training, results, g is not None))
                measured = [r for r in results.values() if r.member_auc is not None]
                if rnd == rounds and measured:  # (a Flower runtime's clients do not measure it)
                    out.membership = leakage.summarize([r.member_auc for r in measured],
                                                       [r.global_member_auc for r in measured])
            if on_round:
                on_round(rnd)
        if held_out:
            news = sorted(held_out)
            results = clients.onboard({c: algo.broadcast(server, c) for c in news}, full)
            out.new_clients = _onboarding(data, news, results, clients.onboard_bytes)
    finally:
        clients.close()
    out.server, out.states, out.privacy, out.sample_dp = server, getattr(clients, "states", {}), privacy, dpsgd
    out.engine = {"name": engine, **clients.summary()}
    out.wall_seconds = time.perf_counter() - start
    return out


def in_client_order(uploads: dict[int, Upload]) -> dict[int, Upload]:
    """Uploads sorted by client, whatever order they arrived in (a Flower runtime receives them by completion):
    the aggregate's float sums must not depend on arrival order."""
    return dict(sorted(uploads.items()))


def _accuracy(task: Task, params: Params, d: ClientData) -> tuple[float, float]:
    correct, loss = evaluate(task, params, d.x_test, d.y_test)
    return correct / d.num_test, loss / d.num_test


def _evaluation(rnd: int, clients: list[int], results: dict[int, ClientEval], has_global: bool) -> Evaluation:
    """Over the clients that answered (all of them in this process; a deployment may lose some)."""
    missing = [c for c in clients if c not in results]
    if missing:
        log.warning("round %d: %d of %d clients did not answer the evaluation; evaluated over the others",
                    rnd, len(missing), len(clients))
    clients = [c for c in clients if c in results]
    if not clients:
        raise FedarenaError(f"round {rnd}: no client answered the evaluation")
    r = [results[c] for c in clients]
    sizes = [e.num_test for e in r]
    global_accs = [e.global_acc for e in r] if has_global else None
    global_acc = sum(a * n for a, n in zip(global_accs, sizes)) / sum(sizes) if has_global else None
    return Evaluation(rnd, global_acc, list(clients), [e.acc for e in r], [e.loss for e in r], sizes, global_accs)


def _onboarding(data: FederatedData, new_clients: list[int], results: dict[int, OnboardEval], down: int) -> dict[str, Any]:
    ids = [data.client_ids[c] for c in new_clients]
    before = [results[c].before for c in new_clients]
    after = [results[c].after for c in new_clients]
    return {
        "clients": ids,
        "before": _spread(before),
        "after": _spread(after),
        "before_per_client": dict(zip(ids, before)),
        "after_per_client": dict(zip(ids, after)),
        "adaptation_steps": max(results[c].steps for c in new_clients),
        "bytes_down": down,
    }


def _spread(values: list[float]) -> dict[str, float]:
    """Unweighted mean, std and worst-10% mean (ceil(10%) clients, at least one)."""
    k = max(1, math.ceil(0.1 * len(values)))
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "worst10": float(np.mean(sorted(values)[:k]))}


def storage_bytes(states: dict[int, ClientState]) -> int:
    """Largest client-specific state any client keeps between rounds."""
    return max((nbytes(s.params) + nbytes(s.extra) for s in states.values()), default=0)
