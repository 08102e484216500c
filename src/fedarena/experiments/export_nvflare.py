"""`fedarena export nvflare`: a config (or a run directory's) as an NVFlare 2.9 job folder (docs/nvflare.md).

The job folder is NVFlare's format: ``meta.json`` (its deploy map: ``app_server`` to the server, ``app_<site>`` to
each site) and one folder per app with ``config/`` and ``custom/``:

- ``app_server/config/config_fed_server.json``: one workflow, `fedarena.nvflare_job.controller.FedarenaController`
  (a ModelController running fedarena's round loop), with the sites, the clients' ids and split sizes, the model's
  input shape and classes;
- ``app_<site>/config/config_fed_client.json``: NVFlare's ClientAPIExecutor running ``custom/fedarena_client.py``
  in process with ``--client I`` (the fedarena client the site serves), params exchanged as numpy arrays;
- ``config/fedarena.toml`` in every app: the resolved fedarena config (one seed, the exported algorithms).

The job runs fedarena's code, so every site and the server need fedarena (this version) installed beside NVFlare.
Which algorithms fit is decided by their declared capabilities (`nvflare_job.common.refusal`); features a job does
not carry (privacy, attacks, robust rules, new clients, tuning, several seeds) are refused, each with its key.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import fedarena
from fedarena import config as cfg
from fedarena.core.types import FedarenaError
from fedarena.data import load_federated
from fedarena.experiments.rundir import atomic_dir
from fedarena.nvflare_job import common as c
from fedarena.sim.runtime import initial_model

NAME_CHARACTERS = '"!@#$%^&*()+?=,<>/\\ '  # characters NVFlare refuses in a site name (job_config.api), and spaces


def load_config(source: Path, sets: list[str]) -> cfg.Config:
    """The config of `source`: a TOML config file, or a run directory's ``config.toml``; then `sets` overrides."""
    if source.is_dir():
        if not (source / "config.toml").is_file():
            raise FedarenaError(f"{source} is a directory without config.toml: not a run directory")
        source = source / "config.toml"
    elif not source.is_file():
        raise FedarenaError(f"config or run directory not found: {source}")
    return cfg.build(str(source), {}, list(sets))


def check_exportable(config: cfg.Config) -> None:
    """Refuse what an exported job does not carry, naming the config key."""
    p, d = config.privacy, config.data
    refused = [
        (config.run.seeds != 1, f"run.seeds is {config.run.seeds}: a job runs one seed (run.seed); export with "
                                "--set run.seeds=1"),
        (p.secagg or p.dp_clip > 0 or p.sgd_noise > 0,
         "privacy: secure aggregation and DP are not exported (NVFlare has its own privacy filters, docs/nvflare.md)"),
        (config.attack.on, f"attack.kind={config.attack.kind}: attacks are simulated in process only"),
        (config.robust.on, f"robust.aggregator={config.robust.aggregator}: robust rules are not exported"),
        (d.new_clients > 0, f"data.new_clients={d.new_clients}: onboarding held-out clients is not exported"),
        (bool(config.forget.probe), "forget.probe: the deletion probe's planted data is not exported"),
        (config.tune.trials > 0, f"tune.trials={config.tune.trials}: a job trains the config's hyperparameters; "
                                 "export with --set tune.trials=0"),
    ]
    for bad, message in refused:
        if bad:
            raise FedarenaError(f"not exported to NVFlare: {message}")


def check_sites(sites: list[str], num_clients: int) -> None:
    if len(sites) != num_clients:
        raise FedarenaError(f"--sites names {len(sites)} sites; the config has {num_clients} clients (one site each)")
    if len(set(sites)) != len(sites):
        raise FedarenaError(f"--sites names a site twice: {sites}")
    for s in sites:
        if not s or s == "server" or any(ch in NAME_CHARACTERS for ch in s):
            raise FedarenaError(f"--sites: {s!r} is not a usable NVFlare site name")


def export_nvflare(source: Path, out: Path, algorithms: list[str] | None = None, sets: list[str] | None = None,
                   sites: list[str] | None = None, task_timeout: int = 0) -> dict[str, Any]:
    """Write the NVFlare job of `source`'s config (its algorithms, or `algorithms`) to `out` (absent or empty; written
    to a temporary folder beside it and renamed at the end). Returns what was exported and how to run it."""
    config = load_config(source, sets or [])
    if algorithms:
        config = cfg.validate(dataclasses.replace(config, run=dataclasses.replace(config.run, algorithms=tuple(algorithms))))
    if task_timeout < 0:
        raise FedarenaError(f"--timeout must be >= 0 seconds (0: wait for every site), got {task_timeout}")
    check_exportable(config)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FedarenaError(f"output directory {out} exists and is not empty")
    data = load_federated(config.data, seed=config.run.seed, synthetic=config.synthetic, shakespeare=config.shakespeare)
    config = cfg.with_clients_per_round(config, data.num_clients)
    full = initial_model(cfg.make_config_task(config, data.input_shape, data.num_classes), config.run.seed)
    for name in config.run.algorithms:
        reason = c.refusal(cfg.hyperparameters(config, name), full)
        if reason:
            fitting = [n for n in config.run.algorithms if not c.refusal(cfg.hyperparameters(config, n), full)]
            hint = f"; export the others with --algorithms {','.join(fitting)}" if fitting else ""
            raise FedarenaError(f"{name} is not exported to NVFlare: {reason}{hint}")
    names = sites or [f"site-{i + 1}" for i in range(data.num_clients)]
    check_sites(names, data.num_clients)
    n = data.num_clients
    server_args = {
        "algorithms": list(config.run.algorithms), "sites": names, "client_ids": list(data.client_ids),
        "train_sizes": [data.client(i).num_train for i in range(n)],
        "test_sizes": [data.client(i).num_test for i in range(n)],
        "input_shape": list(data.input_shape), "num_classes": data.num_classes, "task_timeout": task_timeout,
    }
    with atomic_dir(out) as tmp:
        _write_job(tmp, config, names, server_args, data.num_classes)
    run = f"nvflare simulator {out} -n {n} -t {n}" if sites is None else f"nvflare simulator {out} -c {','.join(names)}"
    return {"job": str(out), "algorithms": list(config.run.algorithms), "sites": names, "clients": list(data.client_ids),
            "rounds": config.train.rounds, "clients_per_round": config.train.clients_per_round, "command": run}


def _write_job(root: Path, config: cfg.Config, sites: list[str], server_args: dict[str, Any], num_classes: int) -> None:
    """meta.json and the apps (see the module docstring)."""
    deploy = {"app_server": ["server"], **{f"app_{s}": [s] for s in sites}}
    meta = {"name": "fedarena", "resource_spec": {}, "min_clients": len(sites), "deploy_map": deploy}
    (root / "meta.json").write_text(json.dumps(meta, indent=4))
    server = {"format_version": 2, "workflows": [{"id": "controller", "path": c.CONTROLLER, "args": server_args}],
              "components": [], "task_data_filters": [], "task_result_filters": []}
    _app(root / "app_server", config, "config_fed_server.json", server)
    for i, site in enumerate(sites):
        executor = {"path": c.EXECUTOR, "args": {
            "execution_mode": "in_process", "task_script_path": c.SCRIPT,
            "task_script_args": f"--client {i} --num-classes {num_classes}", "params_exchange_format": "numpy"}}
        client = {"format_version": 2, "executors": [{"tasks": [c.TRAIN, c.EVALUATE], "executor": executor}],
                  "components": [], "task_data_filters": [], "task_result_filters": []}
        app = root / f"app_{site}"
        _app(app, config, "config_fed_client.json", client)
        (app / "custom" / c.SCRIPT).write_text(c.CLIENT_SCRIPT)


def _app(app: Path, config: cfg.Config, name: str, app_config: dict[str, Any]) -> None:
    (app / "config").mkdir(parents=True)
    (app / "custom").mkdir()
    (app / "config" / name).write_text(json.dumps(app_config, indent=4))
    cfg.dump_toml(config, app / "config" / c.JOB_CONFIG, fedarena.__version__)
