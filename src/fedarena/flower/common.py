"""What the ServerApp and the ClientApp agree on: the run config they both read, the task built from
(config, input shape, number of classes), and how a node keeps personal state. The message types and
record keys are in :mod:`fedarena.flower.messages`.

The resolved fedarena config travels as TOML text in the Flower run config (key ``messages.CONFIG``),
so both sides build the same algorithm objects with the same hyperparameters.
"""

from __future__ import annotations

import os
import tomllib
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


def state_path(state_dir: Path, run_id: int, seed: int, algorithm: str, client_id: str) -> Path:
    """Where a node keeps one client's state for one run, seed and algorithm."""
    return state_dir / f"run-{run_id}" / f"seed-{seed}" / algorithm / f"client-{client_id}.safetensors"


def state_to_bytes(state: ClientState) -> bytes:
    """A client state as safetensors bytes (`params/<key>`, `extra/<key>`)."""
    tensors = {f"params/{k}": v.detach().cpu().contiguous() for k, v in state.params.items()}
    tensors |= {f"extra/{k}": v.detach().cpu().contiguous() for k, v in state.extra.items()}
    return save_bytes(tensors)


def save_state(path: Path, state: ClientState) -> None:
    """Write the state atomically (a crash leaves the previous file), as safetensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_bytes(state_to_bytes(state))
    os.replace(tmp, path)


def load_state(path: Path) -> ClientState | None:
    """The saved state, or None when this client has none yet."""
    if not path.exists():
        return None
    return state_from_bytes(path.read_bytes())


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
