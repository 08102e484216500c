"""Local minibatch SGD on a per-batch objective: the one place clients' training loops live.

The objective is called as ``objective(params, batch=(x, y))`` and must be a pure torch function
(no ``.item()``, no Python branching on tensor values). Write it as
``functools.partial(fn, task, broadcast=..., state=..., **named_tensors)``: the bound tensors are
what differs between clients, which is what lets an engine stack clients and vmap one objective.

An epoch is one pass over the client's train split in an order drawn from the client's generator
(`torch.randperm` on the CPU, moved to the data's device); the last batch may be smaller (PyTorch's
``drop_last=False``); each step is
``w <- w + (-lr) * grad`` (one ``add`` with ``alpha=-lr``, the kernel the vectorized engine uses
too) on the batch-mean objective for the trainable keys only (buffers such as
BatchNorm statistics are carried along and updated by the forward pass itself).

With sample-level DP on, the engine sets `PRIVATE_SGD` for a client's training and the same call runs DP-SGD
(`fedarena.privacy.dpsgd`: Poisson lots, per-sample clipping, Gaussian noise) instead.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Callable, Iterable

import torch

from fedarena.core.batched import SGDRequest
from fedarena.core.types import SGD, Params

Objective = Callable[..., torch.Tensor]  # objective(params, batch=(x, y)) -> scalar

# Set by the vectorized engine inside each client's worker thread (its own context): local_sgd then
# hands its request to the engine, which runs all clients' requests of a step as one batched call.
SGD_BATCHER: ContextVar[Callable[[SGDRequest], tuple[Params, float, int]] | None] = ContextVar(
    "fedarena_sgd_batcher", default=None
)

# Set by the engine around one client's training when sample-level DP is on (`privacy.dpsgd`): local_sgd then
# hands its request to DP-SGD (Opacus) instead of running plain SGD. It takes precedence over SGD_BATCHER
# (DP-SGD cannot be batched across clients; the vectorized engine falls back to client-by-client execution).
PRIVATE_SGD: ContextVar[Callable[[SGDRequest], tuple[Params, float, int]] | None] = ContextVar(
    "fedarena_private_sgd", default=None
)


def local_sgd(
    objective: Objective,
    params: Params,
    trainable: Iterable[str],
    x: torch.Tensor,
    y: torch.Tensor,
    sgd: SGD,
    rng: torch.Generator,
    epochs: int | None = None,
) -> tuple[Params, float, int]:
    """Run `epochs` (default `sgd.epochs`) of SGD; returns new params, the mean batch loss and the
    number of steps taken."""
    wanted = frozenset(trainable)
    submit = PRIVATE_SGD.get() or SGD_BATCHER.get()
    if submit is not None:
        return submit(SGDRequest(objective, params, wanted, x, y, sgd, rng, sgd.epochs if epochs is None else epochs))
    trainable = [k for k in params if k in wanted]
    work = {k: v.detach().clone() for k, v in params.items()}
    n = int(y.shape[0])
    losses = []
    for _ in range(sgd.epochs if epochs is None else epochs):
        order = torch.randperm(n, generator=rng).to(x.device)  # drawn on the CPU (the same on every device)
        for start in range(0, n, sgd.batch_size):
            idx = order[start : start + sgd.batch_size]
            leaves = {k: work[k].requires_grad_(True) for k in trainable}
            loss = objective({**work, **leaves}, batch=(x[idx], y[idx]))
            grads = torch.autograd.grad(loss, [leaves[k] for k in trainable], allow_unused=True)
            with torch.no_grad():
                for k, g in zip(trainable, grads):
                    work[k] = leaves[k].detach().add(g, alpha=-sgd.lr) if g is not None else leaves[k].detach()
            losses.append(float(loss.detach()))
    return work, (sum(losses) / len(losses) if losses else float("nan")), len(losses)
