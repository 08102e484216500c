"""The one orchestration: train every configured (algorithm, seed) on a platform and write the run directory.

A :class:`Platform` says where the clients are: in this process (:class:`InProcess`: the reference or
vectorized engine over data loaded here), or on Flower SuperNodes (`experiments.flower_server.OnFlower`, the
ServerApp of `fedarena deploy` and ``--engine flower-sim``). :func:`run_experiment` is the only seed x
algorithm loop; `compare`, `deploy`, flower-sim, `sweep`, `continue` and `forget`'s retrain all train through
:func:`train_algorithm`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Protocol

from fedarena import config as cfg
from fedarena.core.device import resolve_device
from fedarena.core.types import FedarenaError, FederatedData
from fedarena.data import load_federated
from fedarena.experiments import attack
from fedarena.experiments.checks import check_no_attack, check_privacy
from fedarena.experiments.rundir import check_out_dir, write_run_dir
from fedarena.experiments.summary import build_summary, target_for
from fedarena.forget import probe
from fedarena.forget.store import Recorder
from fedarena.privacy import round as private_round
from fedarena.privacy.checks import shared_numel
from fedarena.privacy.dpsgd import SampleLevel
from fedarena.sim.engine import AlgorithmRun, Checkpoint, Evaluation, Hooks, RunSpec, run_algorithm, select_new_clients
from fedarena.sim.local import local_runtime
from fedarena.sim.runtime import RuntimeFactory

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Trained:
    """Every algorithm of a comparison trained on one seed's clients."""

    seed: int
    data: FederatedData
    runs: dict[str, tuple[Any, AlgorithmRun]]
    malicious: list[int] = dataclasses.field(default_factory=list)  # the seed's malicious clients (indices)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A seed's clients (with the backdoor probe planted, if any), model task, new clients, and the runtime
    their work runs on."""

    data: FederatedData
    task: Any
    new_clients: list[int]
    runtime: RuntimeFactory
    malicious: list[int] = dataclasses.field(default_factory=list)  # clients running `[attack]` (experiments/attack.py)


class Platform(Protocol):
    """Where a comparison's clients are."""

    engine: str  # summary.json's `engine`

    def algorithms(self, config: cfg.Config) -> list[str]:
        """The algorithms of `config` that run here (the others are skipped, with a logged reason)."""
        ...

    def prepare(self, config: cfg.Config) -> Prepared:
        """The clients of `config`'s seed."""
        ...

    def privacy(self, settings: Any) -> Any:
        """The privacy settings as this platform applies them (a deployment draws its noise from the OS)."""
        ...

    def finish(self, config: cfg.Config, trained: list[Trained], summary: dict[str, Any]) -> dict[str, bytes]:
        """Add this platform's facts to `summary`; files to write beside it."""
        ...


class InProcess:
    """The clients in this process, on the reference or vectorized engine."""

    def __init__(self, engine: str) -> None:
        self.engine = engine

    def algorithms(self, config: cfg.Config) -> list[str]:
        return list(config.run.algorithms)

    def prepare(self, config: cfg.Config) -> Prepared:
        return prepare(config, self.engine)

    def privacy(self, settings: Any) -> Any:
        return settings

    def finish(self, config: cfg.Config, trained: list[Trained], summary: dict[str, Any]) -> dict[str, bytes]:
        return {}


def prepare(config: cfg.Config, engine: str = "reference") -> Prepared:
    """A seed's clients in this process, trained on `run.device` (resolved here: a device this machine lacks is
    refused before the data is loaded); `fedarena forget` and `continue` rebuild a run's clients with it."""
    device = resolve_device(config.run.device)
    data = load_federated(config.data, seed=config.run.seed, synthetic=config.synthetic, shakespeare=config.shakespeare)
    f = config.forget
    if f.probe:
        if f.probe not in data.client_ids:
            raise FedarenaError(f"forget.probe: unknown client '{f.probe}'; clients are {', '.join(data.client_ids[:5])}...")
        data = probe.plant(data, data.client_ids.index(f.probe), f.probe_fraction, f.probe_target, config.run.seed)
    task = cfg.make_config_task(config, data.input_shape, data.num_classes)
    new_clients = select_new_clients(config.run.seed, data.num_clients, config.data.new_clients)
    data, malicious = attack.choose(config, data, new_clients)
    return Prepared(data, task, new_clients, local_runtime(engine, device), malicious)


def privacy_for(config: cfg.Config, algo: Any, p: Prepared) -> Any:
    """The run's privacy/round.Privacy for `algo` (None when off or not applicable)."""
    training = p.data.num_clients - len(p.new_clients)
    max_weight = max(p.data.train_offsets[i + 1] - p.data.train_offsets[i] for i in range(p.data.num_clients))
    return private_round.Privacy.build(config.privacy, algo, training, config.train.clients_per_round,
                                       config.run.seed, max_weight, shared_numel(p.task.module, algo))


def train_algorithm(config: cfg.Config, p: Prepared, name: str, on_round: Callable[[str, int], None] | None = None,
                    *, resume: Any = None, checkpoint: Checkpoint | None = None, exclude: tuple[int, ...] = (),
                    record: Recorder | None = None, on_evaluation: Callable[[Evaluation], None] | None = None,
                    on_checkpoint: Callable[[int, AlgorithmRun], None] | None = None) -> tuple[Any, AlgorithmRun]:
    """One algorithm's run on the prepared clients.

    `resume` (continuation.Resume) continues a finished run: its checkpoint, privacy state and kept forget
    material; the returned run covers the new rounds only. `checkpoint` restarts from a checkpoint with a fresh
    privacy state and `exclude`d clients taking no part (`fedarena forget`'s retrain); `record` replaces the
    recorder of the run's forget material; `on_evaluation` sees every evaluation (tuning's pruner); `on_checkpoint`
    sees the run after every round, its privacy state and forget material included (a deployment's resume state)."""
    config = cfg.with_clients_per_round(config, p.data.num_clients)  # a no-op where run_experiment resolved it
    algo = cfg.hyperparameters(config, name)
    t = config.train
    log.info("training %s", name)
    privacy = privacy_for(config, algo, p)
    dpsgd = SampleLevel.build(config.privacy)
    # under secure aggregation the server never sees single updates: keep no update norms
    recorder = record or Recorder(config.forget.keep, p.data.client_ids, updates_visible=not config.privacy.secagg)
    if resume is not None:
        checkpoint = resume.checkpoint
        if privacy is not None:
            privacy.restore(resume.privacy, checkpoint.round)
        recorder.files, recorder.norms = dict(resume.files), dict(resume.norms)
        if dpsgd is not None:
            if resume.sample_level is None:
                raise FedarenaError("the run's state has no DP-SGD step counts; its epsilon would restart from zero")
            dpsgd.restore(resume.sample_level)
    spec = RunSpec(rounds=t.rounds, clients_per_round=t.clients_per_round, eval_every=t.eval_every,
                   seed=config.run.seed, new_clients=tuple(p.new_clients), exclude=tuple(exclude),
                   malicious=tuple(p.malicious))

    def checkpointed(rnd: int, run: AlgorithmRun) -> None:
        run.privacy, run.sample_dp, run.kept = privacy, dpsgd, recorder.all_files()
        on_checkpoint(rnd, run)  # type: ignore[misc]

    hooks = Hooks(on_start=recorder.start, record=recorder,
                  on_round=(lambda r, n=name: on_round(n, r)) if on_round else None, on_evaluation=on_evaluation,
                  on_checkpoint=checkpointed if on_checkpoint else None)
    task = cfg.algorithm_task(config, name, p.task)  # the algorithm's own lr, epochs and batch size where set
    run = run_algorithm(algo, task, p.data, spec, p.runtime, privacy=privacy, dpsgd=dpsgd, resume=checkpoint,
                        hooks=hooks, poison=attack.poison(config, p.malicious), combine=attack.combine(config, algo))
    run.kept = recorder.all_files()
    run.attack_success = attack.success(config, algo, task, p.data, run) if p.malicious else None
    return algo, run


def run_experiment(config: cfg.Config, platform: Platform, out: Path,
                   on_round: Callable[[str, int], None] | None = None, tuning: Any = None,
                   train: Callable[..., tuple[Any, AlgorithmRun]] = train_algorithm) -> dict[str, Any]:
    """Every (algorithm, seed) of `config` on `platform`; writes the run directory `out`, returns the summary.
    `on_round(algorithm, n)` counts rounds across seeds. `tuning` (experiments/tune.Tuning): how `config`'s
    hyperparameters were chosen, recorded in the summary and tuning.parquet. `train(config, prepared, name,
    on_round)` trains one (algorithm, seed): `train_algorithm`, or a deployment's resume journal
    (experiments/deploy_resume.Journal.train)."""
    check_out_dir(out)
    names = platform.algorithms(config)
    if not names:
        raise FedarenaError(f"none of {list(config.run.algorithms)} runs on {platform.engine}")
    config = dataclasses.replace(config, privacy=platform.privacy(config.privacy))
    check_privacy(config, names)
    ran = dataclasses.replace(config, run=dataclasses.replace(config.run, algorithms=tuple(names)))
    trained = []
    for i in range(config.run.seeds):
        done = i * config.train.rounds
        counted = (lambda n, r, d=done: on_round(n, d + r)) if on_round else None
        p = platform.prepare(cfg.with_seed(ran, config.run.seed + i))
        ran = cfg.with_clients_per_round(ran, p.data.num_clients)  # unset: min(10, training clients)
        seeded = cfg.with_seed(ran, config.run.seed + i)
        trained.append(Trained(seeded.run.seed, p.data, {n: train(seeded, p, n, counted) for n in names},
                               p.malicious))
    summary = build_summary(ran, trained, target_for(config, trained), platform.engine, tuning)
    files = platform.finish(ran, trained, summary) | (tuning.files() if tuning is not None else {})
    write_run_dir(out, ran, trained, summary, files)
    return summary


def run_compare(config: cfg.Config, out: Path, on_round: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """`fedarena compare`: the comparison described by `config` for each of its `run.seeds` seeds, in this
    process or (``run.engine = "flower-sim"``) on Flower's simulation runtime, whose ServerApp runs
    :func:`run_experiment` on the virtual SuperNodes and writes `out`. A `run.device` this machine lacks is refused
    first, before anything is written."""
    check_out_dir(out)
    resolve_device(config.run.device)
    if config.run.engine == "flower-sim":
        from fedarena.experiments.flower_sim import simulate

        check_no_attack(config, "on flower-sim")
        return simulate(config, out)
    platform = InProcess(config.run.engine)
    if not config.tune.trials:
        return run_experiment(config, platform, out, on_round)
    from fedarena.experiments.tune import tune

    check_privacy(config, list(config.run.algorithms))  # refused before any trial, not after the search
    chosen, tuning = tune(config, platform.prepare(config), train_algorithm)
    return run_experiment(chosen, platform, out, on_round, tuning)
