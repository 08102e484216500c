"""FedAdam (FedOpt): Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan, "Adaptive Federated
Optimization", ICLR 2021, arXiv 2003.00295.

Clients run FedAvg's local SGD (`client_update` is FedAvg's). The server treats the mean client change
Delta = mean_i x_i - x as a pseudo-gradient and takes one Adam step (`aggregate`, Algorithm 2's server
update as written: no bias correction, v_{-1} = tau^2, the smallest value its "v_{-1} >= tau^2" allows):
    m <- beta1 m + (1 - beta1) Delta
    v <- beta2 v + (1 - beta2) Delta^2
    x <- x + eta m / (sqrt(v) + tau)
(`core.server_opt.adaptive_step` with `adam_v`; FedYogi and FedAdagrad change only the v line, FedAvgM is
the momentum-only variant: fedyogi.py, fedadagrad.py, fedavgm.py.) m and v live in `ServerState.extra`
(float64; never broadcast: the download is FedAvg's). The mean is FedAvg's (weighted by train size; the
paper averages uniformly over equal-weight clients). Every floating-point key is stepped (BatchNorm
statistics too: the paper's models use GroupNorm and are silent on this); integer buffers take the mean.
The step reads only the mean and the server state (server_step "mean+optimizer"), so DP and SecAgg apply.

Defaults. beta1 = 0.9, beta2 = 0.99: the paper's stated FedAdam/FedYogi setting (the authors' notes in
google-research/federated optimization/docs/hyperparameters.md say their TFF runs kept Keras' 0.9/0.999).
tau = 1e-3: the paper tunes tau per task on a log10 grid; 1e-3 is the value those notes recommend by
default. eta (server lr): tuned per task on a half-power log10 grid; the best FedAdam values reported
(same notes) are 10^-2.5 (EMNIST CR), 10^-2 (Shakespeare, Stack Overflow NWP), 10^-1.5 (EMNIST AE),
10^-0.5 (Stack Overflow LR) and 10^0 (CIFAR-100). Default eta = 10^-2, the most frequent of these; tune
it per task as the paper does. (The TFF code uses Keras Adam, i.e. bias correction and v_{-1} = 0; we follow
Algorithm 2.) Tuning searches eta log-uniformly on [1e-4, 10] and tau on [1e-6, 1]; beta1 and beta2 stay
fixed, as in the paper.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from fedarena.core.algorithm import algorithm
from fedarena.core.server_opt import (
    adam_v,
    adaptive_step,
    adaptive_tau,
    check_hyperparameters,
    init_adaptive_server,
    server_opt_step,
)
from fedarena.core.space import hp
from fedarena.core.types import ServerState, Upload


@algorithm("fedadam", "global", "Reddi et al., ICLR 2021, arXiv 2003.00295",
           server_step="mean+optimizer", per_sample_risk=True)
class FedAdam:
    eta: float = hp(1e-2, low=1e-4, high=10.0, log=True,
                    source="Reddi et al. 2021, Sec. 5 / App. D: eta tuned per task on a log10 grid; the best FedAdam "
                           "eta lie in 10^-2.5..10^0 (authors' notes, google-research/federated "
                           "optimization/docs/hyperparameters.md); widened to 1e-4 below and 10 above")
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = adaptive_tau(1e-3)

    def __post_init__(self) -> None:
        check_hyperparameters("fedadam", eta=self.eta, beta1=self.beta1, beta2=self.beta2, tau=self.tau)

    init_server = init_adaptive_server  # x_0 = the shared initial model, m_{-1} = 0, v_{-1} = tau^2

    def aggregate(self, server: ServerState, uploads: Mapping[int, Upload]) -> ServerState:
        """One Adam step on the pseudo-gradient Delta (Algorithm 2's server update)."""
        step = partial(adaptive_step, eta=self.eta, beta1=self.beta1, tau=self.tau,
                       second_moment=partial(adam_v, beta2=self.beta2))
        return server_opt_step(self, server, uploads, step)
