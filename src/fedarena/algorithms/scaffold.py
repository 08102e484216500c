"""SCAFFOLD: Karimireddy, Kale, Mohri, Reddi, Stich, Suresh, "SCAFFOLD: Stochastic Controlled Averaging
for Federated Learning", ICML 2020, arXiv 1910.06378.

Algorithm 1 with option II. The server broadcasts (x, c) (`broadcast`: c travels in `Broadcast.extra`, so
the ledger counts the doubled download); client i keeps its control variate c_i in `ClientState.extra`
(its storage, one model's size). Local steps y <- y - eta_l (g_i(y) - c_i + c) (line 10) are plain SGD
on F_i(y) + <c - c_i, y>, whose gradient is exactly that (`local_objective`). Then (`client_update`)
c_i+ = c_i - c + (x - y) / (K eta_l) (line 12, option II; K = the local steps taken, eta_l = the
comparison's lr); the client uploads (line 13) y (the model, as FedAvg: Delta y = y - x) and
Delta c_i = c_i+ - c_i, so the upload is 2 models too. The server (`aggregate`) sets
x <- x + eta_g (mean y - x) (lines 16-17, written as `lerp` so that eta_g = 1 gives the mean exactly)
and c <- c + (1/N) sum_S Delta c_i (lines 16-17, see N below).

Choices where the paper is silent or assumes equal clients:
- Weights: the paper averages uniformly (f = 1/N sum f_i); like every fedarena algorithm we weight by the
  train size n_i (FedAvg's objective), both the model mean and c = sum_i n_i c_i / sum_i n_i.
- N: the server cannot know the number of clients from the contract. It learns it: it keeps
  sum_i n_i c_i and the ids and total weight of the clients it has heard from (`ServerState.extra`, never
  sent), and c is the weighted mean over those. Clients never heard from have c_i = 0, so once every
  client has participated (at once under full participation) c is the paper's (1/N) sum_i c_i exactly;
  before that c is the mean of the control variates that exist instead of being diluted by zeros.
- Control variates cover the trainable keys only (buffers such as BatchNorm statistics get no gradient);
  c_0 = 0 is known to every client and not sent, so round 1 downloads x only.

Defaults: eta_g = 1 (Sec. 7: "we always use global step-size eta_g = 1"). `control_variates=False`
holds c = c_i = 0 and sends neither: that is FedAvg with server step eta_g (bit for bit FedAvg at
eta_g = 1; tested), the ablation the paper compares against. Tuning searches eta_g log-uniformly on
[0.1, 10].
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING

import torch

from fedarena.core.algorithm import Batch, algorithm, fedavg_aggregate, task_loss
from fedarena.core.local_train import local_sgd
from fedarena.core.space import hp
from fedarena.core.types import Broadcast, ClientData, ClientState, FedarenaError, Params, ServerState, Upload

if TYPE_CHECKING:
    from fedarena.tasks import Task

C = "c/"  # c (broadcast), c_i (client state), Delta c_i (upload), per trainable key
SUM, SEEN, WEIGHT = "c_sum/", "seen", "seen_weight"  # server: sum_i n_i c_i, ids heard from, sum_i n_i


@algorithm("scaffold", "global", "Karimireddy et al., ICML 2020, arXiv 1910.06378",
           server_step="custom", per_sample_risk=False,
           not_per_sample=("its local objective adds <c - c_i, y>, a parameter-dependent term whose gradient is not "
                          "per-sample"))
class Scaffold:
    eta_g: float = hp(1.0, low=0.1, high=10.0, log=True,
                      source="Karimireddy et al. 2020, Sec. 7: eta_g = 1 in every experiment (no grid given); PFLlib's "
                             "SCAFFOLD default 1.0 (--server_learning_rate); ours: a decade on each side of 1")
    control_variates: bool = True

    def __post_init__(self) -> None:
        if not self.eta_g > 0:
            raise FedarenaError(f"scaffold.eta_g must be > 0, got {self.eta_g}")

    def broadcast(self, server: ServerState, client_id: int) -> Broadcast:
        """(x, c), c = sum_i n_i c_i / sum_i n_i over the clients heard from (none yet: c = 0, not sent)."""
        if WEIGHT not in server.extra:
            return Broadcast(params=server.params)
        w = server.extra[WEIGHT]
        c = {k[len(SUM):]: v / w for k, v in server.extra.items() if k.startswith(SUM)}
        return Broadcast(params=server.params, extra={C + k: v.to(server.params[k].dtype) for k, v in c.items()})

    def local_objective(self, task: Task, params: Params, *, broadcast: Broadcast, state: ClientState,
                        batch: Batch) -> torch.Tensor:
        """F_i(y) + <c - c_i, y> (c from the broadcast, c_i from the state): SGD on it is line 10's step."""
        loss = task_loss(self, task, params, broadcast=broadcast, state=state, batch=batch)
        c = {k[len(C):]: v for k, v in broadcast.extra.items() if k.startswith(C)}
        if not c:  # c = 0 and so is every c_i (round 1, or control_variates=False)
            return loss
        return loss + sum(((c[k] - state.extra[C + k]) * params[k]).sum() for k in c)

    def client_update(self, task: Task, broadcast: Broadcast, state: ClientState, data: ClientData,
                      rng: torch.Generator) -> tuple[Upload, ClientState]:
        x = broadcast.params
        keys = [k for k in x if k in task.parameter_names] if self.control_variates else []
        c = {k: broadcast.extra.get(C + k, torch.zeros_like(x[k])) for k in keys}
        c_i = {k: state.extra.get(C + k, torch.zeros_like(x[k])) for k in keys}
        mine = ClientState(params=state.params, extra={C + k: v for k, v in c_i.items()})  # c_i = 0 made explicit
        objective = partial(self.local_objective, task, broadcast=broadcast, state=mine)
        y, loss, steps = local_sgd(objective, x, task.parameter_names, data.x_train, data.y_train, task.sgd, rng)
        scale = 1.0 / (steps * task.sgd.lr) if steps else 0.0  # no step taken: c_i+ = c_i - c
        c_new = {k: c_i[k] - c[k] + (x[k] - y[k]) * scale for k in keys}  # line 12, option II
        upload = Upload(params=y, num_samples=data.num_train, extra={C + k: c_new[k] - c_i[k] for k in keys},
                        metrics={"train_loss": loss, "steps": steps})
        return upload, ClientState(params=state.params, extra={C + k: v for k, v in c_new.items()})

    def aggregate(self, server: ServerState, uploads: Mapping[int, Upload]) -> ServerState:
        """x <- x + eta_g (mean y - x); sum_i n_i c_i += sum_S n_i Delta c_i (lines 16-17)."""
        mean = fedavg_aggregate(self, server, uploads).params
        params = {k: torch.lerp(x, mean[k], self.eta_g) if x.is_floating_point() else mean[k]
                  for k, x in server.params.items()}
        extra = dict(server.extra)
        senders = sorted(cid for cid, u in uploads.items() if u.extra)
        if senders:
            seen = server.extra.get(SEEN, torch.zeros(0, dtype=torch.int64))
            known = set(seen.tolist())
            new = [cid for cid in senders if cid not in known]
            extra[SEEN] = torch.cat([seen, torch.tensor(new, dtype=torch.int64)])
            extra[WEIGHT] = server.extra.get(WEIGHT, torch.tensor(0.0, dtype=torch.float64)) + sum(
                float(uploads[cid].num_samples) for cid in new)
            for cid in senders:
                for name, dc in uploads[cid].extra.items():
                    key = name[len(C):]
                    if not name.startswith(C) or key not in server.params or dc.shape != server.params[key].shape:
                        raise FedarenaError(f"scaffold: client {cid} uploaded an unknown control variate {name!r}")
                    extra[SUM + key] = extra.get(SUM + key, 0.0) + uploads[cid].num_samples * dc.double()
        return ServerState(params=params, round=server.round + 1, extra=extra)
