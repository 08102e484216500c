"""Server optimizers: one step over the round's mean update, which FedAvgM, FedAdam, FedYogi and FedAdagrad
compose (one file each in algorithms/; their `server_step` is "mean+optimizer").

The server takes FedAvg's weighted mean of the uploads (`fedavg_aggregate`) and treats the mean change
Delta = mean - x as a pseudo-gradient (Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan,
"Adaptive Federated Optimization", ICLR 2021, arXiv 2003.00295, Algorithm 2; `server_opt_step`). Update
rules, one function each, on float64 copies of every floating-point key (integer buffers take the mean):
- `momentum_step` (FedAvgM; Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution for
  Federated Visual Classification", arXiv 1909.06335, 2019: v <- beta v + Delta w, w <- w - v with their
  Delta w = x - mean): m <- beta m + Delta, x <- x + eta m. Written as lerp(x, mean, eta) + eta beta m_old,
  so that eta = 1, beta = 0 gives FedAvg's mean bit for bit.
- `adaptive_step` (Algorithm 2, as written: no bias correction, v_{-1} = tau^2):
  m <- beta1 m + (1 - beta1) Delta;  v <- second_moment(v, Delta^2);  x <- x + eta m / (sqrt(v) + tau),
  with `adam_v` (v <- beta2 v + (1 - beta2) Delta^2), `yogi_v` (v <- v - (1 - beta2) Delta^2
  sign(v - Delta^2)) or `adagrad_v` (v <- v + Delta^2).
The moments live in `ServerState.extra` under "m/<key>" and "v/<key>" (float64, never broadcast). The step
reads only the mean and the server state, which is what lets DP and secure aggregation run these algorithms.
`adaptive_tau` declares the search space of tau that FedAdam, FedYogi and FedAdagrad share.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from fedarena.core.algorithm import fedavg_aggregate
from fedarena.core.space import hp
from fedarena.core.types import FedarenaError, Params, ServerState, Upload

M, V = "m/", "v/"  # ServerState.extra prefixes of the first and second moments
Moments = dict[str, torch.Tensor]  # one key's moments: "m" (and "v" for the adaptive rules)
Step = Callable[[torch.Tensor, torch.Tensor, Moments], tuple[torch.Tensor, Moments]]  # (x, mean, moments)


def adaptive_tau(default: float) -> Any:
    """The tau field of FedAdam, FedYogi and FedAdagrad: `default` and its search space, log-uniform on [1e-6, 1]."""
    return hp(default, low=1e-6, high=1.0, log=True,
              source="Reddi et al. 2021, Sec. 5 / App. D: tau tuned per task and optimizer on a log10 grid; the best "
                     "values lie in 10^-5..10^-1 (authors' notes, google-research/federated "
                     "optimization/docs/hyperparameters.md, 'Epsilon values'); widened by a decade on each side")


def init_moments(shared_params: Params, v0: float | None = None) -> Params:
    """m_{-1} = 0 for every floating-point key, and v_{-1} = v0 where a second moment is kept (float64)."""
    extra: Params = {}
    for k, x in shared_params.items():
        if x.is_floating_point():
            extra[M + k] = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
            if v0 is not None:
                extra[V + k] = torch.full(x.shape, v0, dtype=torch.float64, device=x.device)
    return extra


def init_adaptive_server(self: Any, shared_params: Params) -> ServerState:
    """The adaptive rules' `init_server` (FedAdam, FedYogi, FedAdagrad; Reddi et al., Algorithm 2): x_0 = the shared
    initial model, m_{-1} = 0, v_{-1} = tau^2."""
    return ServerState(params=dict(shared_params), extra=init_moments(shared_params, self.tau**2))


def server_opt_step(algo: Any, server: ServerState, uploads: Mapping[int, Upload], step: Step) -> ServerState:
    """FedAvg's weighted mean of the uploads, then `step` on each floating-point key (a round without
    uploads leaves the model and the moments as they are)."""
    mean = fedavg_aggregate(algo, server, uploads)
    if not any(u.params for u in uploads.values()):
        return mean
    params: Params = {}
    extra: Params = {}
    for k, x in server.params.items():
        if not x.is_floating_point():
            params[k] = mean.params[k]
            continue
        moments = {name: server.extra[prefix + k] for name, prefix in (("m", M), ("v", V)) if prefix + k in server.extra}
        new, moments = step(x.double(), mean.params[k].double(), moments)
        params[k] = new.to(x.dtype)
        extra.update({(M if name == "m" else V) + k: t for name, t in moments.items()})
    return ServerState(params=params, round=mean.round, extra=extra)


def momentum_step(x: torch.Tensor, mean: torch.Tensor, moments: Moments, *, eta: float, beta: float
                  ) -> tuple[torch.Tensor, Moments]:
    """FedAvgM: m <- beta m + Delta, x <- x + eta m (= lerp(x, mean, eta) + eta beta m_old)."""
    m_old = moments["m"]
    m = beta * m_old + (mean - x)
    return torch.lerp(x, mean, eta) + eta * beta * m_old, {"m": m}


SecondMoment = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (v, Delta^2) -> new v


def adaptive_step(x: torch.Tensor, mean: torch.Tensor, moments: Moments, *, eta: float, beta1: float, tau: float,
                  second_moment: SecondMoment) -> tuple[torch.Tensor, Moments]:
    """Algorithm 2's adaptive server update with the given second-moment rule."""
    delta = mean - x
    m = beta1 * moments["m"] + (1 - beta1) * delta
    v = second_moment(moments["v"], delta * delta)
    return x + eta * m / (v.sqrt() + tau), {"m": m, "v": v}


def adam_v(v: torch.Tensor, sq: torch.Tensor, *, beta2: float) -> torch.Tensor:
    return beta2 * v + (1 - beta2) * sq


def yogi_v(v: torch.Tensor, sq: torch.Tensor, *, beta2: float) -> torch.Tensor:
    return v - (1 - beta2) * sq * torch.sign(v - sq)


def adagrad_v(v: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    return v + sq


def check_hyperparameters(name: str, **values: float) -> None:
    """eta > 0, tau > 0, beta1 / beta2 / beta in [0, 1): one clear error naming `<algorithm>.<field>`."""
    for field, value in values.items():
        ok = value > 0 if field in ("eta", "tau") else 0 <= value < 1
        if not ok:
            bound = "> 0" if field in ("eta", "tau") else "in [0, 1)"
            raise FedarenaError(f"{name}.{field} must be {bound}, got {value}")
