"""`fedarena sweep`: run the same comparison over a grid of heterogeneity cells (see :mod:`fedarena.report.sweep`
for what is read from them). Each cell is one ordinary multi-seed comparison written as a run directory
`OUT/cells/<cell>/`; a cell whose directory already holds a `summary.json` of the same resolved config is reused,
so an interrupted sweep resumes where it stopped; a cell directory holding another config's run is refused."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from fedarena import config as cfg
from fedarena.core.device import resolve_device
from fedarena.core.types import FedarenaError
from fedarena.experiments.compare import run_compare
from fedarena.report.sweep import SIMILARITY_RULE, Cell, cell_result, crossover, similarity_verdict

log = logging.getLogger(__name__)

DEFAULT_CELLS = ("dirichlet-0.05", "dirichlet-0.1", "dirichlet-0.3", "dirichlet-1", "dirichlet-10", "iid",
                 "shards-2", "shards-5")
QUICK_CELLS = ("dirichlet-0.1", "iid", "shards-2")
DEFAULT_SEEDS = 3
QUICK_SEEDS = 2
DEFAULT_ALGORITHMS = ("fedavg", "fedprox", "local", "fedavg-ft", "fedper", "ditto")


def default_algorithms() -> tuple[str, ...]:
    from fedarena.algorithms import REGISTRY

    return tuple(a for a in DEFAULT_ALGORITHMS if a in REGISTRY)


def cell_config(base: cfg.Config, cell: Cell) -> cfg.Config:
    data = dataclasses.replace(
        base.data, partition=cell.partition,
        alpha=cell.alpha if cell.alpha is not None else base.data.alpha,
        shards_per_client=cell.shards_per_client if cell.shards_per_client is not None else base.data.shards_per_client,
    )
    return cfg.validate(dataclasses.replace(base, data=data))


def _comparable(tree: dict[str, Any]) -> str:
    """The config as the reuse of a cell compares it: without `run.device` (where a cell trained is not what it
    computes; a cell written before run.device existed has none)."""
    run = {k: v for k, v in tree.get("run", {}).items() if k != "device"}
    return json.dumps({**tree, "run": run}, sort_keys=True)


def run_cell(config: cfg.Config, cell_dir: Path, on_round: Callable[[str, int], None] | None) -> tuple[dict, bool]:
    """(summary, reused): the cell's summary, from disk when a finished run of this config is there."""
    done = cell_dir / "summary.json"
    if done.is_file():
        summary = json.loads(done.read_text())
        if _comparable(summary["config"]) != _comparable(cfg.to_tree(config)):
            raise FedarenaError(f"{cell_dir} holds a run with a different config; sweep into a new --out")
        log.info("reusing %s", cell_dir)
        return summary, True
    return run_compare(config, cell_dir, on_round), False


def run_sweep(base: cfg.Config, cells: list[Cell], out: Path,
              on_cell: Callable[[int, str, bool], None] | None = None,
              on_round: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Run (or reuse) every cell into `out/cells/<cell>/`, then write `out/sweep.json`; return the sweep
    result (render.write_sweep_report draws it). `on_cell(index, name, reused)` reports each cell."""
    if base.data.name != "digits":
        raise FedarenaError(f"fedarena sweep re-partitions embedded data in each cell: use --data digits (not "
                            f"{base.data.name}); --epsilons sweeps privacy budgets on any data")
    if len({c.name for c in cells}) != len(cells):
        raise FedarenaError("a sweep cell is listed twice")
    resolve_device(base.run.device)  # a device this machine lacks is refused before the sweep directory is made
    base = cfg.with_clients_per_round(base, base.data.num_clients)  # digits: its clients are data.num_clients
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for i, cell in enumerate(cells):
        config = cell_config(base, cell)
        summary, reused = run_cell(config, out / "cells" / cell.name, on_round)
        results.append(cell_result(cell, summary, f"cells/{cell.name}", reused))
        if on_cell:
            on_cell(i, cell.name, reused)
    verdict = similarity_verdict(results)
    result = {
        "algorithms": list(base.run.algorithms),
        "seeds": [base.run.seed + i for i in range(base.run.seeds)],
        "cells": results,
        "crossover": crossover(results),
        "data_similarity_verdict": verdict.value,
        "rule": SIMILARITY_RULE,
    }
    tmp = out / f".sweep.json.partial-{os.getpid()}"
    tmp.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    tmp.replace(out / "sweep.json")
    return result
