"""Local-only training: every client trains its own model on its own data and never communicates.

The standard lower baseline of the personalization literature (e.g. Sec. 5 of Li et al., "Ditto:
Fair and Robust Federated Learning Through Personalization", ICML 2021, arXiv 2012.04221, and of
T. Dinh et al., pFedMe, NeurIPS 2020). All keys are personal, so broadcasts and uploads carry no tensor
and cost 0 bytes; a client trains (E epochs of the same local SGD) in the rounds it is sampled, so
its amount of local work matches the federated algorithms'.
"""

from __future__ import annotations

from fedarena.core.algorithm import algorithm, onboard_by_local_training
from fedarena.core.types import EVERYTHING, Params, ServerState


@algorithm("local", "baseline", "local-only baseline (e.g. Li et al., ICML 2021, arXiv 2012.04221, Sec. 5)",
           personal=EVERYTHING, server_step="mean", per_sample_risk=True, communicates=False)
class Local:
    """Every key is personal: the shared part is empty, so nothing is sent and the server state stays
    empty; a client trains in the rounds it is sampled."""

    onboard = onboard_by_local_training  # a new client trains its own model from scratch

    def global_model(self, server: ServerState) -> Params | None:
        return None
