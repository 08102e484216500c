"""`fedarena deploy` as a library call: the comparison of `compare`, run on Flower.

- :func:`deploy_local`: starts a SuperLink and one SuperNode per client on 127.0.0.1 (free ports,
  private FLWR_HOME, `tls=True` for a throwaway CA), runs the generic ServerApp with `flwr run`,
  and shuts every process down (also on failure and Ctrl-C).
- :func:`deploy_remote`: `flwr run` against a running SuperLink whose SuperNodes were started by
  their owners (see README, "Deploy on Flower"). The run directory is written by the ServerApp on
  the SuperLink's machine, at `out`.

Either way the run directory has the layout of `compare` (summary.json, metrics.parquet,
config.toml) plus deployment.json (Flower's per-exchange timings and overhead). The config's `privacy`
section applies as in `compare` (secure aggregation and local DP run on the nodes; see server_app).

While it runs, the ServerApp keeps what a restart needs in ``<out>.resume/`` (`experiments.deploy_resume`); with
`resume=True` both functions finish the interrupted deploy of `out` (same config; the nodes kept their state).
`deploy_local`'s working directory defaults to ``<out>.resume/local/``, so a resumed local deploy restarts its
SuperNodes on the state directories they had.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fedarena import config as cfg
from fedarena.core.device import resolve_device
from fedarena.core.types import FedarenaError
from fedarena.experiments import deploy_resume
from fedarena.experiments.checks import check_before_start
from fedarena.experiments.rundir import check_out_dir
from fedarena.flower import common, messages
from fedarena.flower.common import node_clients
from fedarena.flower.processes import LocalFederation, RunConfigValue, write_app_dir
from fedarena.flower.tls import make_local_tls

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timeouts:
    round: float = 60.0  # train replies; a round then aggregates the survivors
    evaluate: float = 120.0  # evaluation replies (waits for reconnecting nodes)
    start: float = 120.0  # SuperNodes to connect


def run_config(config: cfg.Config, out: Path, expect_nodes: int, timeouts: Timeouts,
               resume: bool = False) -> dict[str, RunConfigValue]:
    return {messages.CONFIG: common.config_text(config), messages.OUT_DIR: str(out.resolve()),
            messages.EXPECT_NODES: expect_nodes, messages.ROUND_TIMEOUT: float(timeouts.round),
            messages.EVAL_TIMEOUT: float(timeouts.evaluate), messages.START_TIMEOUT: float(timeouts.start),
            messages.RESUME: resume}


def _budget(config: cfg.Config, timeouts: Timeouts) -> float:
    """An upper bound for `flwr run`: every round of every algorithm and seed timing out, plus start-up."""
    per_round = timeouts.round * (4 if config.privacy.secagg else 1) + timeouts.evaluate  # SecAgg: 4 exchanges
    runs = len(config.run.algorithms) * config.run.seeds
    return timeouts.start * (1 + config.run.seeds) + 60 + per_round * config.train.rounds * runs


def _result(out: Path, log_path: Path) -> dict[str, Any]:
    summary = out / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text())
    error = out.parent / f".{out.name}.error"
    if error.exists():
        reason = error.read_text().strip()
        error.unlink()
        raise FedarenaError(f"deploy failed: {reason}")
    tail = log_path.read_text(errors="replace").strip().splitlines()[-15:] if log_path.exists() else []
    raise RuntimeError("the Flower run ended without a result; last lines of flwr run:\n" + "\n".join(tail))


def deploy_local(config: cfg.Config, out: Path, *, tls: bool = False, timeouts: Timeouts = Timeouts(),
                 workdir: Path | None = None, node_extra: Callable[[int, Path], dict[str, RunConfigValue]] | None = None,
                 on_started: Callable[[LocalFederation], None] | None = None, resume: bool = False) -> dict[str, Any]:
    """Run `config` on a SuperLink and one SuperNode per client on this machine; returns the summary.

    `workdir` (default: ``<out>.resume/local``, removed afterwards unless the run failed) holds
    FLWR_HOME, logs, TLS files and each node's state directory `nodes/<i>/state`. `node_extra(i,
    node_dir)` adds node config entries (e.g. `wire-log`); `on_started(federation)` is called once
    the processes are up (fault tests use it). The SuperNodes run here: a `run.device` this machine lacks is refused
    before any starts. `resume`: finish the interrupted deploy of `out` (same config, same `workdir`), refused
    before anything starts where there is none."""
    check_out_dir(out)
    check_before_start(config)
    resolve_device(config.run.device)
    nodes = node_clients(config)
    config = cfg.with_clients_per_round(config, len(nodes))  # unset: min(10, training clients)
    deploy_resume.check(out, config, resume)
    root = Path(workdir) if workdir else deploy_resume.state_dir(out) / deploy_resume.LOCAL
    if resume and not (root / "nodes").is_dir():
        raise FedarenaError(f"--resume {out}: the interrupted deploy's node states are not in {root / 'nodes'}")
    if not resume and not workdir:
        shutil.rmtree(root, ignore_errors=True)  # left by a deploy that never finished a round
    node_configs = []
    for i, nc in enumerate(nodes):
        node_dir = root / "nodes" / str(i)
        node_dir.mkdir(parents=True, exist_ok=True)
        extra = node_extra(i, node_dir) if node_extra else {}
        node_configs.append({**nc, messages.STATE_DIR: str(node_dir / "state"), **extra})
    files = make_local_tls(root / "tls") if tls else None
    app_dir = write_app_dir(root / "app", run_config(config, out, len(nodes), timeouts, resume))
    summary = run_local(LocalFederation(root, node_configs, tls=files, start_timeout=timeouts.start), app_dir, config,
                        out, timeouts, keep=workdir is not None, on_started=on_started)
    deploy_resume.tidy(out)  # the ServerApp dropped its state, run_local the working directory
    return summary


def run_local(federation: LocalFederation, app_dir: Path, config: cfg.Config, out: Path, timeouts: Timeouts, *,
              keep: bool, on_started: Callable[[LocalFederation], None] | None = None,
              federation_config: str | None = None) -> dict[str, Any]:
    """Start `federation`, `flwr run` the app until it ends, read the result, shut everything down; the
    working files are removed on success unless `keep`, and kept (and named) on failure."""
    ok = False
    try:
        with federation as fed:
            if on_started:
                on_started(fed)
            fed.flwr_run(app_dir, None, _budget(config, timeouts), federation_config)
            summary = _result(out, fed.root / "logs" / "flwr-run.log")
        ok = True
        return summary
    finally:
        if ok and not keep:
            shutil.rmtree(federation.root, ignore_errors=True)
        elif not ok:
            log.warning("Flower working files and logs kept in %s", federation.root)


def deploy_remote(config: cfg.Config, out: Path, superlink: str, *, root_certificates: Path | None = None,
                  insecure: bool = False, expect_nodes: int | None = None, timeouts: Timeouts = Timeouts(),
                  resume: bool = False) -> dict[str, Any]:
    """`flwr run` against the SuperLink at `superlink` (HOST:PORT), waiting for `expect_nodes` SuperNodes
    (default: one per client of the config). TLS unless `insecure`: the SuperLink's certificate is verified
    with `root_certificates` (or the system's trust store). `out` is a path on the SuperLink's machine
    (where the ServerApp runs); the summary is returned when that path is visible here too. `resume`: finish the
    interrupted deploy of `out` (its state is checked here where ``<out>.resume`` is visible, else by the ServerApp)."""
    if root_certificates is not None and not Path(root_certificates).is_file():
        raise FedarenaError(f"--root-certificates: file not found: {root_certificates}")
    if ":" not in superlink:
        raise FedarenaError(f"--superlink expects HOST:PORT, got {superlink!r}")
    check_before_start(config)
    if not resume or deploy_resume.state_dir(out).is_dir():
        deploy_resume.check(out, config, resume)
    expect = expect_nodes if expect_nodes is not None else len(node_clients(config))
    with tempfile.TemporaryDirectory(prefix="fedarena-deploy-") as tmp:
        root = Path(tmp)
        app_dir = write_app_dir(root / "app", run_config(config, out, expect, timeouts, resume))
        with LocalFederation(root, [], remote=superlink, remote_ca=root_certificates, remote_insecure=insecure) as fed:
            fed.flwr_run(app_dir, None, _budget(config, timeouts))
            return _result(out, root / "logs" / "flwr-run.log")


__all__ = ["Timeouts", "deploy_local", "deploy_remote", "node_clients"]
