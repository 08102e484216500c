"""A deployment that survives its ServerApp: after every round `fedarena deploy` keeps what a restarted ServerApp
needs, and ``deploy --resume OUT`` finishes the interrupted run with the numbers of an uninterrupted one.

While a deploy writing the run directory OUT runs, its ServerApp keeps ``OUT.resume/`` beside OUT (OUT itself is
still written only at the end, atomically, as every run directory is; ``OUT.resume/`` is removed once OUT is
complete):

    config.toml                  the interrupted deploy's config (a resume must give the same)
    journal.json                 the format and the deployment's id, which names the nodes' state folders
    seed-<s>/<algorithm>/
        progress.json            the commit point: the last finished round, the run so far (evaluations, training
                                 clock, sampled clients, train losses, bytes, the Flower runtime's exchanges), the
                                 privacy accountant's and DP-SGD's state, the names of the forget material;
                                 ``finished`` once this (algorithm, seed) is done
        server-rNNNN.safetensors the server state after that round (the engine's Checkpoint)
        clients-rNNNN.safetensors the client states the server holds (none on a deployment: they stay on the nodes)
        kept/<name>              the forget material of forget/<algorithm>/ (Recorder: server checkpoints, norms)
    local/                       ``deploy --local``'s working directory (FLWR_HOME, logs, the nodes' states)

Every file is written under a temporary name and renamed, progress.json last, so a crash at any moment leaves the
last committed round complete (the engine commits round t before it sends anything of round t+1). This module
names the layout and checks a resume before anything starts; :mod:`fedarena.experiments.deploy_journal` writes the
state and reads it back: finished (algorithm, seed)s are not rerun, the one in progress continues from its
checkpoint. The nodes answer with their state as of that checkpoint (a node keeps the state it replaced until it
is safe to drop: `flower.common.NodeState`). Nothing is pickled: safetensors and JSON only.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from fedarena import config as cfg
from fedarena.core.types import FedarenaError

SUFFIX = ".resume"
FORMAT = "fedarena-deploy-resume/1"
JOURNAL, CONFIG, PROGRESS, NORMS = "journal.json", "config.toml", "progress.json", "norms.json"
LOCAL = "local"  # deploy --local's default working directory, inside the state folder


def state_dir(out: Path) -> Path:
    """Where a deploy writing the run directory `out` keeps what a restart needs: ``<out>.resume`` beside it."""
    out = Path(out)
    return out.parent / f"{out.name}{SUFFIX}"


def check(out: Path, config: cfg.Config, resume: bool) -> None:
    """Refuse, before anything starts, a `resume` of `out` without a resumable state or with another config, and a
    fresh deploy of `out` where an interrupted one's state lies (the fresh one would overwrite it)."""
    root = state_dir(out)
    if not resume:
        if (root / JOURNAL).is_file():
            raise FedarenaError(f"{root} holds the state of an interrupted deploy of {out}: finish it with --resume "
                                f"{out}, or remove {root}")
        return
    if (Path(out) / "summary.json").is_file():
        raise FedarenaError(f"--resume {out}: the deploy finished ({out}/summary.json exists); nothing to resume")
    if not (root / JOURNAL).is_file() or not (root / CONFIG).is_file():
        raise FedarenaError(f"--resume {out}: no resumable deploy state ({root / JOURNAL} is missing: the deploy "
                            "never finished a round)")
    deployment(root)
    differs = _differences(cfg.to_tree(saved_config(out)), cfg.to_tree(config))
    if differs:
        raise FedarenaError(f"--resume {out}: the config differs from the interrupted deploy's ({root / CONFIG}): "
                            + "; ".join(differs[:3]) + (f" (+{len(differs) - 3} more)" if len(differs) > 3 else ""))


def saved_config(out: Path) -> cfg.Config:
    """The config of the interrupted deploy of `out`."""
    return cfg.build(str(state_dir(out) / CONFIG), {}, [])


def _differences(was: Any, now: Any, key: str = "") -> list[str]:
    if isinstance(was, dict) and isinstance(now, dict):
        return [d for k in sorted(set(was) | set(now), key=str)
                for d in _differences(was.get(k), now.get(k), f"{key}.{k}" if key else str(k))]
    return [] if was == now else [f"{key} is {now!r}, was {was!r}"]


def deployment(root: Path) -> str:
    """The id of the deploy whose state is in `root` (its nodes keep their states under it)."""
    journal = read_json(root / JOURNAL)
    found = journal.get("deployment") if isinstance(journal, dict) else None
    if not isinstance(journal, dict) or journal.get("format") != FORMAT or not isinstance(found, str) \
            or not re.fullmatch(r"[0-9a-f]{16}", found):
        raise FedarenaError(f"{root / JOURNAL} is not a deploy state of this fedarena ({FORMAT})")
    return found


def tidy(out: Path) -> None:
    """Remove the state folder of `out` where nothing is left in it (the ServerApp removed its state once `out` was
    complete; deploy --local removes its working directory after its processes stopped)."""
    root = state_dir(out)
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()


def atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FedarenaError(f"{path} cannot be read as JSON: {exc}") from None
