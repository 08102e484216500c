"""The vectorized engine: a round's clients train together (and personalize together at evaluation).

Each client's call (`client_update`, `personalize`, `onboard`) runs in a worker thread of its own. Whenever it calls
`local_sgd`, the call is handed to this engine (through `SGD_BATCHER`, set in the worker's own
context) and the worker waits. Once every live worker is waiting or done, the engine runs the
collected requests: compatible ones (same objective, keys, shapes and SGD settings) as one
vmapped computation per step (`core.batched`), the rest one by one. Algorithms stay as they are:
one `local_objective`, one `client_update`, two engines.

Falls back, with a logged reason, to the reference engine for models with BatchNorm (running
statistics are updated in place by the forward pass, which vmap cannot batch) and when clients train
with DP-SGD (`fall_back`: Opacus's per-sample gradients are one client's at a time). Work an algorithm
does outside `local_sgd` (e.g. pFedMe's inner solver) runs in its worker, not batched; the engine
logs how many SGD calls it batched.

Memory: a round's calls run in lockstep chunks of at most :data:`LOCKSTEP_CHUNK` clients, one chunk after the other
(`map`), so the engine holds one chunk's worker threads, stacked parameters, gradients and padded batches at a time,
not the whole round's. Measured on bench --scale (FedAvg, 10,000 clients, 1,000 per round, synthetic MLP): the
round's lockstep over all 1,000 clients peaked at 2,326-2,386 MB RSS; see benchmarks/README.md, "Scale". Chunks
are balanced (sizes differ by at most one), so a chunk of one client, which would run the reference loop, happens
only when the call itself is one client's.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from torch import nn

from fedarena.core.batched import NotBatchable, SGDRequest, batched_local_sgd, group_key
from fedarena.core.local_train import SGD_BATCHER, local_sgd
from fedarena.core.types import FedarenaError

log = logging.getLogger(__name__)

# At most this many clients train in one lockstep (one batched computation per step). 100 is bench's mlp-100 round
# (so that workload runs as one chunk, as before); a client's numbers do not depend on how many clients share its
# batched step (tests/sim/test_vectorized.py checks chunked against unchunked bit for bit on the MLP).
LOCKSTEP_CHUNK = 100


def _has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


class VectorizedExecutor:
    """Stateful per run, so that reasons and statistics are logged once per algorithm."""

    verify_messages = False  # see Ledger.verify

    def __init__(self, task: Any, algo_name: str, chunk: int | None = None) -> None:
        chunk = LOCKSTEP_CHUNK if chunk is None else chunk
        if chunk < 1:
            raise FedarenaError(f"the vectorized engine's lockstep chunk must be >= 1 client, got {chunk}")
        self.chunk = chunk
        self.batched = 0
        self.single = 0
        self.reasons: set[str] = set()
        self.pool: ThreadPoolExecutor | None = None  # one worker per client call, reused
        self.fallback = False
        self.fallback_reason: str | None = None  # why every call ran client by client (None: batched)
        if _has_batchnorm(task.module):
            self.fall_back(f"{algo_name}: falls back to the reference engine: BatchNorm statistics are updated in place")

    def fall_back(self, reason: str) -> None:
        """Run every call client by client (the reference engine's way), logging why."""
        self.fallback = True
        self.fallback_reason = self.fallback_reason or reason
        self._note(reason)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    def map(self, calls: list) -> list:
        """Run one call per client (client_update, personalize, onboard) in lockstep workers, at most
        `self.chunk` clients at a time (balanced chunks, in order); results in call order."""
        if self.fallback or len(calls) <= 1:
            return [call() for call in calls]
        out: list = []
        for part in chunks(calls, self.chunk):
            if self.pool is None or self.pool._max_workers < len(part):
                self.close()
                self.pool = ThreadPoolExecutor(max_workers=len(part), thread_name_prefix="fedarena-client")
            out.extend(_Lockstep(self, part).run(self.pool))
        return out

    def _note(self, reason: str) -> None:
        if reason not in self.reasons:
            self.reasons.add(reason)
            log.warning("vectorized engine: %s", reason)

    def run_requests(self, pending: dict[int, SGDRequest]) -> dict[int, tuple]:
        groups: dict[Any, list[int]] = {}
        out: dict[int, tuple] = {}
        for i in sorted(pending):
            try:
                groups.setdefault(group_key(pending[i]), []).append(i)
            except NotBatchable as exc:
                self._note(f"a local_sgd call runs client by client: {exc}")
                out[i] = _plain(pending[i])
                self.single += 1
        for members in groups.values():
            if len(members) == 1:
                out[members[0]] = _plain(pending[members[0]])
                self.single += 1
                continue
            for i, result in zip(members, batched_local_sgd([pending[i] for i in members])):
                out[i] = result
            self.batched += len(members)
        return out

    def summary(self) -> dict[str, Any]:
        """`fallback`: the reason the whole run went client by client (the reference engine's way), else None;
        `notes`: every logged reason, including single calls that could not join a batch."""
        return {"batched_sgd_calls": self.batched, "single_sgd_calls": self.single, "notes": sorted(self.reasons),
                "fallback": self.fallback_reason}


def chunks(items: list, most: int) -> list[list]:
    """`items` in order, cut into the fewest chunks of at most `most`, their sizes differing by at most one
    (1,001 items by 100: eleven chunks of 91, not ten of 100 and one of 1)."""
    count = -(-len(items) // most)
    size, extra = divmod(len(items), count) if items else (0, 0)
    out, start = [], 0
    for i in range(count):
        end = start + size + (i < extra)
        out.append(items[start:end])
        start = end
    return out


def _plain(req: SGDRequest) -> tuple:
    return local_sgd(req.objective, req.params, req.trainable, req.x, req.y, req.sgd, req.rng, req.epochs)


class _Lockstep:
    """Runs client_updates in worker threads and serves their local_sgd calls in batches."""

    def __init__(self, executor: VectorizedExecutor, calls: list):
        self.executor, self.calls = executor, calls
        lock = threading.RLock()
        # one condition for the engine and one per worker, all on one lock: a notification wakes exactly
        # the thread it concerns (notify_all on a shared condition woke every waiting worker at every
        # submission, O(clients^2) wake-ups per round)
        self.cond = threading.Condition(lock)
        self.worker_conds = [threading.Condition(lock) for _ in calls]
        self.pending: dict[int, SGDRequest] = {}
        self.results: dict[int, tuple | None] = {}  # None: the batch failed (run() re-raises)
        self.live = len(calls)
        self.outputs: list[Any] = [None] * len(calls)
        self.errors: dict[int, BaseException] = {}

    def _worker(self, i: int) -> None:
        SGD_BATCHER.set(lambda req: self._submit(i, req))  # this thread's own context only
        # One thread runs at a time: a worker holds the (reentrant) condition lock while it runs client
        # code and releases it only while it waits for its batched result. Client code therefore never
        # runs concurrently (the model template is shared: functional_call swaps its parameters).
        with self.cond:
            try:
                self.outputs[i] = self.calls[i]()
            except BaseException as exc:  # re-raised by run() in the engine's thread
                self.errors[i] = exc
            finally:
                self.live -= 1
                self.cond.notify()

    def _submit(self, i: int, req: SGDRequest) -> tuple:
        with self.cond:
            self.pending[i] = req
            self.cond.notify()
            self.worker_conds[i].wait_for(lambda: i in self.results)
            result = self.results.pop(i)
            if result is None:  # the batch failed: run() re-raises the engine's error, not this one
                raise RuntimeError("the batched local_sgd this client waited for failed")
            return result

    def run(self, pool: ThreadPoolExecutor) -> list:
        futures = [pool.submit(self._worker, i) for i in range(len(self.calls))]
        with self.cond:
            while True:
                self.cond.wait_for(lambda: len(self.pending) == self.live)
                if self.live == 0:
                    break
                batch, self.pending = self.pending, {}
                try:
                    self.results.update(self.executor.run_requests(batch))
                except BaseException as exc:
                    self.errors[-1] = exc
                    self.results.update({i: None for i in batch})  # release the workers; they fail
                for i in batch:
                    self.worker_conds[i].notify()
        for f in futures:
            f.result()
        if self.errors:
            raise self.errors[min(self.errors)]
        return self.outputs
