"""What a trained model reveals about its clients' training samples: membership inference on the model each
client keeps (its personal model) and on the shared global model.

User-level DP (DP-FedAvg) and secure aggregation protect what leaves a client: its update of the shared
part. A personalized algorithm's personal part never leaves the device, so nobody but the device sees it
during training; but it is trained on the client's data without any noise, so whoever later holds or
queries the personal model (the device's user, an app serving it, an attacker with the device) can tell
the client's training samples from other samples as well as if no DP had been used at all. Sample-level
DP-SGD on the client (privacy.sgd_noise) is what protects that.

`client_membership` measures both with the loss-threshold attack of Yeom et al., "Privacy Risk in Machine
Learning: Analyzing the Connection to Overfitting" (CSF 2018), shadow-model free: per client, the ROC AUC
of the score -loss separating its train samples (members) from its test samples (non-members from the same
distribution, never trained on); 0.5 = no membership signal. The means are over clients, unweighted.
"""

from __future__ import annotations

import statistics
from typing import Any, Sequence

import torch

from fedarena.core.types import ClientData, FedarenaError, Params
from fedarena.tasks import Task

ATTACK = "loss-threshold membership inference (Yeom et al., CSF 2018): AUC of -loss, train vs test samples"


def client_membership(task: Task, personal: Params, global_params: Params | None,
                      d: ClientData) -> tuple[float | None, float | None]:
    """The attack's AUC on the client's personal model and on the global model (None where not measurable)."""
    if d.num_train == 0 or d.num_test == 0:
        return None, None
    own = mia_auc(task, personal, d.x_train, d.y_train, d.x_test, d.y_test)
    shared = None if global_params is None else mia_auc(task, global_params, d.x_train, d.y_train, d.x_test, d.y_test)
    return own, shared


def summarize(personal: Sequence[float | None], shared: Sequence[float | None]) -> dict[str, Any]:
    """Mean and max over the clients measured (unweighted)."""
    own = [a for a in personal if a is not None]
    glob = [a for a in shared if a is not None]
    return {
        "attack": ATTACK,
        "clients": len(own),
        "personal_auc_mean": statistics.fmean(own) if own else None,
        "personal_auc_max": max(own) if own else None,
        "global_auc_mean": statistics.fmean(glob) if glob else None,
        "global_auc_max": max(glob) if glob else None,
    }


@torch.no_grad()
def sample_losses(task: Task, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = task.forward(params, x)
    return torch.nn.functional.cross_entropy(logits, y, reduction="none").double()


def auc(members: torch.Tensor, nonmembers: torch.Tensor) -> float:
    """P(score(member) > score(non-member)) + 0.5 P(tie): the Mann-Whitney form of the ROC AUC."""
    if members.numel() == 0 or nonmembers.numel() == 0:
        raise FedarenaError("membership inference needs at least one member and one non-member sample")
    diff = members.reshape(-1, 1) - nonmembers.reshape(1, -1)
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def mia_auc(task: Task, params: Params, x_member: torch.Tensor, y_member: torch.Tensor,
            x_out: torch.Tensor, y_out: torch.Tensor) -> float:
    """Loss-threshold attack AUC: members have lower loss, so the score is -loss."""
    return auc(-sample_losses(task, params, x_member, y_member), -sample_losses(task, params, x_out, y_out))
