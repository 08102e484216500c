"""FedAvg: McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-Efficient Learning of Deep
Networks from Decentralized Data", AISTATS 2017, arXiv 1602.05629.

Algorithm 1 (FederatedAveraging): the server broadcasts w_t (`broadcast`); each sampled client k runs
E epochs of minibatch SGD with batch size B on its empirical risk F_k (`local_objective`, eq. 1's
F_k, through `sgd_client_update`); the server sets w_{t+1} = sum_k (n_k / n) w^k_{t+1}
(`aggregate`). E, B and the learning rate come from the comparison's `train` section, so every
algorithm of one comparison uses the same local work. All keys are shared.
"""

from __future__ import annotations

from fedarena.core.algorithm import algorithm


@algorithm("fedavg", "global", "McMahan et al., AISTATS 2017, arXiv 1602.05629",
           server_step="mean", per_sample_risk=True)
class FedAvg:
    """FedAvg has no hyperparameter of its own: every step is a FedAvg building block."""
