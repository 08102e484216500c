"""What the job's server and clients agree on, without NVFlare: names, message meta, params as arrays, state files.

A round of an exported job has the shape of NVFlare's FedAvg workflow: the server sends one FLModel of named
params (the algorithm's broadcast) to the round's sites (task ``train``), each site returns an FLModel of named
params (its upload's shared keys) with its sample count in the meta, and the server steps from them (the
algorithm's own `aggregate`). Evaluation is NVFlare's ``validate`` task: the broadcast (and the global model, where
it differs from the broadcast) down, the client's metrics up, no params. Params travel as numpy arrays, which
NVFlare serializes with ``np.save(allow_pickle=False)``; nothing is pickled.

Which algorithms fit is read from their declared capabilities (core/algorithm.py), never from their names:
:func:`refusal`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from fedarena import config as cfg
from fedarena.core.algorithm import MEAN_STEPS
from fedarena.core.params import split
from fedarena.core.types import ClientData, ClientState, FedarenaError, Params

# the job folder (experiments/export_nvflare.py writes it)
JOB_CONFIG = "fedarena.toml"  # the resolved fedarena config, in every app's config/ folder
SCRIPT = "fedarena_client.py"  # the Client API script, in every client app's custom/ folder
CONTROLLER = "fedarena.nvflare_job.controller.FedarenaController"
EXECUTOR = "nvflare.app_common.executors.client_api_executor.ClientAPIExecutor"
OUTPUT = "fedarena"  # beside the app folder in a site's (and the server's) job workspace: state, logs, metrics
# NVFlare's task names (nvflare.app_common.app_constant.AppConstants.TASK_TRAIN / TASK_VALIDATION)
TRAIN, EVALUATE = "train", "validate"
# FLModel meta keys
ALGORITHM, ROUND, CLIENT = "fedarena.algorithm", "fedarena.round", "fedarena.client"
NUM_SAMPLES, STATE_BYTES, GLOBAL = "fedarena.num_samples", "fedarena.state_bytes", "fedarena.global"
GLOBAL_PREFIX = "global::"  # the global model's keys in a validate task, where it is not the broadcast itself
# GLOBAL's values: no full global model (FedPer), the broadcast's params are it, or it travels under GLOBAL_PREFIX
NO_GLOBAL, GLOBAL_IS_BROADCAST, GLOBAL_SENT = "none", "broadcast", "sent"
SENT_LOG, RECEIVED_LOG, METRICS = "sent_keys.jsonl", "received_keys.jsonl", "metrics.json"

CLIENT_SCRIPT = '''"""fedarena's NVFlare Client API script, written by `fedarena export nvflare` (docs/nvflare.md).

It runs fedarena's client functions for the client index given by --client, with the config in ../config/.
"""
import argparse
from pathlib import Path

from fedarena.nvflare_job.client import main

parser = argparse.ArgumentParser()
parser.add_argument("--client", type=int, required=True, help="the fedarena client index this site serves")
parser.add_argument("--num-classes", type=int, required=True, help="the number of classes of the model")
args = parser.parse_args()
main(Path(__file__).resolve().parent.parent, args.client, args.num_classes)
'''


def refusal(algo: Any, model: Params) -> str | None:
    """Why `algo` does not fit the exported round (None where it does), from its declared capabilities
    (`communicates`, `server_step`, `uploads_personal`, `personal`) and `model`, the run's initial model."""
    if not algo.communicates:
        return ("it sends no message (communicates=False: pooled data or every key personal), so there is nothing "
                "for NVFlare to carry")
    if algo.server_step not in MEAN_STEPS:
        return (f"its server step is {algo.server_step!r}: it reads each client's upload beyond its shared params "
                "and sample count (control variates, cluster choices, personal weights), while an exported round "
                "carries NVFlare's FedAvg shape: named params down, named params and a sample count up, the server "
                "step from their weighted mean")
    if algo.uploads_personal:
        return "its personal keys must reach the server (uploads_personal), and no personal key crosses NVFlare here"
    if not split(model, algo.personal)[0]:
        return (f"every key of this model is personal (personal={list(algo.personal.patterns)}), so nothing is "
                "shared; use a model with shared layers")
    return None


def read_config(app_dir: Path) -> cfg.Config:
    """The job's fedarena config, `config/fedarena.toml` of an app folder (validated as any config file is)."""
    return cfg.apply(cfg.Config(), cfg.load_toml(app_dir / "config" / JOB_CONFIG))


def to_arrays(params: Params, prefix: str = "") -> dict[str, np.ndarray]:
    """Named params as numpy arrays (on the CPU, the same dtype and bits) for an FLModel."""
    return {prefix + k: v.detach().cpu().contiguous().numpy() for k, v in params.items()}


def expected_shapes(params: Params) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and numpy dtype of every key: what a message carrying these keys must match."""
    return {k: (tuple(v.shape), v.detach().cpu().numpy().dtype) for k, v in params.items()}


def from_arrays(arrays: Any, expected: Mapping[str, tuple[tuple[int, ...], np.dtype]], what: str,
                prefix: str = "") -> Params:
    """The params under `prefix` of a received FLModel, checked against `expected` (keys exactly, shapes, dtypes,
    finite values): a FedarenaError naming `what` and the problem otherwise. Keys without `prefix` are not read."""
    if not isinstance(arrays, Mapping):
        raise FedarenaError(f"{what}: params must be a dict of arrays, got {type(arrays).__name__}")
    got = {k[len(prefix):]: v for k, v in arrays.items() if isinstance(k, str) and k.startswith(prefix)}
    if set(got) != set(expected):
        missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        raise FedarenaError(f"{what}: params keys differ from the expected ones (missing {missing}, unexpected "
                            f"{unexpected})")
    out: Params = {}
    for k, (shape, dtype) in expected.items():
        a = got[k]
        if not isinstance(a, np.ndarray) or a.dtype != dtype or tuple(a.shape) != shape:
            desc = f"{a.dtype} {list(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__
            raise FedarenaError(f"{what}: params/{k} must be {dtype} {list(shape)}, got {desc}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise FedarenaError(f"{what}: params/{k} has NaN or infinite values")
        out[k] = torch.from_numpy(np.array(a, copy=True))
    return out


def meta_int(meta: Any, key: str, what: str, least: int = 0) -> int:
    """An integer entry of an FLModel's meta, at least `least`."""
    value = meta.get(key) if isinstance(meta, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise FedarenaError(f"{what}: meta {key!r} must be an integer >= {least}, got {value!r}")
    return int(value)


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
    """The saved state (safetensors only; nothing is unpickled), or None when the client has none yet."""
    if not path.exists():
        return None
    tensors = load_bytes(path.read_bytes())
    params = {k[len("params/"):]: v for k, v in sorted(tensors.items()) if k.startswith("params/")}
    extra = {k[len("extra/"):]: v for k, v in sorted(tensors.items()) if k.startswith("extra/")}
    return ClientState(params=params, extra=extra)


def load_client(config: cfg.Config, index: int) -> tuple[str, ClientData]:
    """Client `index`'s id and data, as `compare` builds them for the config's seed: an embedded dataset partitioned
    here (every site computes the same split and keeps its own client), or, for npz-dir data, only
    ``train/<stem>.npz`` and ``test/<stem>.npz`` of the index-th file stem in sorted order."""
    if config.data.name.startswith("npz-dir:"):
        from fedarena.data.npz import load_npz_client

        root = Path(config.data.name.removeprefix("npz-dir:")).expanduser()
        stems = sorted(p.stem for p in (root / "train").glob("*.npz"))
        if not 0 <= index < len(stems):
            raise FedarenaError(f"client index {index} is outside 0..{len(stems) - 1} of {root / 'train'}")
        d = config.data
        data, _ = load_npz_client(root, stems[index], min_train=d.min_train, min_test=d.min_test,
                                  val_fraction=d.val_fraction, seed=config.run.seed)
        return stems[index], data
    from fedarena.data import load_federated

    fd = load_federated(config.data, seed=config.run.seed, synthetic=config.synthetic, shakespeare=config.shakespeare)
    if not 0 <= index < fd.num_clients:
        raise FedarenaError(f"client index {index} is outside 0..{fd.num_clients - 1}")
    return fd.client_ids[index], fd.client(index)


def append_line(path: Path, record: Mapping[str, Any]) -> None:
    """One JSON line appended to `path` (the sent and received keys logs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def write_json(path: Path, value: Any) -> None:
    """`value` as JSON, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)
