"""FedAdagrad (FedOpt): Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan, "Adaptive Federated
Optimization", ICLR 2021, arXiv 2003.00295.

FedAdam (fedadam.py) with Adagrad's second moment, the running sum of squared pseudo-gradients (Duchi,
Hazan, Singer, JMLR 2011), so each coordinate's step shrinks with its history. Clients run FedAvg's local
SGD; the server step (`aggregate`, Algorithm 2's server update as written: v_{-1} = tau^2) on the
pseudo-gradient Delta = mean - x:
    m <- beta1 m + (1 - beta1) Delta
    v <- v + Delta^2
    x <- x + eta m / (sqrt(v) + tau)
(`core.server_opt.adaptive_step` with `adagrad_v`; m and v in `ServerState.extra`, never broadcast). The
step reads only the mean and the server state (server_step "mean+optimizer"), so DP and SecAgg apply.

Defaults. beta1 = 0: the authors' FedAdagrad runs use Keras' Adagrad (google-research/federated
optimization/docs/hyperparameters.md: `--server_optimizer=adagrad`), which has no momentum; Algorithm 2 allows
beta1 > 0 (set it to compare). tau = 1e-3: the value those notes recommend by default (the paper tunes it per
task). eta = 10^-1: the median of the best FedAdagrad server learning rates of those notes (10^-1 on CIFAR-100
and EMNIST CR, 10^-1.5 on EMNIST AE and Stack Overflow NWP, 10^-0.5 on Shakespeare, 10^1 on Stack Overflow
LR); tune it per task as the paper does. Tuning searches eta log-uniformly on [1e-3, 100] and tau on
[1e-6, 1]; beta1 stays fixed, as in the paper.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from fedarena.core.algorithm import algorithm
from fedarena.core.server_opt import (
    adagrad_v,
    adaptive_step,
    adaptive_tau,
    check_hyperparameters,
    init_adaptive_server,
    server_opt_step,
)
from fedarena.core.space import hp
from fedarena.core.types import ServerState, Upload


@algorithm("fedadagrad", "global", "Reddi et al., ICLR 2021, arXiv 2003.00295",
           server_step="mean+optimizer", per_sample_risk=True)
class FedAdagrad:
    eta: float = hp(1e-1, low=1e-3, high=100.0, log=True,
                    source="Reddi et al. 2021, Sec. 5 / App. D: eta tuned per task on a log10 grid; the best FedAdagrad "
                           "eta lie in 10^-1.5..10^1 (authors' notes, google-research/federated "
                           "optimization/docs/hyperparameters.md); widened to 100 above (10^1, on Stack Overflow LR, "
                           "is the largest best value of any task)")
    beta1: float = 0.0
    tau: float = adaptive_tau(1e-3)

    def __post_init__(self) -> None:
        check_hyperparameters("fedadagrad", eta=self.eta, beta1=self.beta1, tau=self.tau)

    init_server = init_adaptive_server  # x_0 = the shared initial model, m_{-1} = 0, v_{-1} = tau^2

    def aggregate(self, server: ServerState, uploads: Mapping[int, Upload]) -> ServerState:
        """One Adagrad step on the pseudo-gradient Delta (Algorithm 2's server update)."""
        step = partial(adaptive_step, eta=self.eta, beta1=self.beta1, tau=self.tau, second_moment=adagrad_v)
        return server_opt_step(self, server, uploads, step)
