"""FedAdam (FedOpt): Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan, "Adaptive Federated
Optimization", ICLR 2021, arXiv 2003.00295.

Clients run FedAvg's local SGD (`client_update` is FedAvg's). The server treats the mean client change
Delta = mean_i x_i - x as a pseudo-gradient and takes one adaptive step (`aggregate`, Algorithm 2 as
written: no bias correction, v_{-1} = tau^2, the smallest value its "v_{-1} >= tau^2" allows):
    m <- beta1 m + (1 - beta1) Delta
    v <- beta2 v + (1 - beta2) Delta^2                       (FedAdam)
         v - (1 - beta2) Delta^2 sign(v - Delta^2)            (FedYogi,    server_opt="yogi")
         v + Delta^2                                          (FedAdagrad, server_opt="adagrad")
    x <- x + eta m / (sqrt(v) + tau)
server_opt="sgd" is FedAvgM (server momentum; Hsu, Qi, Brown, arXiv 1909.06335, the paper's baseline):
m <- beta1 m + Delta, x <- x + eta m; with eta = 1 and beta1 = 0 it is FedAvg bit for bit (tested).
m and v live in `ServerState.extra` (float64; never broadcast: the download is FedAvg's). The mean is
FedAvg's (weighted by train size; the paper averages uniformly over equal-weight clients). Every
floating-point key is stepped (BatchNorm statistics too: the paper's models use GroupNorm and are
silent on this); integer buffers take the mean.

Defaults. beta1 = 0.9, beta2 = 0.99: the paper's stated FedAdam/FedYogi setting (the authors' notes in
google-research/federated optimization/docs/hyperparameters.md say their TFF runs kept Keras' 0.9/0.999).
tau = 1e-3: the paper tunes tau per task on a log10 grid; 1e-3 is the value those notes recommend by
default. eta (server lr): tuned per task on a half-power log10 grid; the best FedAdam values reported
(same notes) are 10^-2.5 (EMNIST CR), 10^-2 (Shakespeare, Stack Overflow NWP), 10^-1.5 (EMNIST AE),
10^-0.5 (Stack Overflow LR) and 10^0 (CIFAR-100). Default eta = 10^-2, the most frequent of these; tune
it per task as the paper does. (The TFF code uses Keras Adam, i.e. bias correction and v_{-1} = 0; we follow
Algorithm 2.)
"""

from __future__ import annotations

import torch

from fedarena.core.algorithm import algorithm, fedavg_aggregate
from fedarena.core.types import FedarenaError, ServerState

SERVER_OPTS = ("adam", "yogi", "adagrad", "sgd")


@algorithm("fedadam", "global", "Reddi et al., ICLR 2021, arXiv 2003.00295")
class FedAdam:
    eta: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    server_opt: str = "adam"

    def __post_init__(self):
        checks = [
            (self.server_opt in SERVER_OPTS,
             f"server_opt must be one of {', '.join(SERVER_OPTS)}, got {self.server_opt!r}"),
            (self.eta > 0, f"eta must be > 0, got {self.eta}"),
            (0 <= self.beta1 < 1, f"beta1 must be in [0, 1), got {self.beta1}"),
            (0 <= self.beta2 < 1, f"beta2 must be in [0, 1), got {self.beta2}"),
            (self.tau > 0, f"tau must be > 0, got {self.tau}"),
        ]
        for ok, message in checks:
            if not ok:
                raise FedarenaError(f"fedadam.{message}")

    def init_server(self, shared_params):
        """x_0 = the shared initial model, m_{-1} = 0, v_{-1} = tau^2."""
        extra = {}
        for k, x in shared_params.items():
            if x.is_floating_point():
                extra["m/" + k] = torch.zeros(x.shape, dtype=torch.float64)
                extra["v/" + k] = torch.full(x.shape, self.tau**2, dtype=torch.float64)
        return ServerState(params=dict(shared_params), extra=extra)

    def aggregate(self, server, uploads):
        """One ServerOpt step on the pseudo-gradient Delta (Algorithm 2's server update)."""
        mean = fedavg_aggregate(self, server, uploads)
        if not any(u.params for u in uploads.values()):
            return mean
        params, extra = {}, {}
        for k, x in server.params.items():
            if not x.is_floating_point():
                params[k] = mean.params[k]
                continue
            x64, avg = x.double(), mean.params[k].double()
            delta, m_old, v = avg - x64, server.extra["m/" + k], server.extra["v/" + k]
            if self.server_opt == "sgd":
                m = self.beta1 * m_old + delta
                new = torch.lerp(x64, avg, self.eta) + self.eta * self.beta1 * m_old  # = x + eta m, exact at eta 1
            else:
                m = self.beta1 * m_old + (1 - self.beta1) * delta
                sq = delta * delta
                if self.server_opt == "adam":
                    v = self.beta2 * v + (1 - self.beta2) * sq
                elif self.server_opt == "yogi":
                    v = v - (1 - self.beta2) * sq * torch.sign(v - sq)
                else:
                    v = v + sq
                new = x64 + self.eta * m / (v.sqrt() + self.tau)
            params[k] = new.to(x.dtype)
            extra["m/" + k], extra["v/" + k] = m, v
        return ServerState(params=params, round=mean.round, extra=extra)
