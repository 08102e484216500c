"""FedBN: Li, Jiang, Zhang, Kamp, Dou, "FedBN: Federated Learning on Non-IID Features via Local Batch
Normalization", ICLR 2021, arXiv 2102.07623.

FedAvg in which every BatchNorm layer stays local (Sec. 3, Algorithm 1): clients run E epochs of
local SGD on the whole model (`client_update` *is* FedAvg's `sgd_client_update`), the server
averages every layer that is not BatchNorm (`aggregate` *is* FedAvg's over the uploaded, non-BN
keys; the paper averages uniformly, equal on balanced clients) and each client keeps its own BN
layers: the affine weight and bias *and* the running mean, variance and batch count, as the authors'
code does (every key of a BN layer is skipped by the server). A client's model is the shared layers
with its own BN layers (`personalize`, FedAvg's merge). Aimed at feature shift (clients whose inputs
differ in distribution, e.g. scanners or image styles): run it with `--partition feature`.

Personal keys: `body.norm*`, fedarena's BatchNorm layers, which exist only with `--set
model.norm=bn` (BatchNorm after every hidden layer). With the default BN-free model nothing is
personal and FedBN *is* FedAvg exactly (tested bit for bit): a comparison with the default model
still runs, and a warning is logged once per run saying so.

Hyperparameters: none of its own. The paper's local work is E = 1 epoch by default (Sec. 5,
ablations over E); E, B and the learning rate are the comparison's local SGD settings.

No full global model exists (no BN layer on the server): `global_model` is None. A new client has no
BN statistics of its own, so it trains for one round's local work before use
(`onboard_by_local_training`), which estimates its BN layers on its own data.
"""

from __future__ import annotations

from fedarena.algorithms.fedper import init_client_checked, setup_layers
from fedarena.core.algorithm import algorithm, onboard_by_local_training
from fedarena.core.types import ClientState, KeyFilter, Params, ServerState

BN_KEYS = KeyFilter(("body.norm*",))


@algorithm("fedbn", "personalized", "Li et al., ICLR 2021, arXiv 2102.07623", personal=BN_KEYS,
           server_step="mean", per_sample_risk=True)
class FedBN:
    """FedAvg's steps with the BatchNorm keys personal."""

    def __post_init__(self) -> None:
        setup_layers(self)

    def init_client(self, params: Params) -> ClientState:
        return init_client_checked(self, params, "; use --set model.norm=bn for a model with BatchNorm layers")

    onboard = onboard_by_local_training

    def global_model(self, server: ServerState) -> Params | None:
        return None
