"""Per-FedAvg: Fallah, Mokhtari, Ozdaglar, "Personalized Federated Learning with Theoretical Guarantees:
A Model-Agnostic Meta-Learning Approach", NeurIPS 2020, arXiv 2002.07948.

The server learns a meta-model w for the MAML objective F(w) = mean_i f_i(w - alpha grad f_i(w)) (Sec. 2):
a good start for one step of gradient descent on a client's own data. Algorithm 1, one local step of a
sampled client, with independent batches D, D' (and D'' for HF):
  w_tilde <- w - alpha grad f_i(w; D)
  w       <- w - beta (I - alpha H_i(w; D'')) grad f_i(w_tilde; D')
- `variant="fo"` (Per-FedAvg FO): the Hessian term is dropped, w <- w - beta grad f_i(w_tilde; D').
- `variant="hf"` (Per-FedAvg HF): H_i(w; D'') g, g = grad f_i(w_tilde; D'), is the finite difference
  [grad f_i(w + delta g; D'') - grad f_i(w - delta g; D'')] / (2 delta), the paper's Hessian-free
  approximation.
Each step goes through `local_sgd` (learning rate beta) on `meta_objective`, a pure function of one
batch of 2B (FO) or 3B (HF) samples that it splits into D, D' (, D''): its value is f_i(w_tilde; D') and
its gradient in w is exactly the update direction above (the inner gradient enters with a stop-gradient;
HF adds a zero-valued term whose gradient is -alpha H g). An epoch is one pass over the train split, so
a round sees the data once, as FedAvg, in half (FO) or a third (HF) of FedAvg's steps; a tiny last batch
with an empty part reuses D. The server averages as FedAvg (`aggregate` *is* FedAvg's); `global_model`
is the meta-model.

Personalization (evaluation and onboarding, the paper's use of the meta-model): `adapt_steps` steps of
gradient descent with step alpha on the client's whole train split from the meta-model (full-batch
`local_sgd` epochs: the MAML objective's inner step); nothing is kept between rounds (storage 0).

Inner gradients are computed with torch.func (so the vectorized engine can batch the objective); with
BatchNorm they use autograd on copies of the statistics (the vectorized engine runs BatchNorm models on
the reference engine anyway) and only the forward at w_tilde on D' updates the running statistics.

Defaults: beta = 0.001 and delta = 0.001, the values the FedTorch (whose help cites the paper for beta)
and FL-bench re-implementations take for the paper's experiments (Sec. 5), and the beta of the pFedMe
paper's Per-FedAvg runs; variant "fo"; adapt_steps = 1, the paper's one step. The inner step alpha is
the comparison's `train.lr`, not a field of its own, as in those re-implementations (they use the shared
learning rate as alpha: the pFedMe paper's runs use 0.005 for every algorithm). Budget: the paper runs
hundreds of rounds; in a short comparison beta = 0.001 leaves the meta-model nearly untrained (digits,
2 shards per client, 50 rounds, lr 0.05: 34% personal accuracy with beta = 0.001, 97% with beta = 0.05),
so set `per-fedavg.beta` to the comparison's learning rate for short runs. Tuning searches beta
log-uniformly on [1e-4, 0.5] and adapt_steps over the whole numbers 1..10; delta is not searched.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import TYPE_CHECKING, cast

import torch

from fedarena.core.algorithm import Batch, algorithm, task_loss
from fedarena.core.local_train import local_sgd
from fedarena.core.space import hp
from fedarena.core.types import SGD, Broadcast, ClientData, ClientState, FedarenaError, Onboarding, Params, Upload

if TYPE_CHECKING:
    from fedarena.tasks import Task

VARIANTS = ("fo", "hf")


def loss_grad(task: Task, params: Params, x: torch.Tensor, y: torch.Tensor, keys: list[str]) -> Params:
    """grad f(params; (x, y)) over `keys` as plain tensors (no graph, BatchNorm statistics untouched)."""
    point = {k: v.detach() for k, v in params.items()}
    frozen = {k: v.clone() for k, v in point.items() if k not in keys}
    if not frozen:
        # torch.func.grad returns Any; the gradient of a function of a Params dict is a Params dict
        return cast(Params, torch.func.grad(lambda p: task.loss(p, x, y))({k: point[k] for k in keys}))
    leaves = {k: point[k].requires_grad_(True) for k in keys}  # BatchNorm: torch.func cannot update buffers
    with torch.enable_grad():
        grads = torch.autograd.grad(task.loss({**frozen, **leaves}, x, y), [leaves[k] for k in keys])
    return dict(zip(keys, grads))


def parts(x: torch.Tensor, y: torch.Tensor, n: int) -> list[Batch]:
    """The batch as n consecutive parts of (almost) equal size; an empty part reuses the first."""
    size = -(-int(y.shape[0]) // n)
    out = [(x[i * size : (i + 1) * size], y[i * size : (i + 1) * size]) for i in range(n)]
    return [p if p[1].shape[0] else out[0] for p in out]


@algorithm("per-fedavg", "personalized", "Fallah et al., NeurIPS 2020, arXiv 2002.07948",
           server_step="mean", per_sample_risk=False,
           not_per_sample=("its objective is a meta-gradient (a MAML step inside the loss), not a per-sample loss"))
class PerFedAvg:
    beta: float = hp(0.001, low=1e-4, high=0.5, log=True,
                     source="pFedMe authors' Per-FedAvg runs (CharlieDinh/pFedMe README): beta in {0.001, 0.002, 0.003}; "
                            "FL-bench and PFLlib use 1e-3; widened to 0.5 above (short runs need ~0.05, see the "
                            "module docstring) and 1e-4 below")
    variant: str = "fo"
    delta: float = 0.001
    adapt_steps: int = hp(1, low=1, high=10,
                          source="Fallah et al. 2020, Sec. 2: one adaptation step (the MAML objective's); FL-bench "
                                 "fine-tunes at least one epoch (src/server/perfedavg.py); widened to 1..10")

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise FedarenaError(f"per-fedavg.variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        for name in ("beta", "delta"):
            if not getattr(self, name) > 0:
                raise FedarenaError(f"per-fedavg.{name} must be > 0, got {getattr(self, name)}")
        if self.adapt_steps < 0:
            raise FedarenaError(f"per-fedavg.adapt_steps must be >= 0, got {self.adapt_steps}")

    def meta_objective(self, task: Task, params: Params, *, broadcast: Broadcast, state: ClientState,
                       batch: Batch) -> torch.Tensor:
        """Value f_i(w_tilde; D'); gradient in w: grad f_i(w_tilde; D') [- alpha H_i(w; D'') g for HF]."""
        (xa, ya), (xb, yb), *hessian = parts(*batch, 3 if self.variant == "hf" else 2)
        keys = [k for k in params if k in task.parameter_names]
        alpha = task.sgd.lr
        g = loss_grad(task, params, xa, ya, keys)
        adapted = {**params, **{k: params[k] - alpha * g[k] for k in keys}}
        value = task.loss(adapted, xb, yb)
        if self.variant == "fo":
            return value
        (xc, yc), = hessian
        g_out = loss_grad(task, adapted, xb, yb, keys)
        plus = loss_grad(task, {**params, **{k: params[k] + self.delta * g_out[k] for k in keys}}, xc, yc, keys)
        minus = loss_grad(task, {**params, **{k: params[k] - self.delta * g_out[k] for k in keys}}, xc, yc, keys)
        hvp = {k: (plus[k] - minus[k]) / (2 * self.delta) for k in keys}
        return value - alpha * sum((hvp[k] * (params[k] - params[k].detach())).sum() for k in keys)

    def client_update(self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData,
                      rng: torch.Generator) -> tuple[Upload, ClientState]:
        """Algorithm 1's local steps (learning rate beta, batches of 2B or 3B); upload the meta-model."""
        batch = (3 if self.variant == "hf" else 2) * task.sgd.batch_size
        sgd = dataclasses.replace(task.sgd, lr=self.beta, batch_size=batch)
        objective = partial(self.meta_objective, task, broadcast=broadcast, state=state)
        x, y = data.x_train, data.y_train
        w, loss, steps = local_sgd(objective, broadcast.params, task.parameter_names, x, y, sgd, rng)
        upload = Upload(params=w, num_samples=data.num_train, metrics={"train_loss": loss, "steps": steps})
        return upload, state

    local_objective = task_loss  # FedAvg's (named here: `onboard` calls it)

    def onboard(self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData,
                rng: torch.Generator) -> Onboarding:
        """`adapt_steps` full-batch gradient steps with step alpha from the meta-model."""
        start = broadcast.params
        if self.adapt_steps == 0:
            return Onboarding(before=start, after=start, steps=0)
        sgd = SGD(epochs=self.adapt_steps, batch_size=data.num_train, lr=task.sgd.lr)
        objective = partial(self.local_objective, task, broadcast=broadcast, state=state)
        adapted, _, steps = local_sgd(objective, start, task.parameter_names, data.x_train, data.y_train, sgd, rng)
        return Onboarding(before=start, after=adapted, steps=steps)

    def personalize(self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData,
                    rng: torch.Generator) -> Params:
        return self.onboard(task, broadcast, state, data, rng).after
