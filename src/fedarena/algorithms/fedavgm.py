"""FedAvgM (FedAvg with server momentum): Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data
Distribution for Federated Visual Classification", arXiv 1909.06335 (2019).

Clients run FedAvg's local SGD (`client_update` is FedAvg's). The server accumulates the round's mean update
in a momentum buffer and moves the model along it (`aggregate`): Hsu et al. write v <- beta v + Delta w,
w <- w - v with Delta w the weighted mean of the clients' changes w - w_k (FedAvg's weights n_k / n). With
the pseudo-gradient Delta = mean - x = -Delta w (Reddi et al., ICLR 2021, arXiv 2003.00295, Algorithm 2's
notation, where FedAvgM is their baseline) and a server learning rate eta:
    m <- beta m + Delta
    x <- x + eta m
(`core.server_opt.momentum_step`, computed as lerp(x, mean, eta) + eta beta m_old). m lives in
`ServerState.extra` (float64, never broadcast: the download is FedAvg's); integer buffers take the mean. The
step reads only the mean and the server state (server_step "mean+optimizer"), so DP and SecAgg apply.
eta = 1, beta = 0 is FedAvg bit for bit (tested).

Defaults. eta = 1: Hsu et al.'s update has no server learning rate (w <- w - v), and 10^0 is the best FedAvgM
server learning rate on four of the six tasks of Reddi et al.'s notes (google-research/federated
optimization/docs/hyperparameters.md). beta = 0.9: the server momentum of those notes' FedAvgM
(`--server_sgd_momentum=0.9`), among the values Hsu et al. sweep (they report the effective learning rate
eta / (1 - beta) as what matters; retune eta when changing beta). Tuning searches eta log-uniformly on
[1e-3, 10] and beta uniformly on [0, 0.99].
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from fedarena.core.algorithm import algorithm
from fedarena.core.server_opt import check_hyperparameters, init_moments, momentum_step, server_opt_step
from fedarena.core.space import hp
from fedarena.core.types import Params, ServerState, Upload


@algorithm("fedavgm", "global", "Hsu et al., arXiv 1909.06335 (2019)",
           server_step="mean+optimizer", per_sample_risk=True)
class FedAvgM:
    eta: float = hp(1.0, low=1e-3, high=10.0, log=True,
                    source="Reddi et al. 2021, Sec. 5 / App. D: the FedAvgM server lr tuned per task on a log10 grid; "
                           "the best lie in 10^-0.5..10^0 (authors' notes, google-research/federated "
                           "optimization/docs/hyperparameters.md); Hsu et al. 2019 use 1; widened to 1e-3..10")
    beta: float = hp(0.9, low=0.0, high=0.99,
                     source="Hsu et al. 2019, Sec. 4: beta swept together with the effective lr eta / (1 - beta); "
                            "Reddi et al. 2021 fix 0.9 (authors' notes: --server_sgd_momentum=0.9), FL-bench's "
                            "default 0.9; [0, 0.99] linear (0 is FedAvg's server step)")

    def __post_init__(self) -> None:
        check_hyperparameters("fedavgm", eta=self.eta, beta=self.beta)

    def init_server(self, shared_params: Params) -> ServerState:
        """x_0 = the shared initial model, m_{-1} = 0."""
        return ServerState(params=dict(shared_params), extra=init_moments(shared_params))

    def aggregate(self, server: ServerState, uploads: Mapping[int, Upload]) -> ServerState:
        """m <- beta m + Delta, x <- x + eta m."""
        return server_opt_step(self, server, uploads, partial(momentum_step, eta=self.eta, beta=self.beta))
