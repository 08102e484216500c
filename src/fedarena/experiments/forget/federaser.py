"""FedEraser: Liu, Ma, Yang, Liu, Zhang, "FedEraser: Enabling Efficient Client-Level Data Removal from
Federated Learning Models", IWQoS 2021, arXiv 2012.13891.

The server keeps, every Delta_t rounds, the clients' updates. To remove clients it replays the run from
the last round before they took part, one *calibration round* per kept round t_j (Sec. IV):
- the remaining clients of round t_j train from the unlearned model M~_{t_j} for E_cali = r * E local
  epochs (calibration training) and send their updates U^_k;
- each update is calibrated, per parameter tensor, to the stored update's length and the new update's
  direction: U~_k = ||U_k|| * U^_k / ||U^_k|| (Eq. 3; the official code does it tensor by tensor);
- M~_{t_{j+1}} = M~_{t_j} + sum_k n_k U~_k / sum_k n_k (Eq. 4, the FedAvg weights).
Defaults are the paper's experimental setting as we read Sec. V: Delta_t = 2, r = 0.5 (E_cali is rounded
down, at least one epoch: with E = 1 calibration trains a full epoch, and the saving comes from Delta_t).
Only the norms of the stored updates enter Eq. 3, so fedarena keeps those (forget/store.py).

Applies to algorithms whose server step is FedAvg's weighted mean of uploaded models (`server_step` "mean",
the shared part for personalized ones); others are refused with the reason. That includes "mean+optimizer"
algorithms (FedAvgM, FedAdam, ...): Eq. 4 makes the calibrated mean the next model, while their server moves
by an optimizer step whose moments carry every earlier round's mean, so the calibrated model would be neither
theirs nor a retrain of theirs. Personal parts of the remaining clients are kept as
they were trained (FedEraser recalibrates the shared model only) — measured, not assumed, by the probes.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from fedarena.core.types import SGD, FedarenaError, ServerState
from fedarena.experiments.forget.source import Outcome, Source
from fedarena.privacy.dpsgd import SampleLevel

INTERVAL = 2  # Delta_t
RATIO = 0.5  # r = E_cali / E


def federaser(src: Source, name: str, interval: int = INTERVAL, ratio: float = RATIO) -> Outcome:
    algo = src.algo(name)
    if not algo.federated:
        raise FedarenaError(f"federaser cannot forget from {name}: it does not federate (there are no client "
                            "updates to calibrate); use --method retrain")
    if (unchanged := src.nothing_shared(name)) is not None:
        return unchanged
    if src.config.privacy.secagg:
        raise FedarenaError(f"federaser cannot forget from {name}: the run used secure aggregation, so the server "
                            "never saw (nor kept) a single client's update; use --method retrain")
    if algo.server_step != "mean":
        raise FedarenaError(
            f"federaser cannot forget from {name}: its server step is not FedAvg's mean of uploaded models "
            f"(server_step={algo.server_step!r}; FedEraser, Eq. 4, calibrates exactly that); use --method retrain"
        )
    first = src.first_round(name)
    if first is None:
        return src.original(name)
    stored, t = src.stored(name), src.config.train
    if src.stateful(name) and src.keep != "all":
        raise FedarenaError(
            f"federaser needs {name}'s client states during calibration: rerun the comparison with forget.keep=all"
        )
    start_time = time.perf_counter()
    server = stored.server(first - 1)
    norms = stored.norms()
    own = src.task_of(name)
    sgd = own.sgd
    task = dataclasses.replace(own, sgd=SGD(max(1, math.floor(ratio * sgd.epochs)), sgd.batch_size, sgd.lr))
    # calibration trains as the run trained: on its engine and device (the runtime `prepare` built for the run)
    clients = src.prepared.runtime(algo, task, src.data, src.remaining, src.initial, src.seed,
                                   SampleLevel.build(src.config.privacy))
    ledger = clients.ledger
    calibrated_rounds = 0
    try:
        for rnd in range(first, t.rounds + 1, interval):
            kept = {src.index[cid]: v for cid, v in norms.get(rnd, {}).items() if src.index[cid] not in src.forgotten}
            if not kept:
                continue
            clients.states.update(src.states_at(name, rnd - 1, only=kept))
            uploads = clients.train(rnd, {c: algo.broadcast(server, c) for c in kept})
            server = _calibrated_step(server, uploads, kept)
            calibrated_rounds += 1
    finally:
        clients.close()
    final = src.original(name)
    return Outcome(
        server=server, states=final.states, rounds=calibrated_rounds,
        bytes=sum(ledger.up.values()) + sum(ledger.down.values()), seconds=time.perf_counter() - start_time,
        note=f"FedEraser: {calibrated_rounds} calibration rounds (Delta_t={interval}, E_cali={task.sgd.epochs}) "
             f"from the round-{first - 1} checkpoint; remaining clients keep their personal state",
    )


def _calibrated_step(server: ServerState, uploads: dict, kept: dict) -> ServerState:
    """Eqs. 3-4: each new update rescaled tensor by tensor to its stored length, then FedAvg-weighted."""
    total = sum(kept[c]["weight"] for c in uploads)
    params = dict(server.params)
    for key, old in server.params.items():
        step = torch.zeros_like(old, dtype=torch.float64)
        for c, upload in uploads.items():
            if key not in upload.params:
                continue
            new = (upload.params[key] - old).double()
            length = torch.linalg.vector_norm(new)
            if length > 0:
                step += kept[c]["weight"] / total * kept[c]["norms"][key] * new / length
        params[key] = (old.double() + step).to(old.dtype)
    return ServerState(params=params, round=server.round + 1, extra=server.extra)
