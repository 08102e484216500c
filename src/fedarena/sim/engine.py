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
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fedarena.core.codec import Ledger
from fedarena.core.params import nbytes, split
from fedarena.core.rng import derive_seed, torch_rng
from fedarena.core.types import ClientData, ClientState, FederatedData, Params, ServerState, Upload
from fedarena.tasks import Task, evaluate

log = logging.getLogger(__name__)


def sample_clients(seed: int, rnd: int, num_clients: int, per_round: int, exclude: Sequence[int] = ()) -> list[int]:
    """The `per_round` clients with the smallest priority u(seed, round, client), in client order.

    Priorities are ranked over all clients and excluded clients are dropped afterwards, so removing
    a client never changes whether another client is sampled (exact retraining relies on this).
    """
    if per_round >= num_clients:
        chosen = range(num_clients)
    else:
        priority = [derive_seed(seed, "sample", rnd, c) for c in range(num_clients)]
        chosen = sorted(range(num_clients), key=lambda c: (priority[c], c))[:per_round]
    drop = set(exclude)
    return sorted(c for c in chosen if c not in drop)


@dataclass(frozen=True)
class Evaluation:
    round: int
    global_acc: float | None
    per_client_acc: list[float]
    per_client_loss: list[float]
    test_sizes: list[int]

    @property
    def personal_acc_mean(self) -> float:
        """Sample-weighted over clients: total correct / total test samples."""
        total = sum(self.test_sizes)
        return sum(a * n for a, n in zip(self.per_client_acc, self.test_sizes)) / total

    @property
    def personal_acc_std(self) -> float:
        return float(np.std(self.per_client_acc))

    @property
    def personal_acc_worst10(self) -> float:
        k = max(1, math.ceil(0.1 * len(self.per_client_acc)))
        return float(np.mean(sorted(self.per_client_acc)[:k]))


@dataclass
class AlgorithmRun:
    """Everything one algorithm's run produced (the caller turns it into summary.json rows)."""

    evaluations: list[Evaluation] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)  # cumulative, per round (no evaluation)
    sampled: list[list[int]] = field(default_factory=list)
    train_loss: dict[tuple[int, int], float] = field(default_factory=dict)
    ledger: Ledger = field(default_factory=Ledger)
    server: ServerState | None = None
    states: dict[int, ClientState] = field(default_factory=dict)
    wall_seconds: float = 0.0


ClientJob = tuple[int, Any, ClientState, ClientData, torch.Generator]  # (client, broadcast, state, data, rng)


def reference_executor(algo: Any, task: Task, jobs: list[ClientJob]) -> list[tuple[Upload, ClientState]]:
    """The reference engine: clients one after another, the ground truth."""
    return [algo.client_update(task, b, s, d, g) for (_, b, s, d, g) in jobs]


EXECUTORS: dict[str, Callable] = {"reference": reference_executor}


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
    initial: Params | None = None,
    on_round: Callable[[int], None] | None = None,
) -> AlgorithmRun:
    """Train `algo` for `rounds` rounds on `data` and evaluate it; see the module docstring."""
    execute = EXECUTORS[engine]
    start = time.perf_counter()
    # the same initial model for every algorithm of a comparison
    full = initial if initial is not None else task.init_params(torch_rng(seed, "init"))
    shared, _ = split(full, algo.personal)
    server = algo.init_server(shared)
    pooled = not algo.federated
    num_clients = 1 if pooled else data.num_clients
    client_data = (lambda c: data.pooled()) if pooled else data.client
    states = {c: algo.init_client(full) for c in range(num_clients)}
    out = AlgorithmRun()
    train_time = 0.0
    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        chosen = [0] if pooled else sample_clients(seed, rnd, num_clients, clients_per_round)
        jobs = []
        for c in chosen:
            msg = algo.broadcast(server, c)
            b = msg if pooled else out.ledger.send_down(rnd, c, msg)
            jobs.append((c, b, states[c], client_data(c), torch_rng(seed, "client", rnd, c)))
        uploads = {}
        for (c, *_), (upload, state) in zip(jobs, execute(algo, task, jobs)):
            states[c] = state
            uploads[c] = upload if pooled else out.ledger.send_up(rnd, c, upload)
            out.train_loss[(rnd, c)] = float(upload.metrics.get("train_loss", float("nan")))
        server = algo.aggregate(server, uploads)
        train_time += time.perf_counter() - t0
        out.train_seconds.append(train_time)
        out.sampled.append(chosen)
        if rnd % eval_every == 0 or rnd == rounds:
            out.evaluations.append(_evaluate(algo, task, data, server, states, pooled, seed, rnd))
        if on_round:
            on_round(rnd)
    out.server, out.states = server, states
    out.wall_seconds = time.perf_counter() - start
    return out


def _evaluate(algo, task, data, server, states, pooled, seed, rnd) -> Evaluation:
    accs, losses, sizes = [], [], []
    for c in range(data.num_clients):
        d = data.client(c)
        state = states[0] if pooled else states[c]
        params: Params = algo.personalize(task, algo.broadcast(server, c), state, d, torch_rng(seed, "personalize", rnd, c))
        correct, loss = evaluate(task, params, d.x_test, d.y_test)
        accs.append(correct / d.num_test)
        losses.append(loss / d.num_test)
        sizes.append(d.num_test)
    g = algo.global_model(server)
    global_acc = None
    if g is not None:
        correct, _ = evaluate(task, g, data.x_test, data.y_test)
        global_acc = correct / int(data.y_test.shape[0])
    return Evaluation(rnd, global_acc, accs, losses, sizes)


def storage_bytes(states: dict[int, ClientState]) -> int:
    """Largest client-specific state any client keeps between rounds."""
    return max((nbytes(s.params) + nbytes(s.extra) for s in states.values()), default=0)
