"""`fedarena continue RUN --rounds N`: train a finished run on to round N without redoing its rounds.

A run of R rounds on an in-process engine (reference or vectorized) with ``forget.keep`` server or all
kept, per algorithm, its server state after every round (``forget/<algo>/server-rNNNN.safetensors``),
its clients' final states (``models/<algo>/client-*.safetensors``) and ``forget/<algo>/run-state.json``
(the per-round training clock and the privacy state: the accountant's spent rounds, each client's
participations for local DP, each client's DP-SGD steps, SecAgg's overhead). From those, rounds R+1..N run exactly as they would
have in a run of N rounds from the start: client sampling and every random stream are keyed by (seed,
round, client) (DESIGN.md), so the continued run's models and metrics equal a fresh N-round run's bit
for bit (tested) when R is a multiple of ``train.eval_every`` (otherwise the continued run also keeps
the evaluation the R-round run made at round R). The privacy budget continues: epsilon counts all N
rounds, and ``privacy.target_epsilon`` stops the continuation where the fresh run would have stopped.

The result is a new run directory (never RUN itself): its config is RUN's with ``train.rounds = N``,
its metrics, summary history, bytes and clock cover rounds 1..N (1..R read back from RUN), its summary
says where it was continued from (``continued_from``).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from fedarena import config as cfg
from fedarena.core.codec import Ledger
from fedarena.core.types import ClientState, FedarenaError, FederatedData
from fedarena.experiments.checks import check_privacy
from fedarena.experiments.compare import Prepared, Trained, prepare, train_algorithm
from fedarena.experiments.rundir import RUN_STATE, check_out_dir, read_json, recompute_engine, write_run_dir
from fedarena.experiments.summary import build_summary, target_for
from fedarena.forget.store import Stored, decode_state
from fedarena.sim.engine import AlgorithmRun, Checkpoint, Evaluation
from fedarena.sim.runtime import initial_model

METRIC_COLUMNS = ("algorithm", "round", "client", "sampled", "train_loss", "test_acc", "test_loss", "bytes_up",
                  "bytes_down")
VALIDATION_COLUMNS = ("val_acc", "num_val")  # absent from runs written before the validation split


@dataclass(frozen=True)
class Resume:
    """What one algorithm continues from (experiments.compare.train_algorithm's `resume`)."""

    checkpoint: Checkpoint
    privacy: dict[str, Any] | None
    sample_level: dict[str, Any] | None  # DP-SGD's per-client steps so far (privacy/dpsgd.SampleLevel.state)
    files: dict[str, bytes]  # the kept forget material so far (the new rounds' is added to it)
    norms: dict[int, dict[str, Any]]


def continue_run(run_dir: Path, rounds: int, out: Path,
                 on_round: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Continue the run in `run_dir` to `rounds` rounds; write the new run directory `out`; return its summary."""
    run_dir = Path(run_dir)
    old = _load_config(run_dir)
    engine = recompute_engine(run_dir, "continue")
    done = old.train.rounds
    if rounds <= done:
        raise FedarenaError(f"--rounds {rounds} does not continue {run_dir}: it already trained {done} rounds")
    config = dataclasses.replace(old, train=dataclasses.replace(old.train, rounds=rounds))
    check_out_dir(out)
    check_privacy(config)
    p = prepare(config, engine)
    summary = read_json(run_dir / "summary.json")
    try:
        present = pq.read_schema(run_dir / "metrics.parquet").names
        columns = [*METRIC_COLUMNS, *(c for c in VALIDATION_COLUMNS if c in present)]
        metrics = pq.read_table(run_dir / "metrics.parquet", columns=columns).to_pylist()
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise FedarenaError(f"{run_dir / 'metrics.parquet'} cannot be read: {exc}") from None
    runs = {}
    for name in config.run.algorithms:
        state = _run_state(run_dir / "forget" / name)
        before = _history(name, summary, metrics, p.data, state)
        resume = _resume(run_dir, name, config, p, state)
        algo, after = train_algorithm(config, p, name, on_round, resume=resume)
        runs[name] = algo, join_runs(before, after)
    trained = [Trained(config.run.seed, p.data, runs)]
    summary = build_summary(config, trained, target_for(config, trained), engine) | {
        "continued_from": {"run": str(run_dir), "rounds": done, "engine": summary.get("engine")},
    }
    write_run_dir(out, config, trained, summary)
    return summary


def _load_config(run_dir: Path) -> cfg.Config:
    if (run_dir / "audit.json").is_file():
        raise FedarenaError(f"{run_dir} is the output of `fedarena forget`; continue the training run it came from")
    for name in ("config.toml", "summary.json", "metrics.parquet"):
        if not (run_dir / name).is_file():
            raise FedarenaError(f"{run_dir} is not a fedarena run directory ({name} is missing)")
    config = cfg.build(str(run_dir / "config.toml"), {}, [])
    if config.run.seeds != 1:
        raise FedarenaError(f"{run_dir} holds {config.run.seeds} seeds; continue works on single-seed runs")
    if config.forget.keep == "none":
        raise FedarenaError(f"{run_dir} kept no checkpoints (forget.keep=none); rerun it with forget.keep=server")
    return config


def _run_state(root: Path) -> dict[str, Any]:
    """forget/<algo>/run-state.json, checked: the training clock of every round and the privacy state."""
    state = read_json(root / RUN_STATE) if (root / RUN_STATE).is_file() else None
    if not isinstance(state, dict) or state.get("format") != "fedarena-run-state/1":
        raise FedarenaError(f"{root / RUN_STATE} is missing or of another format: the run was written before "
                            "runs could be continued; rerun it")
    rnd, clock = state.get("round"), state.get("train_seconds")
    if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 1:
        raise FedarenaError(f"{root / RUN_STATE}: round must be an integer >= 1, got {rnd!r}")
    if not isinstance(clock, list) or len(clock) != rnd or not all(_seconds(x) for x in clock):
        raise FedarenaError(f"{root / RUN_STATE}: train_seconds must list one time >= 0 per round ({rnd})")
    if not _seconds(state.get("wall_seconds")):
        raise FedarenaError(f"{root / RUN_STATE}: wall_seconds must be a number >= 0")
    for key in ("privacy", "sample_level"):
        if key not in state or not (state[key] is None or isinstance(state[key], dict)):
            raise FedarenaError(f"{root / RUN_STATE}: {key} must be an object or null")
    return state


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _seconds(x: Any) -> bool:
    """A finite time >= 0 (summary.json is written without NaN or Infinity; an int may be beyond any float)."""
    return _number(x) and 0 <= x <= sys.float_info.max


def _resume(run_dir: Path, name: str, config: cfg.Config, p: Prepared, state: dict[str, Any]) -> Resume:
    root = run_dir / "forget" / name
    data = p.data
    stored = Stored.of(root, config.forget.keep, cfg.hyperparameters(config, name), initial_model(p.task, config.run.seed),
                       data.client_ids)
    done = state["round"]
    index = {cid: i for i, cid in enumerate(data.client_ids)}
    states: dict[int, ClientState] = {}
    for path in sorted((run_dir / "models" / name).glob("client-*.safetensors")):
        cid = path.name[len("client-"):-len(".safetensors")]
        if cid not in index:
            raise FedarenaError(f"{path}: no client '{cid}' in the run's data")
        states[index[cid]] = decode_state(path.read_bytes(), ClientState, str(path), stored.client_like)
    files = {p.name: p.read_bytes() for p in sorted(root.iterdir())
             if p.is_file() and p.name not in ("norms.json", RUN_STATE)}
    norms = stored.norms() if (root / "norms.json").is_file() else {}
    return Resume(Checkpoint(done, stored.server(done), states), state["privacy"], state["sample_level"], files, norms)


def _history(name: str, summary: Any, metrics: list[dict[str, Any]], data: FederatedData,
             state: dict[str, Any]) -> AlgorithmRun:
    """The finished rounds of `name` as the engine reported them, read back from the run directory."""
    try:
        return _read_history(name, summary, metrics, data, state)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FedarenaError(f"summary.json or metrics.parquet of '{name}' is malformed ({type(exc).__name__}: "
                            f"{exc})") from None


def _read_history(name: str, summary: Any, metrics: list[dict[str, Any]], data: FederatedData,
                  state: dict[str, Any]) -> AlgorithmRun:
    entry = next((r for r in summary["runs"] if r["algorithm"] == name), None)
    if entry is None:
        raise FedarenaError(f"summary.json has no run of '{name}'")
    index = {cid: i for i, cid in enumerate(data.client_ids)}
    rows = [r for r in metrics if r["algorithm"] == name]
    out = AlgorithmRun(train_seconds=[float(x) for x in state["train_seconds"]], ledger=Ledger(verify=False),
                       wall_seconds=float(state.get("wall_seconds", 0.0)))
    rounds = len(out.train_seconds)
    sampled: dict[int, list[int]] = {r: [] for r in range(1, rounds + 1)}
    evaluated: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        _check_row(r)
        if r["client"] not in index or not 1 <= r["round"] <= rounds:
            raise FedarenaError(f"metrics.parquet: row of client {r['client']!r}, round {r['round']} is not of this run")
        c, rnd = index[r["client"]], int(r["round"])
        if r["sampled"]:
            sampled[rnd].append(c)
            if r["train_loss"] is not None:
                out.train_loss[(rnd, c)] = float(r["train_loss"])
        if r["bytes_up"]:
            out.ledger.up[(rnd, c)] = r["bytes_up"]
        if r["bytes_down"]:
            out.ledger.down[(rnd, c)] = r["bytes_down"]
        if r["test_acc"] is not None:
            evaluated.setdefault(rnd, []).append(r)
    out.sampled = [sorted(sampled[r]) for r in range(1, rounds + 1)]
    global_acc = {h["round"]: h["global_acc"] for h in entry.get("history", [])}
    for rnd, acc in global_acc.items():
        if acc is not None and not _fraction(acc):
            raise FedarenaError(f"summary.json: the history of '{name}' at round {rnd!r} has global_acc {acc!r}; a "
                                "number in [0, 1] or null is expected")
    sizes = [data.test_offsets[c + 1] - data.test_offsets[c] for c in range(data.num_clients)]
    for rnd in sorted(evaluated):
        clients = [index[r["client"]] for r in evaluated[rnd]]
        out.evaluations.append(Evaluation(
            rnd, global_acc.get(rnd), clients, [float(r["test_acc"]) for r in evaluated[rnd]],
            [float(r["test_loss"]) for r in evaluated[rnd]], [sizes[c] for c in clients], None,
            [None if r.get("val_acc") is None else float(r["val_acc"]) for r in evaluated[rnd]],
            [int(r.get("num_val") or 0) for r in evaluated[rnd]],
        ))
    return out


def _check_row(r: dict[str, Any]) -> None:
    """One metrics.parquet row has the types metrics_table writes (FedarenaError naming the column otherwise)."""
    def bad(column: str, what: str) -> FedarenaError:
        return FedarenaError(f"metrics.parquet: row of client {r.get('client')!r}, round {r.get('round')!r}: column "
                             f"{column!r} must be {what}, got {r.get(column)!r}")

    if type(r["round"]) is not int:
        raise bad("round", "an integer")
    if not isinstance(r["client"], str):
        raise bad("client", "a client id")
    if not isinstance(r["sampled"], bool):
        raise bad("sampled", "true or false")
    for column in ("bytes_up", "bytes_down", "num_val"):
        value = r.get(column)
        if (value is not None or column != "num_val") and (type(value) is not int or value < 0):
            raise bad(column, "an integer >= 0")
    for column in ("train_loss", "test_loss"):
        if r[column] is not None and not _float(r[column]):
            raise bad(column, "a number or null")
    for column in ("test_acc", "val_acc"):
        if r.get(column) is not None and not _fraction(r[column]):
            raise bad(column, "a number in [0, 1] or null")
    if r["test_acc"] is not None and r["test_loss"] is None:
        raise bad("test_loss", "a number where test_acc is one")


def _float(x: Any) -> bool:
    """A number a float holds (NaN and Infinity included: a diverged model's loss)."""
    return _number(x) and (isinstance(x, float) or abs(x) <= sys.float_info.max)


def _fraction(x: Any) -> bool:
    return _number(x) and 0 <= x <= 1


def join_runs(before: AlgorithmRun, after: AlgorithmRun) -> AlgorithmRun:
    """One run of rounds 1..N from the finished rounds and the continuation (whose clock starts at 0)."""
    offset = before.train_seconds[-1] if before.train_seconds else 0.0
    ledger = Ledger(verify=after.ledger.verify)
    ledger.up, ledger.down = before.ledger.up | after.ledger.up, before.ledger.down | after.ledger.down
    return dataclasses.replace(
        after,
        evaluations=before.evaluations + after.evaluations,
        train_seconds=before.train_seconds + [offset + s for s in after.train_seconds],
        sampled=before.sampled + after.sampled,
        train_loss=before.train_loss | after.train_loss,
        ledger=ledger,
        wall_seconds=before.wall_seconds + after.wall_seconds,
    )

