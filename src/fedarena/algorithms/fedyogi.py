"""FedYogi (FedOpt): Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan, "Adaptive Federated
Optimization", ICLR 2021, arXiv 2003.00295.

FedAdam (fedadam.py) with Yogi's second moment (Zaheer, Reddi, Sachan, Kale, Kumar, "Adaptive Methods for
Nonconvex Optimization", NeurIPS 2018), which changes v additively and only by (1 - beta2) Delta^2, so v
cannot shrink as fast as Adam's. Clients run FedAvg's local SGD; the server step (`aggregate`, Algorithm 2's
server update as written: no bias correction, v_{-1} = tau^2) on the pseudo-gradient Delta = mean - x:
    m <- beta1 m + (1 - beta1) Delta
    v <- v - (1 - beta2) Delta^2 sign(v - Delta^2)
    x <- x + eta m / (sqrt(v) + tau)
(`core.server_opt.adaptive_step` with `yogi_v`; m and v in `ServerState.extra`, never broadcast). The step
reads only the mean and the server state (server_step "mean+optimizer"), so DP and SecAgg apply.

Defaults. beta1 = 0.9, beta2 = 0.99: the paper's stated FedAdam/FedYogi setting (the authors' notes,
google-research/federated optimization/docs/hyperparameters.md, say their TFF runs kept Keras' 0.9/0.999).
tau = 1e-3: the value those notes recommend by default (the paper tunes it per task). eta = 10^-2: the most
frequent best FedYogi server learning rate of those notes (10^-2 on Shakespeare and Stack Overflow NWP;
10^-2.5, 10^-1.5, 10^-0.5 and 10^0 on the other four tasks); tune it per task as the paper does. (The TFF code
starts Yogi's accumulator at 0 with bias correction; we follow Algorithm 2.) Tuning searches eta log-uniformly on
[1e-4, 10] and tau on [1e-6, 1]; beta1 and beta2 stay fixed, as in the paper.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from fedarena.core.algorithm import algorithm
from fedarena.core.server_opt import (
    adaptive_step,
    adaptive_tau,
    check_hyperparameters,
    init_adaptive_server,
    server_opt_step,
    yogi_v,
)
from fedarena.core.space import hp
from fedarena.core.types import ServerState, Upload


@algorithm("fedyogi", "global", "Reddi et al., ICLR 2021, arXiv 2003.00295",
           server_step="mean+optimizer", per_sample_risk=True)
class FedYogi:
    eta: float = hp(1e-2, low=1e-4, high=10.0, log=True,
                    source="Reddi et al. 2021, Sec. 5 / App. D: eta tuned per task on a log10 grid; the best FedYogi "
                           "eta lie in 10^-2.5..10^0 (authors' notes, google-research/federated "
                           "optimization/docs/hyperparameters.md); widened to 1e-4 below and 10 above")
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = adaptive_tau(1e-3)

    def __post_init__(self) -> None:
        check_hyperparameters("fedyogi", eta=self.eta, beta1=self.beta1, beta2=self.beta2, tau=self.tau)

    init_server = init_adaptive_server  # x_0 = the shared initial model, m_{-1} = 0, v_{-1} = tau^2

    def aggregate(self, server: ServerState, uploads: Mapping[int, Upload]) -> ServerState:
        """One Yogi step on the pseudo-gradient Delta (Algorithm 2's server update)."""
        step = partial(adaptive_step, eta=self.eta, beta1=self.beta1, tau=self.tau,
                       second_moment=partial(yogi_v, beta2=self.beta2))
        return server_opt_step(self, server, uploads, step)
