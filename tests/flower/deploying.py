"""Run `deploy_local` for a test and make sure no Flower process outlives it (shared by the slow Flower tests)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from fedarena import config as cfg
from fedarena.experiments.deploy import Timeouts, deploy_local
from fedarena.flower.processes import kill_marked, marked_pids


def deploy_and_reap(tmp: Path, config: cfg.Config, timeouts: Timeouts, tls: bool = False,
                    during: Callable[[Any], None] | None = None, resume: bool = False) -> dict:
    """Deploy `config` on local SuperNodes writing `tmp/run` (nodes log and capture their wire traffic under
    `tmp/work/nodes/<i>/`); `during(federation)` runs in a thread once it started; `resume` finishes the interrupted
    deploy of `tmp/run`. Fails the test if a Flower process of the deployment is still alive after it returned (and
    kills it)."""
    tokens: list[str] = []

    def started(fed):
        tokens.append(fed.token)
        if during:
            threading.Thread(target=during, args=(fed,), daemon=True).start()

    def extra(i: int, node_dir: Path) -> dict:
        return {"wire-log": str(node_dir / "wire.jsonl"), "wire-capture": str(node_dir / "capture")}

    try:
        return deploy_local(config, tmp / "run", tls=tls, timeouts=timeouts, workdir=tmp / "work", node_extra=extra,
                            on_started=started, resume=resume)
    finally:
        for token in tokens:
            assert marked_pids(token) == [], "a Flower process outlived the deployment"
            kill_marked(token)


def comparable_metrics(run: dict) -> dict:
    """A summary.json run's numbers that a deployment must reproduce exactly (its timings left out)."""
    keep = ("global_acc", "personal_acc_mean", "personal_acc_std", "personal_acc_worst10", "personal_acc_per_client",
            "global_acc_per_client")
    hist = [{k: v for k, v in h.items() if k != "train_seconds"} for h in run["history"]]
    return {"final": {k: run["final"][k] for k in keep}, "bytes": run["bytes"], "history": hist,
            "storage": run["storage_bytes_per_client"], "rounds_to_target": run["rounds_to_target"]}
