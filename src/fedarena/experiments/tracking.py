"""Experiment tracking (`--track mlflow[:URI]`, `--track tensorboard[:DIR]`): a finished run directory, logged to
MLflow or TensorBoard.

Tracking reads a complete run directory (summary.json and metrics.parquet; summary.json, config.toml, the report and
models/ as artifacts) after the command that wrote it has returned: training code knows nothing of tracking, and
`compare`, `sweep` and `deploy` are tracked by the same code (docs/tracking.md).

- MLflow: one parent run per comparison (the resolved config as params, tags naming the run directory) with one
  child run per (algorithm, seed): the config, the algorithm and seed, its hyperparameters and local training as
  params, the scalars below at every evaluated round with step = round, and its models/ as artifacts. A sweep adds
  one run above its cells' comparisons. Runs are logged through `MlflowClient` (no active run, no global tracking
  URI is set).
- TensorBoard: the same scalars, one log directory per (algorithm, seed).

mlflow and tensorboard are the optional extra `track` and are imported only when `--track` asks for them (importing
mlflow 3.17 takes about 1.5 s on 2 cores).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

from fedarena.core.types import FedarenaError

log = logging.getLogger(__name__)

KINDS = ("mlflow", "tensorboard")
FORMS = "mlflow, mlflow:URI, tensorboard or tensorboard:DIR"
INSTALL = "pip install 'fedarena[track]'"
EXPERIMENT = "fedarena"
# summary.json's runs[].history fields logged at every evaluated round (where not null), then the two byte counters
# summed from metrics.parquet (both directions, every client, rounds 1..r)
HISTORY_SCALARS = ("personal_acc_mean", "personal_acc_std", "personal_acc_worst10", "global_acc",
                   "val_personal_acc_mean", "val_personal_acc_worst10", "epsilon", "sample_epsilon_max")
BYTES_SCALARS = ("bytes_up_cumulative", "bytes_down_cumulative")
RUN_ARTIFACTS = ("summary.json", "config.toml", "report.html", "report.md")
SWEEP_RESULTS = ("sweep.json", "privacy_sweep.json")
SWEEP_ARTIFACTS = ("sweep.html", "sweep.md", "privacy_sweep.html", "privacy_sweep.md")
# mlflow.utils.validation: MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH, MAX_METRICS_PER_BATCH
PARAM_MAX, PARAMS_PER_BATCH, METRICS_PER_BATCH = 6000, 100, 1000
# MLflow 3.17 (the pinned release) refuses its filesystem store ("maintenance mode") unless this variable is true
FILE_STORE_OPT_IN = "MLFLOW_ALLOW_FILE_STORE"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # two characters at least: not a Windows drive letter


class TrackingError(RuntimeError):
    """Logging a finished run failed (a server went away, a disk filled up): the run directory is complete."""


@dataclasses.dataclass(frozen=True)
class Track:
    """One `--track` value: `kind` mlflow or tensorboard; `where` everything after the first colon (None: default)."""

    kind: str
    where: str | None = None

    @staticmethod
    def parse(value: str) -> Track:
        kind, colon, where = value.partition(":")
        if kind not in KINDS:
            raise FedarenaError(f"--track: expected {FORMS}, got {value!r}")
        if colon and not where.strip():
            raise FedarenaError(f"--track {value}: nothing after the colon; expected {FORMS}")
        if kind == "mlflow" and colon and not _SCHEME.match(where):
            raise FedarenaError(f"--track {value}: an MLflow tracking URI starts with its scheme (sqlite:///PATH, "
                                f"file:PATH, http://HOST:PORT, ...), got {where!r}")
        return Track(kind, where if colon else None)


@dataclasses.dataclass(frozen=True)
class Destination:
    """A resolved `--track`: the MLflow URI, or the TensorBoard directory. `inside` is true for TensorBoard's
    default directory inside the run directory; elsewhere each run's logs go under the run directory's name."""

    kind: str
    target: str
    inside: bool = False
    experiment: str = EXPERIMENT


@dataclasses.dataclass(frozen=True)
class Child:
    """One (algorithm, seed) of a comparison: an MLflow child run, a TensorBoard log directory."""

    algorithm: str
    seed: int
    params: dict[str, str]
    tags: dict[str, str]
    steps: list[tuple[int, dict[str, float]]]  # (round, scalar name -> value) per evaluated round
    models: Path | None

    @property
    def name(self) -> str:
        return f"{self.algorithm} seed {self.seed}"


@dataclasses.dataclass(frozen=True)
class Record:
    """A finished run directory (a comparison: `children` per (algorithm, seed)) or sweep directory (`cells`)."""

    path: Path
    params: dict[str, str]
    tags: dict[str, str]
    artifacts: list[Path]
    children: list[Child] = dataclasses.field(default_factory=list)
    cells: list[Record] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name


def prepare(values: list[str], out_dir: Path, experiment: str = EXPERIMENT) -> list[Destination]:
    """Parse the `--track` values for the run (or sweep) directory `out_dir` and check each one before any work
    starts: the extra is installed, the MLflow store opens (the default sqlite database is created) and holds
    `experiment`. Defaults: MLflow `sqlite:///<out_dir's parent>/mlflow.db`, TensorBoard `<out_dir>/tensorboard`."""
    out_dir = Path(out_dir).resolve()
    dests = []
    for track in (Track.parse(v) for v in values):
        _require(track.kind)
        if track.kind == "mlflow":
            uri = track.where or f"sqlite:///{out_dir.parent / 'mlflow.db'}"
            try:
                with _file_store_opt_in(uri):
                    _experiment_id(_client(uri), uri, experiment)
            except FedarenaError:
                raise
            except Exception as exc:  # MLflow's own: an unknown scheme, an unreachable server, a locked database
                raise FedarenaError(f"--track mlflow: MLflow cannot use the tracking URI {uri!r}: {_first_line(exc)}")
            dests.append(Destination("mlflow", uri, experiment=experiment))
        else:
            where = Path(track.where).resolve() if track.where else out_dir / "tensorboard"
            if where.exists() and not where.is_dir():
                raise FedarenaError(f"--track tensorboard:{track.where}: {where} is not a directory")
            dests.append(Destination("tensorboard", str(where), inside=track.where is None))
    return dests


def track_run(dests: list[Destination], run_dir: Path) -> list[str]:
    """Log the finished run directory `run_dir` (compare, deploy) to each destination; one line per destination."""
    return _track(dests, read_run(Path(run_dir)), sweep=False) if dests else []


def track_sweep(dests: list[Destination], sweep_dir: Path) -> list[str]:
    """Log a finished sweep directory (`sweep.json` or `privacy_sweep.json` and its cells) to each destination."""
    return _track(dests, read_sweep(Path(sweep_dir)), sweep=True) if dests else []


def _track(dests: list[Destination], record: Record, sweep: bool) -> list[str]:
    lines = []
    for dest in dests:
        try:
            if dest.kind == "mlflow":
                lines.append(_mlflow(dest, record, sweep))
            else:
                lines.append(_tensorboard(dest, record, sweep))
        except FedarenaError:
            raise
        except Exception as exc:
            raise TrackingError(f"logging {record.path} to {dest.kind} ({dest.target}) failed: {_first_line(exc)}; "
                                f"the {'sweep' if sweep else 'run'} directory is complete") from exc
    return lines


# --- reading run directories -----------------------------------------------------------------------------------

def read_run(run_dir: Path) -> Record:
    """A finished comparison's run directory as what tracking logs (summary.json, metrics.parquet, models/)."""
    path = run_dir / "summary.json"
    if not path.is_file():
        raise FedarenaError(f"{run_dir}: no summary.json (not a finished run directory)")
    summary = json.loads(path.read_text())
    config = flatten(summary.get("config") or {})
    seeds = summary.get("seeds") or [summary.get("config", {}).get("run", {}).get("seed", 0)]
    cumulative = bytes_cumulative(run_dir / "metrics.parquet")
    children = []
    for run in summary["runs"]:
        name, seed = run["algorithm"], int(run.get("seed", seeds[0]))
        own = flatten({"hyperparameters": run.get("hyperparameters") or {},
                       "local_training": run.get("local_training") or {}})
        params = {**config, "algorithm": name, "seed": str(seed), "family": str(run.get("family")), **own}
        rounds, totals = cumulative.get((name, seed), ([], []))
        steps = []
        for entry in run.get("history") or []:
            r = int(entry["round"])
            values = {k: float(entry[k]) for k in HISTORY_SCALARS if entry.get(k) is not None}
            i = bisect.bisect_right(rounds, r)
            up, down = totals[i - 1] if i else (0, 0)
            steps.append((r, {**values, "bytes_up_cumulative": float(up), "bytes_down_cumulative": float(down)}))
        engine = run.get("engine")
        tags = {"fedarena.algorithm": name, "fedarena.seed": str(seed), "fedarena.family": str(run.get("family")),
                "fedarena.engine": str(engine.get("name") if isinstance(engine, dict) else engine)}
        models = run_dir / "models" / (name if len(seeds) == 1 else f"seed-{seed}/{name}")
        children.append(Child(name, seed, params, tags, steps, models if models.is_dir() else None))
    tuning = summary.get("tuning")
    tags = {"fedarena.kind": "comparison", "fedarena.run_dir": str(run_dir.resolve()),
            "fedarena.version": str(summary.get("fedarena_version")), "fedarena.engine": str(summary.get("engine")),
            "fedarena.tuning": str(tuning.get("label") if isinstance(tuning, dict) else tuning)}
    artifacts = [run_dir / f for f in RUN_ARTIFACTS if (run_dir / f).is_file()]
    return Record(run_dir, config, tags, artifacts, children=children)


def read_sweep(sweep_dir: Path) -> Record:
    """A finished sweep directory: its result file's plain fields as params, each cell a comparison."""
    found = [sweep_dir / f for f in SWEEP_RESULTS if (sweep_dir / f).is_file()]
    if not found:
        raise FedarenaError(f"{sweep_dir}: no {' or '.join(SWEEP_RESULTS)} (not a finished sweep directory)")
    result = json.loads(found[0].read_text())
    cells = [read_run(sweep_dir / cell["run_dir"]) for cell in result["cells"]]
    params = flatten({k: v for k, v in result.items() if _plain(v)})
    params["cells"] = ",".join(cell.name for cell in cells)
    tags = {"fedarena.kind": found[0].stem.replace("_", "-"), "fedarena.run_dir": str(sweep_dir.resolve())}
    artifacts = [*found, *(sweep_dir / f for f in SWEEP_ARTIFACTS if (sweep_dir / f).is_file())]
    return Record(sweep_dir, params, tags, artifacts, cells=cells)


def bytes_cumulative(path: Path) -> dict[tuple[str, int], tuple[list[int], list[tuple[int, int]]]]:
    """Per (algorithm, seed): the rounds of metrics.parquet in order and, per round, the bytes up and down summed
    over every client and every round through it."""
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    table = pq.read_table(path, columns=["algorithm", "seed", "round", "bytes_up", "bytes_down"])
    sums = table.group_by(["algorithm", "seed", "round"]).aggregate([("bytes_up", "sum"), ("bytes_down", "sum")])
    per: dict[tuple[str, int], list[tuple[int, int, int]]] = {}
    for row in sums.to_pylist():
        per.setdefault((row["algorithm"], int(row["seed"])), []).append(
            (int(row["round"]), int(row["bytes_up_sum"] or 0), int(row["bytes_down_sum"] or 0)))
    out = {}
    for key, rows in per.items():
        rows.sort()
        up = down = 0
        totals = []
        for _, u, d in rows:
            up, down = up + u, down + d
            totals.append((up, down))
        out[key] = ([r for r, _, _ in rows], totals)
    return out


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts as dotted keys; strings as they are, every other value as JSON (`["fedavg", "fedper"]`, `0.1`,
    `true`, `null`)."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return flat


def _plain(value: Any) -> bool:
    scalar = (str, int, float, bool, type(None))
    return isinstance(value, scalar) or (isinstance(value, list) and all(isinstance(v, scalar) for v in value))


# --- MLflow ---------------------------------------------------------------------------------------------------

def _require(kind: str) -> None:
    try:
        if kind == "mlflow":
            import mlflow.tracking  # noqa: F401
        else:
            import tensorboard  # type: ignore[import-untyped]  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise FedarenaError(f"--track {kind} needs the optional extra `track`: {INSTALL} ({_first_line(exc)})")


@contextlib.contextmanager
def _file_store_opt_in(uri: str) -> Iterator[None]:
    """MLflow's opt-in to its filesystem store, for a `file:` URI only and only while this block runs; the variable's
    previous state is restored after (MLflow reads it when it opens the store, and keeps the open store)."""
    if not uri.startswith("file:"):
        yield
        return
    previous = os.environ.get(FILE_STORE_OPT_IN)
    os.environ[FILE_STORE_OPT_IN] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(FILE_STORE_OPT_IN, None)
        else:
            os.environ[FILE_STORE_OPT_IN] = previous


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _artifact_location(uri: str) -> str | None:
    """Where a new experiment of a sqlite store keeps its artifacts: `mlartifacts/` beside the database (MLflow's
    own default, `./mlruns`, depends on the working directory); None (MLflow's choice) for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?")[0]
    if not path or path == ":memory:":
        return None
    return (Path(path).resolve().parent / "mlartifacts").as_uri()


def _experiment_id(client: Any, uri: str, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return str(client.create_experiment(name, artifact_location=_artifact_location(uri)))
    if experiment.lifecycle_stage != "active":
        raise FedarenaError(f"--track mlflow: the MLflow experiment {name!r} at {uri} is deleted; restore it "
                            f"(mlflow experiments restore) or remove it for good")
    return str(experiment.experiment_id)


def _mlflow(dest: Destination, record: Record, sweep: bool) -> str:
    with _file_store_opt_in(dest.target):
        client = _client(dest.target)
        experiment = _experiment_id(client, dest.target, dest.experiment)
        opened: list[str] = []
        try:
            top = _open(client, experiment, record.name, record.params, record.tags, None, record.artifacts, opened)
            for cell in record.cells if sweep else [record]:
                parent = top if not sweep else _open(client, experiment, cell.name, cell.params, cell.tags, top,
                                                     cell.artifacts, opened)
                for child in cell.children:
                    run_id = _open(client, experiment, child.name, child.params, child.tags, parent, [], opened)
                    _log_steps(client, run_id, child.steps)
                    if child.models is not None:
                        client.log_artifacts(run_id, str(child.models), "models")
                    _close(client, opened, run_id, "FINISHED")
                if sweep:
                    _close(client, opened, parent, "FINISHED")
            _close(client, opened, top, "FINISHED")
        except BaseException:
            for run_id in reversed(opened):
                with contextlib.suppress(Exception):
                    client.set_terminated(run_id, "FAILED")
            raise
    count = sum(len(c.children) for c in record.cells) if sweep else len(record.children)
    what = f"sweep run {top} ({len(record.cells)} comparisons, {count} runs)" if sweep else f"run {top} ({count} child runs)"
    return f"mlflow: {what} in experiment {dest.experiment!r} at {dest.target}"


def _open(client: Any, experiment: str, name: str, params: dict[str, str], tags: dict[str, str], parent: str | None,
          artifacts: list[Path], opened: list[str]) -> str:
    from mlflow.entities import Param

    run = client.create_run(experiment, run_name=name, tags={**tags, **({"mlflow.parentRunId": parent} if parent else {})})
    run_id = str(run.info.run_id)
    opened.append(run_id)
    items = [Param(k, v if len(v) <= PARAM_MAX else v[:PARAM_MAX - 14] + "...(truncated)") for k, v in params.items()]
    for i in range(0, len(items), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i:i + PARAMS_PER_BATCH])
    for path in artifacts:
        client.log_artifact(run_id, str(path))
    return run_id


def _log_steps(client: Any, run_id: str, steps: list[tuple[int, dict[str, float]]]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, step) for step, values in steps for key, value in values.items()]
    for i in range(0, len(metrics), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + METRICS_PER_BATCH])


def _close(client: Any, opened: list[str], run_id: str, status: str) -> None:
    client.set_terminated(run_id, status)
    opened.remove(run_id)


# --- TensorBoard ----------------------------------------------------------------------------------------------

def _tensorboard(dest: Destination, record: Record, sweep: bool) -> str:
    """One log directory per (algorithm, seed): `DIR/<algorithm>/seed-<s>` for the default DIR inside the run
    directory, `DIR/<run directory's name>/<algorithm>/seed-<s>` for a DIR given; a sweep's cells one level below
    (`<cell>/`). A log directory already holding events (a resumed sweep's reused cell) is left as it is."""
    from torch.utils.tensorboard import SummaryWriter

    base = Path(dest.target) if dest.inside else Path(dest.target) / record.name
    for cell in record.cells if sweep else [record]:
        cell_base = base / cell.name if sweep else base
        for child in cell.children:
            logdir = cell_base / child.algorithm / f"seed-{child.seed}"
            if logdir.is_dir() and any(logdir.glob("events.out.tfevents.*")):
                log.warning("%s already holds TensorBoard events; left as it is", logdir)
                continue
            writer = SummaryWriter(log_dir=str(logdir))
            try:
                for step, values in child.steps:
                    for key, value in values.items():
                        writer.add_scalar(key, value, global_step=step)
            finally:
                writer.close()
    return f"tensorboard: {base} (tensorboard --logdir {base})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
