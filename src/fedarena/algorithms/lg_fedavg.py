"""LG-FedAvg: Liang, Liu, Ziyin, Allen, Auerbach, Brent, Salakhutdinov, Morency, "Think Locally, Act
Globally: Federated Learning with Local and Global Representations", arXiv 2001.01523 (2020).

FedPer's mirror image: each client keeps a *local representation* (the lower layers, here the
`body`) and all clients share the *global* top layers (here the `head`), which the server averages
(Sec. 3). Client: from the downloaded global layers theta^g and its own local layers
theta^l_m, run E epochs of SGD on both with its loss, keep theta^l_m, send theta^g_m
(`client_update` *is* FedAvg's `sgd_client_update` with the body personal). Server: theta^g <-
weighted mean of the theta^g_m (`aggregate` *is* FedAvg's; the authors' code takes the unweighted
mean, equal on balanced clients). A client's model is its local body under the current global head
(`personalize`). Only the head travels, so LG-FedAvg's messages are the smallest of the family.

Hyperparameters:
- `personal_layers = ("body.*",)`: the local representation. The paper keeps the lower layers local
  and the top ones global (the authors' MNIST MLP keeps its first 2 of 5 layers local,
  `--num_layers_keep 3`); for fedarena's models the body/head split is the natural boundary.
  `personal_layers = ()` is FedAvg (tested bit for bit).
- E, B and the learning rate are the comparison's local SGD settings.

Departure from the paper's experiments, on purpose: the authors initialize LG-FedAvg from a model
pre-trained with FedAvg (`--load_fed`, hundreds of FedAvg rounds); here every algorithm of a
comparison starts from the same initial model, so LG-FedAvg's rounds are its whole cost.

No full global model exists (no client shares its body): `global_model` is None, except with an
empty personal set. A new client learns its own local representation under the downloaded global
head with one round's local training (`onboard_by_local_training`).
"""

from __future__ import annotations

from fedarena.algorithms.fedper import global_if_nothing_personal, init_client_checked, layer_filter, setup_layers
from fedarena.core.algorithm import algorithm, onboard_by_local_training


@algorithm("lg-fedavg", "personalized", "Liang et al., arXiv 2001.01523 (2020)",
           server_step="mean", per_sample_risk=True)
class LGFedAvg:
    personal_layers: tuple[str, ...] = ("body.*",)

    def __post_init__(self) -> None:
        setup_layers(self)

    personal = property(layer_filter)
    init_client = init_client_checked
    onboard = onboard_by_local_training
    global_model = global_if_nothing_personal
