"""APFL: Deng, Kamani, Mahdavi, "Adaptive Personalized Federated Learning", arXiv 2003.13461 (2020).

Each client i keeps a local model v_i and a mixing weight alpha_i; its personal model is the mixture
v_bar_i = alpha_i v_i + (1 - alpha_i) w (Sec. 3; `personalize`, with the downloaded global w). On each
local step, with one minibatch xi, Algorithm 1 updates simultaneously
  w_i     <- w_i - eta grad f_i(w_i; xi)                          (the local copy of w, as FedAvg)
  v_i     <- v_i - eta grad_v f_i(v_bar_i; xi) = v_i - eta alpha_i grad f_i(v_bar_i; xi)
  alpha_i <- alpha_i - eta grad_alpha f_i(v_bar_i; xi) = alpha_i - eta <v_i - w_i, grad f_i(v_bar_i; xi)>
(the alpha step is the paper's adaptive alpha: a gradient step on f_i(v_bar_i) in alpha), with v_bar_i
formed from w_i before the step. All three are one step of `local_sgd` on the joint objective
f_i(w) + f_i(alpha v + (1 - alpha) sg(w)) over the keys of w, v and alpha (`joint_objective`); the
stop-gradient sg keeps the second term from moving w, so w's gradient is FedAvg's bit for bit. The
server averages the uploaded w_i as FedAvg (`aggregate` *is* FedAvg's; the paper averages uniformly,
equal on balanced clients); `global_model` is w.
Consequently APFL's global model is FedAvg's model (same seed) for any alpha, adaptive or not (tested).

alpha lives in [0, 1] (the paper's constraint): the mixture uses clamp(alpha, 0, 1) and the kept alpha is
clamped at the end of the round. Unlike a projection after every step, an alpha pushed past 0 or 1 stays
at that end (zero gradient) until the round ends; it can move back from the next round on. The mixture
is of parameters, as the paper defines v_bar; the authors' FedTorch code instead mixes the two models'
outputs and takes one clipped alpha step per round (at the round's first local step), not one per step.
With BatchNorm the mixture uses v's own statistics (trainable keys are mixed, buffers are v's).

State kept by a client: v_i (a full model) and alpha_i (`ClientState.extra["alpha"]`). A new client
starts v from the downloaded w with the initial alpha and trains one round (`onboard`).

Defaults: adaptive = True, the paper's adaptive alpha (its headline method; fixed alphas are its
ablation). alpha = 0.5, the default and README example of the authors' code (FedTorch
`--fed_personal_alpha 0.5`, `-pa 0.5`): neither model dominates at the start. The learning rate eta of
all three updates is the comparison's local learning rate (the paper and its code use one eta). Tuning
searches alpha (with `adaptive`, its initial value) uniformly on [0, 1].
"""

from __future__ import annotations

from collections.abc import Collection
from functools import partial
from typing import TYPE_CHECKING

import torch

from fedarena.core.algorithm import Batch, algorithm, onboard_by_local_training
from fedarena.core.local_train import local_sgd
from fedarena.core.space import hp
from fedarena.core.types import Broadcast, ClientData, ClientState, FedarenaError, Params, Upload

if TYPE_CHECKING:
    from fedarena.tasks import Task

V = "v:"  # prefix of the local model's keys inside the joint parameters
ALPHA = ":alpha"


def mix(alpha: torch.Tensor, v: Params, w: Params, trainable: Collection[str]) -> Params:
    """alpha v + (1 - alpha) w on the trainable keys; v's own buffers (BatchNorm statistics)."""
    return {k: alpha * v[k] + (1 - alpha) * w[k] if k in trainable else v[k] for k in v}


@algorithm("apfl", "personalized", "Deng et al., arXiv 2003.13461 (2020)",
           server_step="mean", per_sample_risk=False,
           not_per_sample=("its objective mixes the personal and the global model (alpha v + (1 - alpha) w), trained "
                          "jointly"))
class APFL:
    alpha: float = hp(0.5, low=0.0, high=1.0,
                      source="Deng et al. 2020, Sec. 3: alpha in [0, 1]; FedTorch and FL-bench default 0.5, PFLlib "
                             "1.0 (-al); the whole interval, linear")
    adaptive: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise FedarenaError(f"apfl.alpha must be in [0, 1], got {self.alpha}")

    onboard = onboard_by_local_training

    def init_client(self, params: Params) -> ClientState:
        return ClientState(params=dict(params), extra={"alpha": torch.tensor(float(self.alpha))})

    def joint_objective(self, task: Task, params: Params, *, broadcast: Broadcast, state: ClientState,
                        batch: Batch) -> torch.Tensor:
        """f_i(w; xi) + f_i(alpha v + (1 - alpha) sg(w); xi): its gradient is Algorithm 1's three steps."""
        x, y = batch
        w = {k: params[k] for k in broadcast.params}
        v = {k: params[V + k] for k in state.params}
        alpha = params[ALPHA].clamp(0, 1)
        fixed_w = {k: t.detach() for k, t in w.items()}
        return task.loss(w, x, y) + task.loss(mix(alpha, v, fixed_w, task.parameter_names), x, y)

    def client_update(self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData,
                      rng: torch.Generator) -> tuple[Upload, ClientState]:
        joint = {**broadcast.params, **{V + k: t for k, t in state.params.items()}, ALPHA: state.extra["alpha"]}
        trainable = {*task.parameter_names, *(V + k for k in task.parameter_names), *([ALPHA] if self.adaptive else [])}
        objective = partial(self.joint_objective, task, broadcast=broadcast, state=state)
        out, loss, steps = local_sgd(objective, joint, trainable, data.x_train, data.y_train, task.sgd, rng)
        alpha = out[ALPHA].clamp(0, 1)
        metrics = {"train_loss": loss, "steps": steps, "alpha": float(alpha)}
        upload = Upload(params={k: out[k] for k in broadcast.params}, num_samples=data.num_train, metrics=metrics)
        return upload, ClientState(params={k: out[V + k] for k in state.params}, extra={"alpha": alpha})

    def personalize(self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData,
                    rng: torch.Generator) -> Params:
        """v_bar_i = alpha_i v_i + (1 - alpha_i) w with the downloaded global model w."""
        return mix(state.extra["alpha"], state.params, broadcast.params, task.parameter_names)
