"""`fedarena compare` as a library call: run every algorithm on the same seeded clients and write
the run directory of DESIGN.md (config.toml, metrics.parquet, summary.json, models/).

The directory is built under a hidden temporary name next to its destination and renamed into place
only when complete, so a failed run leaves no summary.json behind.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.torch import save_file

import fedarena
from fedarena import config as cfg
from fedarena.core.types import SGD, FedarenaError, FederatedData
from fedarena.data import load_federated
from fedarena.data.heterogeneity import summarize
from fedarena.forget import probe
from fedarena.forget.store import Recorder
from fedarena.privacy import round as private_round
from fedarena.privacy.dpsgd import SampleLevel, privacy_block
from fedarena.report.measures import aggregate
from fedarena.sim.engine import AlgorithmRun, run_algorithm, select_new_clients, storage_bytes
from fedarena.tasks import make_task

log = logging.getLogger(__name__)

TARGET_RULE = (
    "run.target if set; otherwise 0.9 x the best final personal_acc_mean (mean over seeds) among the compared "
    "algorithms that federate (centralized excluded), floored to 0.001. rounds_to_target is the first "
    "evaluated round whose personal_acc_mean >= target; seconds_to_target is the training time (evaluation "
    "excluded) up to the end of that round."
)


def default_out_dir(config: cfg.Config, root: Path = Path("runs")) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    data = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(config.data.name.removeprefix("npz-dir:")).name or "data")
    desc = f"{data}-{cfg.resolved_partition(config)}-{len(config.run.algorithms)}algos"
    return root / f"{stamp}-{desc}"


def check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FedarenaError(f"output directory {out} exists and is not empty")


@dataclasses.dataclass(frozen=True)
class Trained:
    """Every algorithm of a comparison trained on one seed's clients."""

    seed: int
    data: FederatedData
    runs: dict[str, tuple[Any, AlgorithmRun]]


def run_compare(
    config: cfg.Config,
    out: Path,
    on_round: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    """Run the comparison described by `config` for each of its `run.seeds` seeds, write the run
    directory `out`, return the summary. `on_round(algorithm, n)` counts rounds across seeds."""
    check_out_dir(out)
    if config.run.engine == "flower-sim":  # Flower's simulation runtime: its ServerApp writes `out`
        from fedarena.flower.simulation import simulate

        return simulate(config, out)
    trained = []
    for i in range(config.run.seeds):
        seeded = dataclasses.replace(config, run=dataclasses.replace(config.run, seed=config.run.seed + i))
        done = i * config.train.rounds
        trained.append(_train(seeded, (lambda n, r, d=done: on_round(n, d + r)) if on_round else None))
    target = config.run.target if config.run.target is not None else auto_target(trained)
    summary = build_summary(config, trained, target)
    _write_run_dir(out, config, trained, summary)
    return summary


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A comparison's clients (with the backdoor probe planted, if any), model task and new clients."""

    data: FederatedData
    task: Any
    new_clients: list[int]


def prepare(config: cfg.Config) -> Prepared:
    """Everything a run needs before training; `fedarena forget` rebuilds a run's clients with it."""
    data = load_federated(config)
    f = config.forget
    if f.probe:
        if f.probe not in data.client_ids:
            raise FedarenaError(f"forget.probe: unknown client '{f.probe}'; clients are {', '.join(data.client_ids[:5])}...")
        data = probe.plant(data, data.client_ids.index(f.probe), f.probe_fraction, f.probe_target, config.run.seed)
    t = config.train
    task = make_task(
        config.model.name, data.input_shape, data.num_classes,
        SGD(epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr), config.model.hidden, config.model.norm,
    )
    new_clients = select_new_clients(config.run.seed, data.num_clients, config.data.new_clients)
    training = data.num_clients - len(new_clients)
    if t.clients_per_round > training:
        raise FedarenaError(
            f"train.clients_per_round ({t.clients_per_round}) exceeds the {training} training clients of "
            f"{data.name}" + (f" ({len(new_clients)} held out as new clients)" if new_clients else "")
        )
    return Prepared(data, task, new_clients)


def privacy_for(config: cfg.Config, algo: Any, p: Prepared) -> Any:
    """The run's privacy/round.Privacy for `algo` (None when off or not applicable)."""
    training = p.data.num_clients - len(p.new_clients)
    max_weight = max(p.data.train_offsets[i + 1] - p.data.train_offsets[i] for i in range(p.data.num_clients))
    return private_round.Privacy.build(config.privacy, algo, training, config.train.clients_per_round,
                                       config.run.seed, max_weight, private_round.shared_numel(p.task.module, algo))


def _train(config: cfg.Config, on_round: Callable[[str, int], None] | None) -> Trained:
    p = prepare(config)
    check_privacy(config)
    runs = {name: train_algorithm(config, p, name, on_round) for name in config.run.algorithms}
    return Trained(config.run.seed, p.data, runs)


def check_privacy(config: cfg.Config) -> None:
    """Refuse impossible privacy settings before any training."""
    for name in config.run.algorithms:
        private_round.check(config.privacy, cfg.hyperparameters(config, name), config.model)


def train_algorithm(config: cfg.Config, p: Prepared, name: str, on_round: Callable[[str, int], None] | None,
                    resume: Any = None) -> tuple[Any, AlgorithmRun]:
    """One algorithm's run on the prepared clients. `resume` (continuation.Resume) continues a finished run:
    its checkpoint, privacy state and kept forget material; the returned run covers the new rounds only."""
    algo = cfg.hyperparameters(config, name)
    t = config.train
    log.info("training %s", name)
    privacy = privacy_for(config, algo, p)
    if resume is not None and privacy is not None:
        privacy.restore(resume.privacy, resume.checkpoint.round)
    # under secure aggregation the server never sees single updates: keep no update norms
    recorder = Recorder(config.forget.keep, p.data.client_ids, updates_visible=not config.privacy.secagg)
    if resume is not None:
        recorder.files, recorder.norms = dict(resume.files), dict(resume.norms)
    dpsgd = SampleLevel.build(config.privacy)
    if resume is not None and dpsgd is not None:
        if resume.sample_level is None:
            raise FedarenaError("the run's state has no DP-SGD step counts; its epsilon would restart from zero")
        dpsgd.restore(resume.sample_level)
    run = run_algorithm(
        algo, p.task, p.data, rounds=t.rounds, clients_per_round=t.clients_per_round,
        eval_every=t.eval_every, seed=config.run.seed, engine=config.run.engine, new_clients=p.new_clients,
        on_round=(lambda r, n=name: on_round(n, r)) if on_round else None, record=recorder,
        on_start=recorder.start, privacy=privacy, resume=None if resume is None else resume.checkpoint, dpsgd=dpsgd,
    )
    run.kept = recorder.all_files()
    return algo, run


RUN_STATE = "run-state.json"  # beside the forget material: what `fedarena continue` needs besides it


def run_state(run: AlgorithmRun, rounds: int) -> bytes:
    """The per-round training clock and the privacy state after `rounds` rounds, as JSON."""
    return json.dumps({
        "format": "fedarena-run-state/1", "round": rounds, "train_seconds": run.train_seconds,
        "wall_seconds": run.wall_seconds, "privacy": run.privacy.state(rounds) if run.privacy else None,
        "sample_level": run.sample_dp.state() if run.sample_dp else None,
    }, indent=1).encode()


def auto_target(trained: list[Trained]) -> float:
    """0.9 x the best mean (over seeds) final personal_acc_mean of the federating algorithms."""
    first = trained[0].runs
    names = [n for n, (a, _) in first.items() if a.federated] or list(first)
    finals = [sum(t.runs[n][1].evaluations[-1].personal_acc_mean for t in trained) / len(trained) for n in names]
    return math.floor(0.9 * max(finals) * 1000) / 1000


def _hyperparameters(algo: Any) -> dict[str, Any]:
    return {f.name: getattr(algo, f.name) for f in dataclasses.fields(algo)}


def _summarize_run(name: str, algo: Any, run: AlgorithmRun, data: FederatedData, target: float) -> dict[str, Any]:
    final = run.evaluations[-1]
    ids = [data.client_ids[c] for c in final.clients]
    rounds = len(run.train_seconds)
    reached = next((e for e in run.evaluations if e.personal_acc_mean >= target), None)
    up = sum(run.ledger.up.values())
    down = sum(run.ledger.down.values())
    cumulative = run.ledger.cumulative(rounds)
    history = []
    for e in run.evaluations:
        history.append({
            "round": e.round, "global_acc": e.global_acc, "personal_acc_mean": e.personal_acc_mean,
            "personal_acc_std": e.personal_acc_std, "personal_acc_worst10": e.personal_acc_worst10,
            "bytes_cumulative": cumulative[e.round - 1], "train_seconds": run.train_seconds[e.round - 1],
            "epsilon": _finite(run.privacy.epsilon(e.round)) if run.privacy else None,
            "sample_epsilon_max": run.sample_dp.epsilon_max(e.round) if run.sample_dp else None,
        })
    return {
        "algorithm": name,
        "family": algo.family,
        "federated": algo.federated,
        "paper": algo.paper,
        "hyperparameters": _hyperparameters(algo),
        "personal_keys": list(algo.personal.patterns),
        "rounds": rounds,
        "final": {
            "round": final.round,
            "global_acc": final.global_acc,
            "personal_acc_mean": final.personal_acc_mean,
            "personal_acc_std": final.personal_acc_std,
            "personal_acc_worst10": final.personal_acc_worst10,
            "personal_acc_per_client": dict(zip(ids, final.per_client_acc)),
            "global_acc_per_client": (
                None if final.global_per_client_acc is None else dict(zip(ids, final.global_per_client_acc))
            ),
        },
        "bytes": {"up_total": up, "down_total": down, "per_round_mean": (up + down) / rounds},
        "target_acc": target,
        "rounds_to_target": reached.round if reached else None,
        "seconds_to_target": run.train_seconds[reached.round - 1] if reached else None,
        "wall_seconds": run.wall_seconds,
        "storage_bytes_per_client": storage_bytes(run.states),
        "forget_kept_bytes": sum(len(b) for b in run.kept.values()),
        "history": history,
        "privacy": privacy_block(run.privacy.summary(rounds) if run.privacy else None, run.sample_dp, rounds),
        "new_clients": run.new_clients,
        "membership": run.membership,
    }


def _finite(x: float | None) -> float | None:
    return None if x is None or math.isinf(x) else x


def build_summary(config: cfg.Config, trained: list[Trained], target: float) -> dict[str, Any]:
    """summary.json: `dataset` describes the first seed's clients; `runs` holds one entry per
    (algorithm, seed); `aggregate` (several seeds only, else null) the mean and std over seeds."""
    data = trained[0].data
    summary = {
        "fedarena_version": fedarena.__version__,
        "schema_version": 1,
        "config": cfg.to_tree(config),
        "engine": config.run.engine,
        "dataset": {
            "name": data.name,
            "num_clients": data.num_clients,
            "client_ids": list(data.client_ids),
            "partition": data.partition,
            "num_classes": data.num_classes,
            "input_shape": list(data.input_shape),
            "train_samples": int(data.y_train.shape[0]),
            "test_samples": int(data.y_test.shape[0]),
            "heterogeneity": summarize(data),
        },
        "model": {"name": config.model.name, "hidden": config.model.hidden, "norm": config.model.norm},
        "target_acc": target,
        "target_rule": TARGET_RULE,
        "seeds": [t.seed for t in trained],
        "runs": [_summarize_run(n, *t.runs[n], t.data, target) | {"seed": t.seed}
                 for n in config.run.algorithms for t in trained],
        "aggregate": None,
    }
    if len(trained) > 1:
        summary["aggregate"] = aggregate(summary) | {"heterogeneity": [
            {"seed": t.seed} | {k: summarize(t.data)[k] for k in ("effective_classes_mean", "js_divergence_mean")}
            for t in trained]}
    return summary


def _metrics_table(trained: list[Trained]) -> pa.Table:
    cols: dict[str, list] = {k: [] for k in (
        "algorithm", "seed", "round", "client", "sampled", "train_loss", "test_acc", "test_loss", "bytes_up",
        "bytes_down", "epsilon")}
    for t in trained:
        for name, (algo, run) in t.runs.items():
            evals = {e.round: e for e in run.evaluations}
            clients = sorted({c for e in run.evaluations for c in e.clients})  # every evaluated training client
            for rnd, chosen in enumerate(run.sampled, start=1):
                picked = set(chosen)
                e = evals.get(rnd)
                index = {c: i for i, c in enumerate(e.clients)} if e else {}
                eps = _finite(run.privacy.epsilon(rnd)) if run.privacy else None  # user-level, through this round
                cols["epsilon"].extend([eps] * len(clients))
                for c in clients:
                    i = index.get(c)
                    cols["algorithm"].append(name)
                    cols["seed"].append(t.seed)
                    cols["round"].append(rnd)
                    cols["client"].append(t.data.client_ids[c])
                    cols["sampled"].append(c in picked)
                    cols["train_loss"].append(run.train_loss.get((rnd, c)) if c in picked else None)
                    cols["test_acc"].append(e.per_client_acc[i] if i is not None else None)
                    cols["test_loss"].append(e.per_client_loss[i] if i is not None else None)
                    cols["bytes_up"].append(run.ledger.up.get((rnd, c), 0))
                    cols["bytes_down"].append(run.ledger.down.get((rnd, c), 0))
    return pa.table({k: pa.array(v, type=pa.float64()) if k == "epsilon" else v for k, v in cols.items()})


def save_models(mdir: Path, algo: Any, server: Any, states: dict[int, Any], client_ids: tuple[str, ...]) -> None:
    """models/<algorithm>/: the global model (where one exists) and each client's state, as safetensors."""
    mdir.mkdir(parents=True)
    g = algo.global_model(server)
    if g is not None:
        save_file({k: v.contiguous() for k, v in g.items()}, mdir / "global.safetensors")
    for c, state in states.items():
        tensors = {f"params/{k}": v for k, v in state.params.items()}
        tensors |= {f"extra/{k}": v for k, v in state.extra.items()}
        if tensors and algo.federated:
            save_file({k: v.contiguous() for k, v in tensors.items()}, mdir / f"client-{client_ids[c]}.safetensors")


def _write_run_dir(out: Path, config: cfg.Config, trained: list[Trained], summary: dict) -> None:
    check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        cfg.dump_toml(config, tmp / "config.toml", fedarena.__version__)
        pq.write_table(_metrics_table(trained), tmp / "metrics.parquet")
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
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        if out.exists():
            out.rmdir()  # checked empty above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
