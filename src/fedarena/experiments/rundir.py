"""The run directory (docs/summary.md): `config.toml`, `metrics.parquet`, `summary.json`, `models/` and
`forget/`, built under a hidden temporary name next to its destination and renamed into place only when
complete, so a failed run leaves no summary.json behind."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.torch import save_file

import fedarena
from fedarena import config as cfg
from fedarena.core.types import ClientState, FedarenaError, ServerState

if TYPE_CHECKING:
    from fedarena.experiments.compare import Trained
    from fedarena.sim.engine import AlgorithmRun

RUN_STATE = "run-state.json"  # beside the forget material: what `fedarena continue` needs besides it


def default_out_dir(config: cfg.Config, root: Path = Path("runs")) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    data = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(config.data.name.removeprefix("npz-dir:")).name or "data")
    desc = f"{data}-{cfg.resolved_partition(config)}-{len(config.run.algorithms)}algos"
    return root / f"{stamp}-{desc}"


def check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FedarenaError(f"output directory {out} exists and is not empty")


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """A temporary directory beside `out` (which must be absent or empty), renamed to `out` when the block
    ends normally and removed when it raises."""
    check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            out.rmdir()  # checked empty above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def finite(x: float | None) -> float | None:
    return None if x is None or math.isinf(x) else x


def run_state(run: AlgorithmRun, rounds: int) -> bytes:
    """The per-round training clock and the privacy state after `rounds` rounds, as JSON."""
    return json.dumps({
        "format": "fedarena-run-state/1", "round": rounds, "train_seconds": run.train_seconds,
        "wall_seconds": run.wall_seconds, "privacy": run.privacy.state(rounds) if run.privacy else None,
        "sample_level": run.sample_dp.state() if run.sample_dp else None,
    }, indent=1).encode()


def metrics_table(trained: list[Trained]) -> pa.Table:
    """metrics.parquet: one row per (algorithm, seed, round, training client)."""
    cols: dict[str, list[Any]] = {k: [] for k in (
        "algorithm", "seed", "round", "client", "sampled", "train_loss", "test_acc", "test_loss", "val_acc",
        "num_val", "bytes_up", "bytes_down", "epsilon")}
    for t in trained:
        for name, (_, run) in t.runs.items():
            evals = {e.round: e for e in run.evaluations}
            clients = sorted({c for e in run.evaluations for c in e.clients})  # every evaluated training client
            for rnd, chosen in enumerate(run.sampled, start=1):
                picked = set(chosen)
                e = evals.get(rnd)
                index = {c: i for i, c in enumerate(e.clients)} if e else {}
                eps = finite(run.privacy.epsilon(rnd)) if run.privacy else None  # user-level, through this round
                cols["epsilon"].extend([eps] * len(clients))
                for c in clients:
                    i = index.get(c)
                    cols["algorithm"].append(name)
                    cols["seed"].append(t.seed)
                    cols["round"].append(rnd)
                    cols["client"].append(t.data.client_ids[c])
                    cols["sampled"].append(c in picked)
                    cols["train_loss"].append(run.train_loss.get((rnd, c)) if c in picked else None)
                    cols["test_acc"].append(e.per_client_acc[i] if e is not None and i is not None else None)
                    cols["test_loss"].append(e.per_client_loss[i] if e is not None and i is not None else None)
                    vals, nval = (e.per_client_val_acc, e.val_sizes) if e is not None and i is not None else (None, None)
                    cols["val_acc"].append(vals[i] if vals is not None and i is not None else None)
                    cols["num_val"].append(nval[i] if nval is not None and i is not None else None)
                    cols["bytes_up"].append(run.ledger.up.get((rnd, c), 0))
                    cols["bytes_down"].append(run.ledger.down.get((rnd, c), 0))
    types = {"epsilon": pa.float64(), "val_acc": pa.float64(), "num_val": pa.int64()}  # columns that may be all null
    return pa.table({k: pa.array(v, type=types[k]) if k in types else v for k, v in cols.items()})


def save_models(mdir: Path, algo: Any, server: ServerState | None, states: dict[int, ClientState],
                client_ids: tuple[str, ...]) -> None:
    """models/<algorithm>/: the global model (where one exists) and each client's state, as safetensors."""
    mdir.mkdir(parents=True)
    g = algo.global_model(server)
    if g is not None:
        save_file({k: v.cpu().contiguous() for k, v in g.items()}, mdir / "global.safetensors")
    for c, state in states.items():
        tensors = {f"params/{k}": v for k, v in state.params.items()}
        tensors |= {f"extra/{k}": v for k, v in state.extra.items()}
        if tensors and algo.federated:
            save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, mdir / f"client-{client_ids[c]}.safetensors")


def write_run_dir(out: Path, config: cfg.Config, trained: list[Trained], summary: dict[str, Any],
                  extra_files: dict[str, bytes] | None = None) -> None:
    """The whole run directory, atomically; `extra_files` (name -> bytes) are written beside summary.json
    (a deployment's deployment.json)."""
    with atomic_dir(out) as tmp:
        cfg.dump_toml(config, tmp / "config.toml", fedarena.__version__)
        pq.write_table(metrics_table(trained), tmp / "metrics.parquet")
        for t in trained:
            for name, (algo, run) in t.runs.items():
                mdir = tmp / "models" / (name if len(trained) == 1 else f"seed-{t.seed}/{name}")
                save_models(mdir, algo, run.server, run.states, t.data.client_ids)
            for name, (algo, run) in t.runs.items():
                kdir = tmp / "forget" / (name if len(trained) == 1 else f"seed-{t.seed}/{name}")
                kept = run.kept | ({RUN_STATE: run_state(run, len(run.train_seconds))} if run.kept else {})
                for fname, payload in kept.items():
                    kdir.mkdir(parents=True, exist_ok=True)
                    (kdir / fname).write_bytes(payload)
        for fname, payload in (extra_files or {}).items():
            (tmp / fname).write_bytes(payload)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        raise FedarenaError(f"{path} cannot be read as JSON: {type(exc).__name__}: {exc}") from None


IN_PROCESS = ("reference", "vectorized")


def recompute_engine(run_dir: Path, command: str) -> str:
    """The in-process engine on which `command` (continue, forget) recomputes the run in `run_dir`: its own
    engine, or the reference engine for a flower-sim run (whose ServerApp kept the server checkpoints and
    fetched its virtual nodes' final states into the run directory). A deployment's client states and data
    stay on its SuperNodes: refused."""
    summary = read_json(run_dir / "summary.json")
    if not isinstance(summary, dict):
        raise FedarenaError(f"{run_dir / 'summary.json'} is malformed: a JSON object is expected")
    engine = summary.get("engine")
    if engine in IN_PROCESS:
        return str(engine)
    if engine == "flower-sim":
        return "reference"
    raise FedarenaError(f"{run_dir} ran on {engine!r}: {command} needs the clients' data and states, which stay on "
                        "the deployment's SuperNodes; it works on runs of --engine reference, vectorized or flower-sim")
