"""`fedarena sweep --epsilons`: one comparison per privacy budget (central DP-FedAvg, the noise multiplier
calibrated to each budget), plus the no-DP reference; :mod:`fedarena.report.privacy_sweep` reads them."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from fedarena import config as cfg
from fedarena.core.types import FedarenaError
from fedarena.experiments.compare import prepare
from fedarena.experiments.sweep import run_cell
from fedarena.privacy import accountant as acc
from fedarena.report.privacy_sweep import cell_result, label, privacy_cost


def noise_for(epsilon: float, population: int, per_round: int, rounds: int, privacy: Any) -> float:
    """The smallest noise multiplier z (to 1e-4 relative) whose epsilon after `rounds` is <= `epsilon`."""
    def eps(z: float) -> float:
        return acc.epsilon(z, population=population, per_round=per_round, rounds=rounds, delta=privacy.dp_delta,
                           sampling=privacy.sampling, accountant=privacy.accountant)

    lo, hi = 0.05, 1.0
    while eps(hi) > epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise FedarenaError(f"no noise multiplier reaches epsilon {epsilon} in {rounds} rounds")
    while hi - lo > 1e-4 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if eps(mid) <= epsilon else (mid, hi)
    return hi


def cell_config(base: cfg.Config, epsilon: float, population: int) -> cfg.Config:
    p = base.privacy
    if math.isinf(epsilon):
        privacy = dataclasses.replace(p, dp_clip=0.0, dp_noise=0.0, target_epsilon=None)
    else:
        clip = p.dp_clip or 1.0
        z = noise_for(epsilon, population, base.train.clients_per_round, base.train.rounds, p)
        privacy = dataclasses.replace(p, dp_clip=clip, dp_noise=math.ceil(z * 1e6) / 1e6, dp_mode="central",
                                      target_epsilon=None)  # rounded up: never above the budget
    return cfg.validate(dataclasses.replace(base, privacy=privacy))


def run_privacy_sweep(base: cfg.Config, epsilons: list[float], out: Path,
                      on_cell: Callable[[int, str, bool], None] | None = None) -> dict[str, Any]:
    """Run (or reuse) one comparison per budget into `out/cells/`, write `out/privacy_sweep.json`."""
    if base.privacy.secagg:
        raise FedarenaError("the epsilon sweep uses central DP, which cannot be combined with --secagg yet")
    if not any(math.isinf(e) for e in epsilons):
        epsilons = [*epsilons, math.inf]  # the no-DP reference every loss is measured against
    if len({label(e) for e in epsilons}) != len(epsilons):
        raise FedarenaError("a privacy budget is listed twice")
    p = prepare(base)
    base = cfg.with_clients_per_round(base, p.data.num_clients)  # unset: min(10, training clients)
    population = p.data.num_clients - len(p.new_clients)
    out.mkdir(parents=True, exist_ok=True)
    cells, inf_summary = [], None
    for i, eps in enumerate(sorted(epsilons)):
        config = cell_config(base, eps, population)
        summary, reused = run_cell(config, out / "cells" / f"eps-{label(eps)}", None)
        cells.append(cell_result(eps, summary, f"cells/eps-{label(eps)}", reused))
        if math.isinf(eps):
            inf_summary = summary
        if on_cell:
            on_cell(i, f"eps-{label(eps)}", reused)
    result = {"algorithms": list(base.run.algorithms), "population": population,
              "clients_per_round": base.train.clients_per_round, "rounds": base.train.rounds,
              "delta": base.privacy.dp_delta, "clip": base.privacy.dp_clip or 1.0, "cells": cells,
              "cost": privacy_cost(cells, inf_summary)}
    tmp = out / f".privacy_sweep.json.partial-{os.getpid()}"
    tmp.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    tmp.replace(out / "privacy_sweep.json")
    return result
