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
from fedarena.core.types import Broadcast, ClientData, ClientState, FedarenaError, FederatedData, Params, ServerState
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
    initial: Params | None = None,
    on_round: Callable[[int], None] | None = None,
) -> AlgorithmRun:
    """Train `algo` for `rounds` rounds on `data` and evaluate it; see the module docstring.

    `new_clients` never train (and are not in `centralized`'s pool); after the last round they are
    onboarded with the algorithm's `onboard` step and reported separately.
    """
    execute = EXECUTORS[engine](task, algo.name)
    start = time.perf_counter()
    # the same initial model for every algorithm of a comparison
    full = initial if initial is not None else task.init_params(torch_rng(seed, "init"))
    server = algo.init_server(split(full, algo.personal)[0])
    held_out = set(new_clients)
    training = [c for c in range(data.num_clients) if c not in held_out]
    pooled = not algo.federated  # one pseudo-client 0 holding the training clients' data
    if pooled:
        pool = data.pooled(training)
        client_data, clients = (lambda c: pool), [0]
    else:
        client_data, clients = data.client, training
    states = {c: algo.init_client(full) for c in clients}
    out = AlgorithmRun(ledger=Ledger(verify=execute.verify_messages))
    train_time = 0.0
    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        chosen = sample_clients(seed, rnd, clients, clients_per_round)
        calls = []
        for c in chosen:
            msg = algo.broadcast(server, c)
            b = msg if pooled else out.ledger.send_down(rnd, c, msg)
            calls.append(partial(algo.client_update, task, b, states[c], client_data(c), torch_rng(seed, "client", rnd, c)))
        uploads = {}
        for c, (upload, state) in zip(chosen, execute.map(calls)):
            states[c] = state
            uploads[c] = upload if pooled else out.ledger.send_up(rnd, c, upload)
            out.train_loss[(rnd, c)] = float(upload.metrics.get("train_loss", float("nan")))
        server = algo.aggregate(server, uploads)
        train_time += time.perf_counter() - t0
        out.train_seconds.append(train_time)
        out.sampled.append([] if pooled else chosen)
        if rnd % eval_every == 0 or rnd == rounds:
            state_of = (lambda c: states[0]) if pooled else states.__getitem__
            out.evaluations.append(_evaluate(algo, task, data, server, training, state_of, seed, rnd, execute))
        if on_round:
            on_round(rnd)
    if held_out:
        out.new_clients = _onboard(algo, task, data, server, sorted(held_out), full, seed, execute)
    out.server, out.states = server, states
    execute.close()
    out.engine = {"name": engine, **execute.summary()}
    out.wall_seconds = time.perf_counter() - start
    return out


def _accuracy(task: Task, params: Params, d: ClientData) -> tuple[float, float]:
    correct, loss = evaluate(task, params, d.x_test, d.y_test)
    return correct / d.num_test, loss / d.num_test


def _evaluate(algo, task, data, server, clients, state_of, seed, rnd, execute) -> Evaluation:
    accs, losses, sizes, global_accs = [], [], [], []
    g = algo.global_model(server)
    models = execute.map([
        partial(algo.personalize, task, algo.broadcast(server, c), state_of(c), data.client(c),
                torch_rng(seed, "personalize", rnd, c))
        for c in clients
    ])
    for c, params in zip(clients, models):
        d = data.client(c)
        acc, loss = _accuracy(task, params, d)
        accs.append(acc)
        losses.append(loss)
        sizes.append(d.num_test)
        if g is not None:
            global_accs.append(_accuracy(task, g, d)[0])
    global_acc = None
    if g is not None:
        global_acc = sum(a * n for a, n in zip(global_accs, sizes)) / sum(sizes)
    return Evaluation(rnd, global_acc, list(clients), accs, losses, sizes, global_accs if g is not None else None)


def _onboard(algo, task, data, server, new_clients, initial, seed, execute) -> dict[str, Any]:
    """Each new client downloads the shared state only and adapts locally (no re-federation)."""
    before, after, steps, down, calls = [], [], [], 0, []
    for c in new_clients:
        payload = encode(algo.broadcast(server, c))
        down += len(payload)
        b = decode(payload, Broadcast)
        fresh = algo.init_client({**initial, **b.params})
        calls.append(partial(algo.onboard, task, b, fresh, data.client(c), torch_rng(seed, "onboard", c)))
    for c, result in zip(new_clients, execute.map(calls)):
        d = data.client(c)
        before.append(_accuracy(task, result.before, d)[0])
        after.append(_accuracy(task, result.after, d)[0])
        steps.append(result.steps)
    return {
        "clients": [data.client_ids[c] for c in new_clients],
        "before": _spread(before),
        "after": _spread(after),
        "before_per_client": dict(zip((data.client_ids[c] for c in new_clients), before)),
        "after_per_client": dict(zip((data.client_ids[c] for c in new_clients), after)),
        "adaptation_steps": max(steps),
        "bytes_down": down,
    }


def _spread(values: list[float]) -> dict[str, float]:
    """Unweighted mean, std and worst-10% mean (ceil(10%) clients, at least one)."""
    k = max(1, math.ceil(0.1 * len(values)))
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "worst10": float(np.mean(sorted(values)[:k]))}


def storage_bytes(states: dict[int, ClientState]) -> int:
    """Largest client-specific state any client keeps between rounds."""
    return max((nbytes(s.params) + nbytes(s.extra) for s in states.values()), default=0)
