"""`--engine flower-sim`: a comparison on Flower's simulation runtime (Ray backend), with the one
generic ServerApp and ClientApp of `fedarena deploy`.

Flower 1.42's documented path is used (``flwr.simulation.run_simulation`` is deprecated there and
cannot hand the run config to the ClientApps): a SuperLink started with ``--simulation`` on a free
loopback port, and ``flwr run APP CONNECTION --federation-config "num-supernodes=N ..."``. The
SuperLink's simulation process runs the ServerApp (:mod:`fedarena.flower.server_app`, unchanged)
and N virtual SuperNodes on Ray actors, one per client. A virtual node loads only its own client's
data (node config ``partition-id``) and keeps its personal state in its ``context.state``, which
the simulation runtime holds per node between messages (see :mod:`fedarena.flower.client_app`).
The ServerApp writes the run directory of `compare` (summary.json with ``"engine": "flower-sim"``,
metrics.parquet, config.toml, models/) plus deployment.json (per-exchange timings, per-round
training seconds). `local` and `centralized` do not federate and are skipped with a logged note.

Ray: each virtual client asks for ``client_cpus`` CPUs, so Ray runs ``num_cpus // client_cpus``
actors at once. With ``num_cpus=None`` Ray decides (Flower passes no address to ``ray.init``): a
fresh local instance with every CPU, or the cluster named by ``RAY_ADDRESS`` in the environment
or started with ``ray start`` on this machine, which is how a multi-machine cluster is used (README,
"Deploy on Flower"). Every started process (SuperLink, simulation process, Ray) carries the marker
of :mod:`fedarena.flower.processes` and is stopped afterwards.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fedarena import config as cfg
from fedarena.core.device import resolve_device
from fedarena.core.types import FedarenaError
from fedarena.experiments.checks import check_before_start
from fedarena.experiments.deploy import Timeouts, run_config, run_local
from fedarena.experiments.rundir import check_out_dir
from fedarena.flower import common, messages
from fedarena.flower.common import node_clients
from fedarena.flower.processes import LocalFederation, write_app_dir

log = logging.getLogger(__name__)
ENGINE = "flower-sim"


@dataclass(frozen=True)
class Resources:
    """What Ray gives the simulation."""

    client_cpus: int = 1  # CPUs one virtual client's ClientApp asks for (it trains with 1 torch thread)
    num_cpus: int | None = None  # Ray's CPUs on this machine; None: Ray's default (all CPUs, or a cluster)
    client_gpus: float = 0.0  # the share of a GPU one virtual client asks for (Ray hides the GPUs from an actor
    # that asks for none); `simulate` sets it where run.device is cuda (`gpu_share`)


def ray_missing() -> str | None:
    """None when Ray is importable here, else why flower-sim cannot run."""
    if importlib.util.find_spec("ray") is None:
        return "Ray is not installed (pip install 'flwr[simulation]==1.42.0')"
    return None


def federation_config(num_nodes: int, resources: Resources) -> str:
    """`flwr run --federation-config`: N virtual SuperNodes on the Ray backend."""
    if resources.client_cpus < 1 or (resources.num_cpus is not None and resources.num_cpus < resources.client_cpus):
        raise FedarenaError(f"flower-sim resources: client_cpus={resources.client_cpus} must be >= 1 and <= "
                            f"num_cpus={resources.num_cpus}")
    parts = [f"num-supernodes={num_nodes}", 'backend="ray"', f"client-resources-num-cpus={resources.client_cpus}",
             f"client-resources-num-gpus={resources.client_gpus}"]
    if resources.num_cpus is not None:
        parts.append(f"init-args-num-cpus={resources.num_cpus}")
    return " ".join(parts)


def gpu_share(config: cfg.Config, resources: Resources) -> Resources:
    """`resources` with each virtual client's share of a GPU where `run.device` resolves to cuda here (refused, naming
    the problem, where this machine has none): one CPU's share (`client_cpus` / CPUs), so that the CPUs, not the
    GPU, bound how many clients run at once. Ray then shows each actor the GPU it was given as cuda:0, so the nodes
    are given `cuda`, not `cuda:N`. Untested on a GPU (docs/device.md)."""
    device = resolve_device(config.run.device)
    if device.type != "cuda" or resources.client_gpus > 0:
        return resources
    if device.index:
        raise FedarenaError(f"run.device={config.run.device}: on {ENGINE} Ray gives each virtual client its own GPU, "
                            "which it sees as cuda:0; use --device cuda")
    share = round(resources.client_cpus / (resources.num_cpus or os.cpu_count() or 1), 4)
    return dataclasses.replace(resources, client_gpus=max(share, 0.0001))


def simulate(config: cfg.Config, out: Path, *, resources: Resources = Resources(), timeouts: Timeouts = Timeouts(),
             workdir: Path | None = None, on_started: Callable[[LocalFederation], None] | None = None) -> dict[str, Any]:
    """Run `config` on Flower's simulation runtime, one virtual SuperNode per client; writes the run
    directory `out` and returns the summary.

    `workdir` (default: a temporary directory, removed afterwards unless the run failed) holds
    FLWR_HOME, the app and the logs; `on_started(federation)` is called once the SuperLink is up."""
    check_out_dir(out)
    if config.privacy.secagg:
        raise FedarenaError(f"--secagg is not supported on {ENGINE} yet (its virtual nodes keep no secrets between "
                            "the protocol's stages); use fedarena deploy --secagg, or the in-process engines")
    check_before_start(config)
    resources = gpu_share(config, resources)
    reason = ray_missing()
    if reason:
        raise FedarenaError(f"--engine {ENGINE} cannot run: {reason}")
    nodes = node_clients(config)
    config = cfg.with_clients_per_round(config, len(nodes))  # unset: min(10, training clients)
    for name in config.run.algorithms:
        if not common.federates(cfg.hyperparameters(config, name)):
            log.warning("%s is skipped on %s: it does not federate (nothing crosses the network)", name, ENGINE)
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="fedarena-flower-sim-"))
    app_dir = write_app_dir(root / "app", {**run_config(config, out, len(nodes), timeouts), messages.ENGINE: ENGINE})
    log.info("%s: %d virtual SuperNodes (%s)", ENGINE, len(nodes), federation_config(len(nodes), resources))
    return run_local(LocalFederation(root, [], simulation=True, start_timeout=timeouts.start), app_dir, config, out,
                     timeouts, keep=workdir is not None, on_started=on_started,
                     federation_config=federation_config(len(nodes), resources))


__all__ = ["ENGINE", "Resources", "federation_config", "ray_missing", "simulate"]
