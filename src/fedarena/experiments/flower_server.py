"""The Flower ServerApp of `fedarena deploy` and ``--engine flower-sim``: the comparison's one orchestration
(:func:`fedarena.experiments.compare.run_experiment`) on the SuperNodes.

`main` reads the fedarena config from the run config, asks every SuperNode to describe its client (id, split
sizes, label counts, input shape: no sample leaves a node) and runs every (algorithm, seed) with the round loop,
sampling, broadcast, aggregation, privacy, checkpoints and summary of `compare`: only the client work moves to
the nodes (:class:`fedarena.flower.server_app.FlowerClients`). Personal state stays on the nodes; a flower-sim
run, whose virtual nodes do not outlive it, fetches its clients' final states into the run directory so that
`fedarena continue` and `fedarena forget` can use it. `centralized` and `local` (nothing to federate) are
skipped with a logged note. The run directory is written to the run config's ``out-dir`` on the machine that
runs the ServerApp, plus ``deployment.json`` with Flower's per-exchange timings.

A deploy (not flower-sim, whose virtual nodes end with the run) keeps its resume state beside ``out-dir`` after every
round, and with the run config's ``resume`` finishes an interrupted one (:mod:`fedarena.experiments.deploy_resume`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedarena import config as cfg
from fedarena.core.types import FedarenaError, FederatedData, Params
from fedarena.experiments.checks import NO_SNAPSHOTS
from fedarena.experiments.compare import Prepared, Trained, run_experiment
from fedarena.experiments.deploy_journal import Journal
from fedarena.flower import common
from fedarena.flower.described import dataset_details, stand_in
from fedarena.flower.server_app import FlowerClients, Link, Settings, joined_summary
from fedarena.sim.engine import select_new_clients
from fedarena.tasks import Task

log = logging.getLogger(__name__)


class OnFlower:
    """The clients on Flower SuperNodes reached through `grid` (real ones for deploy, virtual ones for
    flower-sim): a `experiments.compare.Platform`."""

    def __init__(self, grid: Grid, settings: Settings, deployment: str = "") -> None:
        self.grid, self.settings, self.engine = grid, settings, settings.engine
        self.deployment = deployment  # a deploy's id (its nodes keep their state under it), "" on flower-sim
        self.skipped: list[str] = []

    def algorithms(self, config: cfg.Config) -> list[str]:
        if config.forget.keep == "all":
            raise FedarenaError(NO_SNAPSHOTS)
        names = []
        for name in config.run.algorithms:
            if common.federates(cfg.hyperparameters(config, name)):
                names.append(name)
            else:
                self.skipped.append(name)
                log.warning("%s is skipped on %s: it does not federate (nothing crosses the network)", name, self.engine)
        return names

    def privacy(self, settings: Any) -> Any:
        return dataclasses.replace(settings, secure_noise=True)  # a deployment's noise comes from the OS

    def prepare(self, config: cfg.Config) -> Prepared:
        seed = config.run.seed
        link = Link(self.grid, self.settings, seed, self.deployment)
        link.start(self.settings.expect_nodes)
        described = [link.clients[k] for k in sorted(link.clients)]
        data = stand_in(config, described, dataset_details(config))
        task = cfg.make_config_task(config, described[0].input_shape, data.num_classes)
        fetch = self.engine == "flower-sim"  # virtual nodes do not outlive the run: their states come back

        def runtime(algo: Any, task: Task, data: FederatedData, training: list[int], full: Params, seed: int,
                    dpsgd: Any) -> FlowerClients:
            return FlowerClients(link, algo, task, training, full, seed, data.num_classes, dpsgd, fetch_states=fetch)

        log.info("%s: %d SuperNodes (seed %d)", self.engine, data.num_clients, seed)
        new_clients = select_new_clients(seed, data.num_clients, config.data.new_clients)
        return Prepared(data, task, new_clients, runtime)

    def finish(self, config: cfg.Config, trained: list[Trained], summary: dict[str, Any]) -> dict[str, bytes]:
        summary["deployment"] = {"skipped": self.skipped, "num_supernodes": self.settings.expect_nodes}
        deployment = {f"{name}/seed-{t.seed}": {**run.engine, "train_seconds": list(run.train_seconds)}
                      for t in trained for name, (_, run) in t.runs.items()}
        return {"deployment.json": (json.dumps(deployment, indent=2) + "\n").encode()}


def deploy_run(grid: Grid, config: cfg.Config, settings: Settings) -> dict[str, Any]:
    """Every federating algorithm of `config`, for each seed, on the connected SuperNodes; writes the run
    directory `settings.out_dir` and returns the summary. A deploy checkpoints every round beside it and, with
    `settings.resume`, continues the interrupted deploy of that run directory."""
    out = Path(settings.out_dir)
    if settings.engine == "flower-sim":
        return run_experiment(config, OnFlower(grid, settings), out)
    journal = Journal(out, config, settings.resume, join_engine=joined_summary)
    summary = run_experiment(config, OnFlower(grid, settings, journal.deployment), out, train=journal.train)
    journal.close()
    return summary


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    root = logging.getLogger("fedarena")
    if not root.handlers:  # this is the ServerApp process's entry point: its log goes to the SuperLink's
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    settings = Settings.from_run_config(context.run_config)
    config = common.config_from_text(settings.config)
    try:
        deploy_run(grid, config, settings)
    except FedarenaError as exc:
        log.error("fedarena deploy failed: %s", exc)
        (Path(settings.out_dir).parent / f".{Path(settings.out_dir).name}.error").write_text(str(exc) + "\n")
        raise
