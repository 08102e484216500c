"""What the ServerApp and the ClientApp agree on: the run config they both read, the task built from
(config, input shape, number of classes), and how a node keeps personal state. The message types and
record keys are in :mod:`fedarena.flower.messages`.

The resolved fedarena config travels as TOML text in the Flower run config (key ``messages.CONFIG``),
so both sides build the same algorithm objects with the same hyperparameters.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from fedarena import config as cfg
from fedarena.core.types import ClientState, FedarenaError
from fedarena.flower import messages as m


def config_text(config: cfg.Config) -> str:
    return tomli_w.dumps(cfg.to_tree(config))


def config_from_text(text: str) -> cfg.Config:
    """The fedarena config from its TOML text (validated as any config file is)."""
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FedarenaError(f"run config 'config' is not valid TOML: {exc}") from None
    return cfg.apply(cfg.Config(), tree)


def federates(algo: Any) -> bool:
    """False for algorithms with nothing to deploy, those that declare `communicates=False`
    (`centralized`: pooled data; `local`: every key personal, nothing sent)."""
    return bool(algo.communicates)


def state_path(state_dir: Path, run: int | str, seed: int, algorithm: str, client_id: str) -> Path:
    """Where a node keeps one client's state for one run (a deployment's id, or the Flower run's), seed and
    algorithm."""
    return state_dir / f"run-{run}" / f"seed-{seed}" / algorithm / f"client-{client_id}.safetensors"


def state_to_bytes(state: ClientState, **meta: str) -> bytes:
    """A client state as safetensors bytes (`params/<key>`, `extra/<key>`; `meta` in the header's metadata)."""
    tensors = {f"params/{k}": v.detach().cpu().contiguous() for k, v in state.params.items()}
    tensors |= {f"extra/{k}": v.detach().cpu().contiguous() for k, v in state.extra.items()}
    return save_bytes(tensors, metadata=meta or None)


def _write(path: Path, data: bytes) -> None:
    """Atomically: a crash leaves the file as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _metadata(data: bytes) -> dict[str, str]:
    """The metadata of safetensors bytes (the header is 8 bytes of length, then JSON)."""
    try:
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
    except (ValueError, AttributeError):
        raise FedarenaError("a kept client state is not a safetensors file") from None
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


@dataclass(frozen=True)
class NodeState:
    """One client's state on its node (for one deployment, seed and algorithm), stamped with the round it was trained
    in and the Flower run that trained it, beside the state it replaced (``previous/``).

    Why two: a ServerApp that dies is restarted from its checkpoint of round c (`from_round`) and retrains round
    c+1, which this node may already have trained for the ServerApp that died. A state of a round after c written by
    another Flower run is therefore stale: it is ignored and the one it replaced, of a round <= c, is used (and the
    stale one overwritten). The replaced one is dropped when a newer state of the current run, or one of a round
    <= c, replaces the latest: the server checkpoints round t before it sends any message of round t+1, so no
    restart can go back before the latest then. A state without a stamp (written before states had one) is used as
    it is."""

    path: Path
    run: str  # the current Flower run
    from_round: int = 0

    @property
    def previous(self) -> Path:
        return self.path.parent / "previous" / self.path.name

    def _stamp(self, path: Path) -> tuple[int | None, bool, bytes] | None:
        """(round or None, valid, bytes) of a kept state, or None where there is none."""
        if not path.exists():
            return None
        data = path.read_bytes()
        meta = _metadata(data)
        rnd = int(meta["round"]) if meta.get("round", "").isdigit() else None
        return rnd, rnd is None or meta.get("run") == self.run or rnd <= self.from_round, data

    def load(self, through: int) -> ClientState | None:
        """The newest valid state of a round <= `through`; None where the client has none (its initial state)."""
        found = [s for s in (self._stamp(self.path), self._stamp(self.previous)) if s is not None and s[1]]
        if not found:
            return None
        rnd, _, data = max(found, key=lambda s: -1 if s[0] is None else s[0])
        if rnd is not None and rnd > through:
            raise FedarenaError(f"{self.path.name}: this node's state is of round {rnd}, after round {through} of the "
                                f"server (which restarted from round {self.from_round}): it is not of this deployment")
        return state_from_bytes(data)

    def save(self, state: ClientState, rnd: int) -> None:
        """Keep `state`, trained in round `rnd`; the latest becomes the previous one if valid and of an earlier round."""
        latest = self._stamp(self.path)
        if latest is not None and latest[1] and (latest[0] is None or latest[0] < rnd):
            self.previous.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path, self.previous)
        _write(self.path, state_to_bytes(state, round=str(rnd), run=self.run))


def state_from_bytes(data: bytes) -> ClientState:
    """The inverse of `state_to_bytes` (safetensors only; nothing is unpickled)."""
    tensors = load_bytes(data)
    params = {k[len("params/"):]: v for k, v in sorted(tensors.items()) if k.startswith("params/")}
    extra = {k[len("extra/"):]: v for k, v in sorted(tensors.items()) if k.startswith("extra/")}
    return ClientState(params=params, extra=extra)


def node_clients(config: cfg.Config) -> list[dict[str, str | int]]:
    """One SuperNode config per client: `partition-id` for embedded data, `npz-dir` + `client` for npz-dir
    (the stems are listed, no file is read)."""
    name = config.data.name
    if name.startswith("npz-dir:"):
        root = Path(name.removeprefix("npz-dir:")).expanduser()
        stems = sorted(p.stem for p in (root / "train").glob("*.npz"))
        if not stems:
            raise FedarenaError(f"npz-dir {root}: 'train/' contains no .npz files")
        return [{m.NPZ_DIR: str(root), m.NODE_CLIENT: s} for s in stems]
    return [{m.PARTITION_ID: i} for i in range(config.data.num_clients)]
