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

from fedarena.core.codec import Ledger
from fedarena.core.params import finite, in_client_order, nbytes, split
from fedarena.core.rng import derive_seeds, numpy_rng
from fedarena.core.types import Broadcast, ClientState, FedarenaError, FederatedData, Params, ServerState, Upload
from fedarena.data.spec import new_client_count
from fedarena.privacy import leakage
from fedarena.sim.runtime import ClientEval, OnboardEval, Runtime, RuntimeFactory, initial_model
from fedarena.tasks import Task

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
        ids = np.asarray(clients, dtype=np.int64)
        priority = derive_seeds(seed, "sample", rnd, last=ids)  # derive_seed(seed, "sample", rnd, c), all at once
        chosen = ids[np.lexsort((ids, priority))[:per_round]].tolist()  # by (priority, client)
    drop = set(exclude)
    return sorted(c for c in chosen if c not in drop)


def select_new_clients(seed: int, num_clients: int, fraction: float) -> list[int]:
    """The clients held out of training: how many is the data spec's rule (`new_client_count`), which ones
    is drawn from the seed."""
    k = new_client_count(num_clients, fraction)
    if k == 0:
        return []
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
    per_client_val_acc: list[float | None] | None = None  # personal model on the client's validation split
    val_sizes: list[int] | None = None

    @property
    def val_personal_acc_mean(self) -> float | None:
        """Sample-weighted over the clients with a validation split: total correct / total validation samples."""
        pairs = self._val_pairs()
        total = sum(n for _, n in pairs)
        return sum(a * n for a, n in pairs) / total if total else None

    @property
    def val_personal_acc_worst10(self) -> float | None:
        pairs = self._val_pairs()
        return _spread([a for a, _ in pairs])["worst10"] if pairs else None

    def _val_pairs(self) -> list[tuple[float, int]]:
        if self.per_client_val_acc is None or self.val_sizes is None:
            return []
        return [(a, n) for a, n in zip(self.per_client_val_acc, self.val_sizes) if a is not None and n > 0]

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
    diverged: int | None = None  # the round after which the server's model had NaN/Inf values (training stopped)
    attack_success: float | None = None  # a targeted attack's success on the benign clients (experiments/attack.py)


@dataclass(frozen=True)
class RunSpec:
    """What the round loop runs: `rounds` rounds of `clients_per_round` sampled clients, an evaluation every
    `eval_every` rounds and at the last one, every random stream derived from `seed`. `new_clients` never
    train (and are not in `centralized`'s pool); after the last round they are onboarded with the
    algorithm's `onboard` step and reported separately. `exclude`d clients take no part at all (neither
    trained nor evaluated): a run that never had them. `malicious` clients train (their uploads go through
    the run's `poison`) but every evaluation is over the benign training clients only."""

    rounds: int
    clients_per_round: int
    eval_every: int
    seed: int
    new_clients: tuple[int, ...] = ()
    exclude: tuple[int, ...] = ()
    malicious: tuple[int, ...] = ()  # training clients that run an attack (`poison`): trained, never evaluated


Record = Callable[[int, ServerState, ServerState, dict[int, Upload], dict[int, ClientState]], None]
# poison(round, uploads, broadcasts): the uploads as the malicious clients of a simulated attack replace theirs
Poison = Callable[[int, dict[int, Upload], dict[int, Broadcast]], dict[int, Upload]]
# combine(server, uploads): what the algorithm's `aggregate` is handed in their place (a robust rule's one upload)
Combine = Callable[[ServerState, dict[int, Upload]], dict[int, Upload]]


@dataclass(frozen=True)
class Hooks:
    """Callbacks of a run: `on_start(server)` before round 1 (not on resume); `record(round, server_before,
    server_after, uploads, states)` after every round (the states of the round's clients, where the runtime
    sees them) — it may keep what `fedarena forget` needs; `on_round(round)` after every round;
    `on_evaluation(evaluation)` after every evaluation (tuning reports it to its pruner, which may stop the run by
    raising); `on_checkpoint(round, run)` after every round and its evaluation, before `on_round`, with the run so far
    (its `server`, `states`, `engine` and `wall_seconds` as of this round): what a restart continues from (a
    deployment's resume state, experiments/deploy_resume.py)."""

    on_start: Callable[[ServerState], None] | None = None
    record: Record | None = None
    on_round: Callable[[int], None] | None = None
    on_evaluation: Callable[[Evaluation], None] | None = None
    on_checkpoint: Callable[[int, AlgorithmRun], None] | None = None


def run_algorithm(algo: Any, task: Task, data: FederatedData, spec: RunSpec, runtime: RuntimeFactory, *,
                  privacy: Any = None, dpsgd: Any = None, resume: Checkpoint | None = None,
                  hooks: Hooks = Hooks(), initial: Params | None = None, poison: Poison | None = None,
                  combine: Combine | None = None) -> AlgorithmRun:
    """Train `algo` on `data` as `spec` says, its client work on `runtime` (`sim.local.local_runtime(engine)`
    in this process, or a Flower runtime); see the module docstring.

    `privacy` (privacy/round.Privacy) makes every round private; `dpsgd` (privacy/dpsgd.SampleLevel) makes the
    clients' local SGD DP-SGD, accounted per client. `resume` continues from a checkpoint (rounds before it
    are not rerun, not evaluated and not counted). `initial` replaces the run's initial model. `poison` simulates the
    malicious clients' attack on the uploads; `combine` is a robust server step's rule (neither with `privacy`: the
    experiment layer refuses it). A server model with NaN/Inf values ends training: the run is `diverged` and its
    last evaluation gives every client accuracy 0."""
    start = time.perf_counter()
    seed, rounds = spec.seed, spec.rounds
    # the same initial model for every algorithm of a comparison
    full = initial if initial is not None else initial_model(task, seed)
    server = algo.init_server(split(full, algo.personal)[0])
    held_out = set(spec.new_clients)
    eligible = [c for c in range(data.num_clients) if c not in held_out]
    training = [c for c in eligible if c not in set(spec.exclude)]
    benign = [c for c in training if c not in set(spec.malicious)]  # evaluated (every training client without attack)
    out = AlgorithmRun()
    clients: Runtime = runtime(algo, task, data, training, full, seed, dpsgd)
    out.ledger = clients.ledger
    if resume is not None:
        server = resume.server
        clients.states.update({c: s for c, s in resume.states.items() if c in clients.states})
    if privacy is not None:
        rounds = privacy.rounds_allowed(rounds)
    if hooks.on_start and resume is None:
        hooks.on_start(server)
    train_time = 0.0
    try:
        for rnd in range(1 if resume is None else resume.round + 1, rounds + 1):
            t0 = time.perf_counter()
            # ranked over every eligible client, excluded ones dropped after: excluding a client changes
            # no other client's participation (the run that never had it)
            ranked = clients.ids if clients.pooled else eligible
            chosen = sample_clients(seed, rnd, ranked, spec.clients_per_round,
                                    exclude=() if clients.pooled else spec.exclude)
            if privacy is not None:
                chosen = privacy.sample(rnd, clients.ids, chosen)
            broadcasts = {c: algo.broadcast(server, c) for c in chosen}
            before = server
            if privacy is not None:  # what the server may see of the uploads (privacy/round.py): {} when a
                uploads, server = privacy.train_and_aggregate(algo, server, clients, rnd, broadcasts)  # round aborts
            else:
                uploads = in_client_order(clients.train(rnd, broadcasts))
                if poison is not None:
                    uploads = poison(rnd, uploads, broadcasts)
                server = algo.aggregate(server, combine(server, uploads) if combine is not None else uploads)
            for c, upload in uploads.items():
                out.train_loss[(rnd, c)] = float(upload.metrics.get("train_loss", float("nan")))
            if hooks.record:
                hooks.record(rnd, before, server, uploads, {c: clients.states[c] for c in uploads if c in clients.states})
            train_time += time.perf_counter() - t0
            out.train_seconds.append(train_time)
            out.sampled.append([] if clients.pooled else sorted(uploads))
            if not finite(server.params):
                log.warning("%s diverged in round %d (NaN/Inf in the server's model): training stops", algo.name, rnd)
                out.diverged = rnd
                out.evaluations.append(_diverged(rnd, benign, data, algo.global_model(server) is not None))
                break
            if rnd % spec.eval_every == 0 or rnd == rounds:
                g = algo.global_model(server)
                results = clients.evaluate(rnd, {c: algo.broadcast(server, c) for c in benign}, g, membership=rnd == rounds)
                out.evaluations.append(_evaluation(rnd, benign, results, g is not None))
                if hooks.on_evaluation:
                    hooks.on_evaluation(out.evaluations[-1])
                measured = [r for r in results.values() if r.member_auc is not None]
                if rnd == rounds and measured:  # (a Flower runtime's clients do not measure it)
                    out.membership = leakage.summarize([r.member_auc for r in measured],
                                                       [r.global_member_auc for r in measured])
            if hooks.on_checkpoint:
                out.server, out.states, out.engine = server, clients.states, clients.summary()
                out.wall_seconds = time.perf_counter() - start
                hooks.on_checkpoint(rnd, out)
            if hooks.on_round:
                hooks.on_round(rnd)
        if held_out and out.diverged is None:
            news = sorted(held_out)
            onboarded = clients.onboard({c: algo.broadcast(server, c) for c in news}, full)
            out.new_clients = _onboarding(data, news, onboarded, clients.onboard_bytes)
    finally:
        clients.close()
    out.server, out.states, out.privacy, out.sample_dp = server, clients.states, privacy, dpsgd
    out.engine = clients.summary()
    out.wall_seconds = time.perf_counter() - start
    return out


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
    return Evaluation(rnd, global_acc, list(clients), [e.acc for e in r], [e.loss for e in r], sizes, global_accs,
                      [e.val_acc for e in r], [e.num_val for e in r])


def _diverged(rnd: int, clients: list[int], data: FederatedData, has_global: bool) -> Evaluation:
    """A diverged model's evaluation: accuracy 0 (and infinite loss) for every client, the model not run."""
    sizes = [data.client(c).num_test for c in clients]
    zeros = [0.0] * len(clients)
    return Evaluation(rnd, 0.0 if has_global else None, list(clients), zeros, [math.inf] * len(clients), sizes,
                      zeros if has_global else None)


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
