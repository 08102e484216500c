"""MOCHA: Smith, Chiang, Sanjabi, Talwalkar, "Federated Multi-Task Learning", NeurIPS 2017,
arXiv 1705.10467. Reference code: github.com/gingsmith/fmtl (`opt/run_mocha.m`).

Objective (eqs. 1-2), one task t per client, over its linear head w_t (weight and bias; the bias is
the weight of a constant feature 1, so it is regularized too):
    min_{W, Sigma}  sum_t mean_i l(w_t; x_ti, y_ti) + lam1 tr(W Sigma^-1 W^T) + lam2 ||W||_F^2,
    Sigma PSD, tr(Sigma) = m (number of tasks).
The paper's Omega is Sigma^-1: its closed form (W^T W)^(1/2) / tr((W^T W)^(1/2)) (Zhang & Yeung 2010)
is the task *covariance* Sigma, and the authors' code regularizes with `Omega = inv(Sigma)`, which
is what makes related tasks attract. Per-task mean losses, as `compute_primal.m` (eq. 1 has sums).

Solver: the paper's primal-dual method (Algorithm 1), not SGD. With K = (2 (lam1 Sigma^-1 +
lam2 I))^-1 (`_kernel`) and each task's dual image v_t = (1/n_t) X_t^T alpha_t, w(alpha) = V K:
w_t = K_tt v_t + sum_{s!=t} K_ts v_s. `broadcast` sends client t K_tt, sigma' K_tt and the others'
part sum_{s!=t} K_ts v_s (never w_t). `client_update` runs SDCA on the data-local subproblem (eq. 4,
with its sigma' K_tt ||X_t dalpha||^2 / 2 term) (`_sdca`): per sample, in a random order,
dalpha = s (u - alpha_i) with u = -dl/dz at the local view of w_t and s = gamma / (gamma + sigma'
K_tt ||x||^2 / n_t). This is SDCA's step for (1/gamma)-smooth losses (Shalev-Shwartz & Zhang, JMLR
2013, "option IV"), which never decreases the dual; for the squared loss it is the exact coordinate
maximizer, and the hinge-loss closed form of `run_mocha.m` does not exist for softmax. The client
uploads dv_t under the head keys (MOCHA's server knows every task's weights: uploads_personal);
`aggregate` adds it to V (Alg. 1's reduce step) and every `inner_iters` rounds sets Sigma in closed
form from W = V K (`_omega_step`); w(alpha) then follows the new Sigma, as in Alg. 1.

Deliberate differences:
- sigma' per task, sum_s |K_ts| / K_tt: the Gershgorin bound behind the code's global
  rho = max_t of it, tighter for weakly coupled tasks.
- tr(Sigma) = m instead of 1 (the paper's lambda is our lam1 / m): a client seen for the first time
  joins as an uncorrelated task with Sigma_tt = 1 and nobody else's Sigma changes. W starts at 0
  (alpha = 0), as in the code, not at the comparison's initial model.
- Eigenvalues of W^T W floored at 1e-7 always (the code: when one is negative).
- Models other than `mlr`: MOCHA learns the head only, on the features of the initial (random, never
  trained) body kept by each client, the only way to keep the paper's convex problem. Use mlr.
- lam1 = lam2 = 0 has no dual (R must be strongly convex) and is refused; lam1 = 0 makes K diagonal:
  each client solves its own ridge problem by SDCA, independent of the others.
- Onboarding (not in the paper): a new client starts from the mean of the learned w_t and runs the
  same SDCA on l_t(w) + (lam1 + lam2) ||w - mean||^2, an uncorrelated task centred on the mean task.
Defaults: lam1 = 1e-3, lam2 = 0: the code has one lambda (lam2 = 0), chosen per data set by 5-fold
cross-validation over {1e-5, ..., 10} (`model_driver.m`); for 20 clients lam1 = 1e-3 is that grid's
1e-4, and 1e-4..1e-2 gave the same accuracy on digits shards and synthetic(1,1) (1e-1 was worse).
inner_iters = 10: the code alternates 10 Omega updates with 100 W-rounds each; our comparisons run
30-50 rounds. Fewer rounds between updates helped on iid digits and hurt on shards (see the report).
epochs = None: the comparison's E passes of SDCA per round (the code: 0.5). gamma = 1: softmax
cross-entropy is 1-smooth in the logits (use 0.5 for the squared loss (z - y)^2). Tuning searches lam1
log-uniformly on [1e-5, 100] and inner_iters on the whole numbers 1..100 (log scale); lam2, epochs and gamma
are not searched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, ClassVar, cast

import numpy as np
import numpy.typing as npt
import torch

from fedarena.core.algorithm import algorithm
from fedarena.core.space import hp
from fedarena.core.types import (
    Broadcast,
    ClientData,
    ClientState,
    FedarenaError,
    KeyFilter,
    Onboarding,
    Params,
    ServerState,
    Upload,
)
from fedarena.tasks import cross_entropy

if TYPE_CHECKING:
    from fedarena.tasks import Task

HEAD = ("head.weight", "head.bias")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # per-batch loss of (logits, labels), `Task.loss_fn`
Array = npt.NDArray[np.float64]


def _kernel(sigma: torch.Tensor, lam1: float, lam2: float) -> torch.Tensor:
    """K = (2 (lam1 Sigma^-1 + lam2 I))^-1 = U diag(s / (2 (lam1 + lam2 s))) U^T, no inverse needed."""
    s: torch.Tensor
    u: torch.Tensor  # declared: torch.linalg.eigh's result unpacks as Any
    if lam1 == 0:  # exactly diagonal: no coupling at all
        return torch.eye(sigma.shape[0], dtype=torch.float64) / (2 * lam2)
    if not (sigma - torch.diag(sigma.diagonal())).any():  # diagonal Sigma: exactly diagonal K, no eigh round-off
        s = sigma.diagonal()
        return torch.diag(s / (2 * (lam1 + lam2 * s)))
    s, u = torch.linalg.eigh(sigma)
    s = s.clamp(min=0)
    return (u * (s / (2 * (lam1 + lam2 * s)))) @ u.T


def _omega_step(w: torch.Tensor) -> torch.Tensor:
    """Sigma = m (W^T W)^(1/2) / tr((W^T W)^(1/2)) for W's m rows (tasks); eigenvalues floored at 1e-7."""
    e: torch.Tensor
    u: torch.Tensor  # declared: torch.linalg.eigh's result unpacks as Any
    e, u = torch.linalg.eigh(w @ w.T)
    root = (u * e.clamp(min=1e-7).sqrt()) @ u.T
    return w.shape[0] * root / torch.trace(root)


def relationships(server: ServerState) -> tuple[list[int], torch.Tensor]:
    """(client ids, Sigma / m): the learned task covariance with unit trace, as in the paper."""
    tasks = server.extra["tasks"].tolist()
    return tasks, server.extra["sigma"] / max(len(tasks), 1)


def _sdca(loss_fn: LossFn, feats: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, w: torch.Tensor, k_row: float,
          gamma: float, order: list[int]) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """SDCA passes over `order` on the local subproblem; returns (alpha, dv, mean loss, steps).
    numpy float64 inside, on the CPU whatever the run's device: the loop is sequential, one sample at a time, where
    torch's per-op overhead dominates."""
    grad_of = _ce_grad if loss_fn is cross_entropy else partial(_autograd_grad, loss_fn)
    f, a, y_np = feats.cpu().numpy(), alpha.cpu().numpy().copy(), y.cpu().numpy()
    view, dv, n, losses = w.cpu().numpy().copy(), np.zeros(tuple(w.shape)), f.shape[0], []
    steps = gamma / (gamma + k_row * (f * f).sum(1) / n)
    for i in order:
        grad, loss = grad_of(view @ f[i], y_np[i])
        delta = steps[i] * (-grad - a[i])
        a[i] += delta
        change = np.outer(delta, f[i]) / n
        dv += change
        view += k_row * change  # the local view w_t + sigma' K_tt dv (eq. 4's gradient)
        losses.append(loss)
    back = feats.device
    return (torch.from_numpy(a).to(back), torch.from_numpy(dv).to(back), float(np.mean(losses)) if losses else float("nan"),
            len(losses))


def _ce_grad(z: Array, label: int) -> tuple[Array, float]:
    """d/dz of softmax cross-entropy, in closed form (the `mlr` loss)."""
    top = z.max()
    p = np.exp(z - top)
    total = p.sum()
    p /= total
    loss = np.log(total) + top - z[label]
    p[label] -= 1.0
    return p, loss


def _autograd_grad(loss_fn: LossFn, z: Array, label: int) -> tuple[Array, float]:
    """d/dz of any other per-sample loss, by autograd."""
    zt = torch.from_numpy(z).requires_grad_(True)
    loss = loss_fn(zt[None], torch.as_tensor(label)[None])
    (grad,) = torch.autograd.grad(loss, zt)
    return grad.numpy(), float(loss.detach())


@algorithm("mocha", "personalized", "Smith et al., NeurIPS 2017, arXiv 1705.10467",
           personal=KeyFilter(("head.*",)), uploads_personal=True,
           server_step="custom", per_sample_risk=False,
           not_per_sample=("its local work is a dual (SDCA) solver, not SGD"))
class Mocha:
    lam1: float = hp(1e-3, low=1e-5, high=100.0, log=True,
                     source="Smith et al. 2017, authors' code (gingsmith/fmtl model_driver.m): lambda cross-validated "
                            "over {1e-5, 1e-4, 1e-3, 1e-2, 0.1, 10}; our lam1 is m times that lambda (tr(Sigma) = m), "
                            "so widened to 100 above")
    lam2: float = 0.0
    inner_iters: int = hp(10, low=1, high=100, log=True,
                          source="Smith et al. 2017, authors' code (model_driver.m): mocha_inner_iters = 100 W-rounds per "
                                 "Omega update; 1..100 on a log scale")
    epochs: int | None = None
    gamma: float = 1.0

    personal: ClassVar[KeyFilter]  # set by `@algorithm` (head.*); read by `init_client`

    def __post_init__(self) -> None:
        for f in ("lam1", "lam2"):
            if getattr(self, f) < 0:
                raise FedarenaError(f"mocha.{f} must be >= 0, got {getattr(self, f)}")
        if self.lam1 + self.lam2 <= 0:
            raise FedarenaError("mocha.lam1 and mocha.lam2 cannot both be 0: MOCHA's dual needs a strongly convex "
                                "regularizer")
        if self.inner_iters < 1:
            raise FedarenaError(f"mocha.inner_iters must be >= 1, got {self.inner_iters}")
        if self.epochs is not None and self.epochs < 0:
            raise FedarenaError(f"mocha.epochs must be >= 0, got {self.epochs}")
        if self.gamma <= 0:
            raise FedarenaError(f"mocha.gamma must be > 0, got {self.gamma}")

    def init_server(self, shared_params: Params) -> ServerState:
        empty = torch.zeros(0, dtype=torch.float64)
        return ServerState(params={}, extra={"tasks": torch.zeros(0, dtype=torch.int64), "sigma": empty.reshape(0, 0)})

    def init_client(self, params: Params) -> ClientState:
        """The client keeps the (frozen) body; w_t starts at 0 (alpha = 0), as in the paper's code."""
        return ClientState(params={k: v for k, v in params.items() if not self.personal(k)})

    def broadcast(self, server: ServerState, client_id: int) -> Broadcast:
        """K_tt, sum_s |K_ts| and the others' part sum_{s!=t} K_ts v_s of w_t (never w_t itself);
        a client not yet a task gets the fresh-task values and the mean of W (for onboarding)."""
        tasks, v = server.extra["tasks"].tolist(), {k[2:]: x for k, x in server.extra.items() if k.startswith("v/")}
        if client_id not in tasks:
            k_tt = torch.tensor(1 / (2 * (self.lam1 + self.lam2)), dtype=torch.float64)
            kern = _kernel(server.extra["sigma"], self.lam1, self.lam2) if tasks else None
            prior = {f"prior/{k}": torch.einsum("ts,s...->t...", kern, x).mean(0).float() for k, x in v.items()}
            return Broadcast(extra={"k_tt": k_tt, "k_row": k_tt.clone(), **prior})
        t = tasks.index(client_id)
        row = _kernel(server.extra["sigma"], self.lam1, self.lam2)[t]
        others = row.clone()
        others[t] = 0
        coupling = {}  # not sent while it is zero (Sigma diagonal: before the first Omega step, or lam1 = 0)
        if bool(others.any()):
            coupling = {f"coupling/{k}": torch.einsum("s,s...->...", others, x).float() for k, x in v.items()}
        return Broadcast(extra={"k_tt": row[t].clone(), "k_row": row.abs().sum(), **coupling})

    def client_update(self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData,
                      rng: torch.Generator) -> tuple[Upload, ClientState]:
        feats, keys, alpha, w = _local_model(task, broadcast, state, data)
        epochs = task.sgd.epochs if self.epochs is None else self.epochs
        order = [i for _ in range(epochs) for i in torch.randperm(feats.shape[0], generator=rng).tolist()]
        alpha, dv, loss, steps = _sdca(task.loss_fn, feats, data.y_train, alpha, w, float(broadcast.extra["k_row"]),
                                       self.gamma, order)
        metrics = {"train_loss": loss, "steps": steps}
        upload = Upload(params=_unflatten(dv, keys), num_samples=data.num_train, metrics=metrics)
        return upload, ClientState(params=state.params, extra={"alpha": alpha})

    def aggregate(self, server: ServerState, uploads: Mapping[int, Upload]) -> ServerState:
        """v <- v + sum_t dv_t (new clients join as uncorrelated tasks, Sigma_tt = 1); every
        `inner_iters` rounds, Sigma from W = V K in closed form."""
        tasks, sigma = server.extra["tasks"].tolist(), server.extra["sigma"]
        v = {k[2:]: x.clone() for k, x in server.extra.items() if k.startswith("v/")}
        for c in sorted(uploads):
            up = uploads[c].params
            if not up:
                continue
            if c not in tasks:
                tasks.append(c)
                # torch.block_diag (torch/functional.py) is an unannotated `def block_diag(*tensors)`
                sigma = torch.block_diag(sigma, torch.ones(1, 1, dtype=torch.float64))  # type: ignore[no-untyped-call]
                for k, x in up.items():
                    old = v.get(k, torch.zeros((0, *x.shape), dtype=torch.float64))
                    v[k] = torch.cat([old, torch.zeros((1, *x.shape), dtype=torch.float64)])
            for k, x in up.items():
                v[k][tasks.index(c)] += x.double()
        rnd = server.round + 1
        if tasks and rnd % self.inner_iters == 0:
            kern = _kernel(sigma, self.lam1, self.lam2)
            w = torch.cat([(kern @ x.reshape(len(tasks), -1)) for _, x in sorted(v.items())], dim=1)
            sigma = _omega_step(w)
        extra = {"tasks": torch.tensor(tasks, dtype=torch.int64), "sigma": sigma, **{f"v/{k}": x for k, x in v.items()}}
        return ServerState(params=server.params, round=rnd, extra=extra)

    def personalize(self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData,
                    rng: torch.Generator) -> Params:
        """w_t(alpha) = K_tt v_t + sum_{s!=t} K_ts v_s with the body the client keeps."""
        _, keys, _, w = _local_model(task, broadcast, state, data)
        return {**state.params, **_unflatten(w, keys)}

    def onboard(self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData,
                rng: torch.Generator) -> Onboarding:
        """Start from the mean task model; SDCA on l_t(w) + (lam1 + lam2) ||w - mean||^2 (K_tt of a fresh task)."""
        b = Broadcast(extra={**{f"coupling/{k[6:]}": x for k, x in broadcast.extra.items() if k.startswith("prior/")},
                             "k_tt": broadcast.extra["k_tt"], "k_row": broadcast.extra["k_tt"]})
        before = self.personalize(task, b, state, data, rng)
        upload, new_state = self.client_update(task, b, state, data, rng)
        return Onboarding(before=before, after=self.personalize(task, b, new_state, data, rng),
                          steps=int(upload.metrics["steps"]))

    def global_model(self, server: ServerState) -> Params | None:
        return None


def _features(task: Task, state: ClientState, x: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """The frozen body's eval-mode features (a private copy: safe in the vectorized engine's threads),
    with a constant 1 appended when the head has a bias; float64."""
    if not isinstance(task.module.head, torch.nn.Linear):
        raise FedarenaError(f"mocha needs a linear head (model.name=mlr); {task.name}'s is {type(task.module.head)}")
    body = copy.deepcopy(cast(torch.nn.Module, task.module.body)).to(x.device).eval()  # attributes type as Tensor | Module
    body.load_state_dict({k[5:]: v for k, v in state.params.items() if k.startswith("body.")}, strict=False)
    with torch.no_grad():
        f = body(x).reshape(x.shape[0], -1).double()
    keys = [k for k in HEAD if k in dict(task.module.named_parameters())]
    if "head.bias" in keys:
        f = torch.cat([f, torch.ones(f.shape[0], 1, dtype=f.dtype, device=f.device)], dim=1)
    return f, keys


def _local_model(task: Task, broadcast: Broadcast, state: ClientState,
                 data: ClientData) -> tuple[torch.Tensor, list[str], torch.Tensor, torch.Tensor]:
    """(features, head keys, alpha, w_t = K_tt v_t + coupling as one outputs x features[+1] matrix)."""
    feats, keys = _features(task, state, data.x_train)
    head = cast(torch.nn.Linear, task.module.head)  # `_features` refused any other head
    zeros = torch.zeros(feats.shape[0], head.out_features, dtype=torch.float64, device=feats.device)
    alpha = state.extra.get("alpha", zeros)
    w = broadcast.extra["k_tt"] * (alpha.T @ feats) / feats.shape[0]
    if "coupling/head.weight" in broadcast.extra:
        parts = [broadcast.extra[f"coupling/{k}"].double().reshape(w.shape[0], -1) for k in keys]
        w = w + torch.cat(parts, dim=1)
    return feats, keys, alpha, w


def _unflatten(w: torch.Tensor, keys: list[str]) -> Params:
    out = {"head.weight": w[:, : w.shape[1] - ("head.bias" in keys)].float().contiguous()}
    if "head.bias" in keys:
        out["head.bias"] = w[:, -1].float().contiguous()
    return out
