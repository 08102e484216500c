"""Commands on one run: compare (and its report), continue, forget, report, recommend, list, bench."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedarena import config as cfg
from fedarena.cli.app import _fail, _guard, app, err, out
from fedarena.cli.options import (
    Aggregator,
    Algorithms,
    Alpha,
    Attack,
    BatchSize,
    Clients,
    ClientsPerRound,
    ConfigFile,
    Data,
    Device,
    DpClip,
    DpDelta,
    DpMode,
    DpNoise,
    DpSgdClip,
    DpSgdNoise,
    LocalEpochs,
    Lr,
    Malicious,
    Model,
    NewClients,
    Partition,
    PresetName,
    Rounds,
    RunOut,
    SecAgg,
    SecAggNeighbours,
    SecAggThreshold,
    Seed,
    Seeds,
    Sets,
    ShardsPerClient,
    Target,
    TargetEpsilon,
    Threads,
    Track,
    Tune,
    TuneObjective,
    _given,
    _privacy_flags,
    set_threads,
    tune_trials,
)
from fedarena.cli.tables import _bench_table, _forget_table, _scale_table, _table


@app.command()
def compare(
    config: ConfigFile = None,
    preset: PresetName = None,
    data: Data = None,
    partition: Partition = None,
    alpha: Alpha = None,
    shards_per_client: ShardsPerClient = None,
    clients: Clients = None,
    new_clients: NewClients = None,
    clients_per_round: ClientsPerRound = None,
    rounds: Rounds = None,
    local_epochs: LocalEpochs = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    model: Model = None,
    algorithms: Algorithms = None,
    seed: Seed = None,
    engine: Optional[str] = typer.Option(None, "--engine", help="vectorized (default) | reference | flower-sim (Flower + Ray)"),
    device: Device = None,
    seeds: Seeds = None,
    tune: Tune = None,
    tune_objective: TuneObjective = None,
    target: Target = None,
    out_dir: RunOut = None,
    set_: Sets = None,
    report: bool = typer.Option(False, "--report", help="Also write report.html and report.md into the run directory."),
    track: Track = None,
    threads: Threads = None,
    dp_clip: DpClip = None,
    dp_noise: DpNoise = None,
    dp_delta: DpDelta = None,
    dp_mode: DpMode = None,
    dp_sgd_noise: DpSgdNoise = None,
    dp_sgd_clip: DpSgdClip = None,
    target_epsilon: TargetEpsilon = None,
    secagg: SecAgg = False,
    secagg_threshold: SecAggThreshold = None,
    secagg_neighbours: SecAggNeighbours = None,
    attack: Attack = None,
    malicious: Malicious = None,
    aggregator: Aggregator = None,
    forget_probe: Optional[str] = typer.Option(
        None, "--forget-probe",
        help="Client ID: plant a backdoor in its data, then forget it (retrain, federaser) into RUN/forget-ID/."),
    quick: bool = typer.Option(False, "--quick", help="A short default study (under 30 s; bare compare only)."),
) -> None:
    """Run global FL, personalized FL and baselines on identical seeded clients.

    Bare (no data, algorithm, client or round flag; --out, --report, --track, --threads and --seed allowed), it runs
    the default study: the comparison plus a heterogeneity sweep, a DP budget, an attack and a forget probe, so that
    every row of the report is measured (about 2-3 minutes on 2 cores; --quick: under 30 s)."""
    flags: dict[str, dict[str, Any]] = {
        "data": _given(name=data, partition=partition, alpha=alpha, shards_per_client=shards_per_client,
                       num_clients=clients, new_clients=new_clients),
        "train": _given(clients_per_round=clients_per_round, rounds=rounds, local_epochs=local_epochs,
                        batch_size=batch_size, lr=lr),
        "model": _given(name=model),
        "run": _given(algorithms=algorithms, seed=seed, engine=engine, target=target, seeds=seeds, device=device),
        "forget": _given(probe=forget_probe),
        "tune": _given(trials=_guard(tune_trials, tune), objective=tune_objective),
        "privacy": _privacy_flags(dp_clip, dp_noise, dp_delta, dp_mode, dp_sgd_noise, dp_sgd_clip, target_epsilon,
                                  secagg, secagg_threshold, secagg_neighbours),
        "attack": _given(kind=attack, malicious=malicious),
        "robust": _given(aggregator=aggregator),
    }
    named = sorted(f"{section}.{key}" for section, keys in flags.items() for key in keys if (section, key) != ("run", "seed"))
    if not (named or config or preset or set_):
        return _study(quick, seed or 0, out_dir, report, track or [], threads)
    if quick:
        _fail(2, "--quick shortens the default study, which only a bare `fedarena compare` runs (with --out, --report, "
                 "--track, --threads or --seed at most); with data, algorithm, client or round flags, compare runs "
                 "exactly what they name: set --rounds for a shorter run")
    if preset and config:
        _fail(2, "give --preset or --config, not both (a preset is a config file: copy it to change it)")
    if preset:
        from fedarena.experiments.presets import preset_file

        config = _guard(preset_file, preset)
    set_threads(threads)
    conf = _guard(cfg.build, str(config) if config else None, flags, set_ or [])
    from fedarena.experiments import tracking
    from fedarena.experiments.compare import run_compare
    from fedarena.experiments.rundir import check_out_dir, default_out_dir

    target_dir = out_dir or default_out_dir(conf)
    _guard(check_out_dir, target_dir)
    trackers = _guard(tracking.prepare, track or [], target_dir)
    rounds_total = conf.train.rounds * conf.run.seeds
    with Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        bars = {name: progress.add_task(name, total=rounds_total) for name in conf.run.algorithms}
        summary = _guard(run_compare, conf, target_dir, lambda name, r: progress.update(bars[name], completed=r))
    out.print(_table(summary))
    out.print(f"run directory: {target_dir}", highlight=False, soft_wrap=True)
    if forget_probe:
        from fedarena.experiments.forget.run import PROBE_METHODS
        from fedarena.experiments.forget.run import forget as forget_clients

        result = _guard(forget_clients, target_dir, [forget_probe], list(PROBE_METHODS),
                        target_dir / f"forget-{forget_probe}")
        out.print(_forget_table(result))
    _finish(target_dir, report, trackers)


def _study(quick: bool, seed: int, out_dir: Optional[Path], report: bool, track: list[str], threads: Optional[int]) -> None:
    """A bare `fedarena compare`: the default study (experiments/study.py), every claim of the report measured."""
    import datetime as dt

    from fedarena.experiments import study, tracking
    from fedarena.experiments.rundir import check_out_dir
    from fedarena.report.render import load_summary

    plan = study.QUICK if quick else study.FULL
    set_threads(threads)
    target_dir = out_dir or Path("runs") / f"{dt.datetime.now():%Y%m%d-%H%M%S}-{plan.name}-study"
    _guard(check_out_dir, target_dir)
    trackers = _guard(tracking.prepare, track, target_dir)
    err.print(f"default study ({plan.name}): {len(study.ALGORITHMS)} algorithms x {plan.seeds} seed(s), then a "
              f"heterogeneity sweep, a DP budget, an attack and a forget probe on best pFL and best global; any data, "
              "algorithm, client or round flag runs only what it names", highlight=False, soft_wrap=True)
    with Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        bar = progress.add_task(study.STEPS[0], total=len(study.STEPS))
        result = _guard(study.run_study, plan, seed, target_dir,
                        lambda name, i, n: progress.update(bar, completed=i, description=name),
                        lambda name, r: progress.update(bar, description=f"comparison: {name} {r}"))
    out.print(_table(_guard(load_summary, target_dir)))
    out.print(f"best pFL {result['best_pfl']}, best global {result['best_global']}; sub-studies on both:",
              highlight=False, soft_wrap=True)
    for step in result["steps"]:
        out.print(f"  {step['name']:<10} {step['seconds']:6.1f} s  {target_dir / step['dir']}", highlight=False,
                  soft_wrap=True)
    out.print(f"study directory: {target_dir} ({result['seconds']:.0f} s)", highlight=False, soft_wrap=True)
    _finish(target_dir, report, trackers)


def _finish(target_dir: Path, report: bool, trackers: Any) -> None:
    if report:
        from fedarena.report.render import write_report

        paths = _guard(write_report, target_dir)
        out.print(f"report: {paths.html}", highlight=False, soft_wrap=True)
    from fedarena.experiments import tracking

    for line in _guard(tracking.track_run, trackers, target_dir):
        out.print(line, highlight=False, soft_wrap=True)


@app.command()
def forget(
    run_dir: Path = typer.Argument(..., help="A run directory written by fedarena compare."),
    client: list[str] = typer.Option(..., "--client", help="Client ID as named in summary.json; repeatable."),
    method: str = typer.Option("retrain", "--method", help="Comma-separated: retrain (exact) | federaser."),
    algorithms: Optional[str] = typer.Option(None, "--algorithms", help="Only these algorithms of the run."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="New directory (default RUN_DIR-forget-ID)."),
    verify: bool = typer.Option(True, "--verify/--no-verify",
                                help="Also retrain exactly, to measure the method against (costs a retrain)."),
) -> None:
    """Remove clients from every algorithm of a run; write the models without them, audit.json and forget.json."""
    from fedarena.experiments.forget.run import forget as forget_clients

    target = out_dir or run_dir.parent / f"{run_dir.name}-forget-{'-'.join(client)}"
    methods = [m.strip() for m in method.split(",") if m.strip()]
    names = [a.strip() for a in algorithms.split(",")] if algorithms else None
    result = _guard(forget_clients, run_dir, client, methods, target, names, verify)
    out.print(_forget_table(result))
    out.print(f"forget directory: {target}", highlight=False, soft_wrap=True)


@app.command("continue")
def continue_(
    run_dir: Path = typer.Argument(
        ..., help="A run directory written by fedarena compare (reference, vectorized or flower-sim engine)."),
    rounds: int = typer.Option(..., "--rounds", help="Train on to this many rounds in total (more than the run's)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="New directory (default RUN_DIR-to-N)."),
    report: bool = typer.Option(False, "--report", help="Also write report.html and report.md there."),
) -> None:
    """Continue a finished run to more rounds from its checkpoints (same numbers as a run of that length; the
    privacy budget continues); writes a new run directory."""
    from fedarena.experiments.continuation import continue_run

    target = out_dir or run_dir.parent / f"{run_dir.name}-to-{rounds}"
    summary = _guard(continue_run, run_dir, rounds, target)
    out.print(_table(summary))
    out.print(f"run directory: {target}", highlight=False, soft_wrap=True)
    if report:
        from fedarena.report.render import write_report

        paths = _guard(write_report, target)
        out.print(f"report: {paths.html}", highlight=False, soft_wrap=True)


@app.command("report")
def report_(
    run_dir: Path = typer.Argument(..., help="A run directory written by fedarena compare."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Write the report here instead of RUN_DIR."),
    persona: str = typer.Option("architect", "--persona", help="cto | architect | ml-engineer"),
    priority: str = typer.Option("accuracy", "--priority",
                                 help="accuracy | worst-client | communication | simplicity | privacy"),
) -> None:
    """Write report.html (self-contained) and report.md: the claims table measured, plots, recommendation."""
    from fedarena.report.render import write_report

    paths = _guard(write_report, run_dir, out_dir, persona, priority)
    out.print(f"report: {paths.html}\nmarkdown: {paths.markdown}", highlight=False, soft_wrap=True)


@app.command()
def recommend(
    run_dir: Path = typer.Argument(..., help="A run directory written by fedarena compare."),
    persona: str = typer.Option("architect", "--persona", help="cto | architect | ml-engineer"),
    priority: str = typer.Option("accuracy", "--priority",
                                 help="accuracy | worst-client | communication | simplicity | privacy"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Which family and algorithm to deploy, from the run's measured numbers (rules stated)."""
    from fedarena.report.recommend import as_text
    from fedarena.report.recommend import recommend as recommend_
    from fedarena.report.render import load_summary

    rec = _guard(recommend_, _guard(load_summary, run_dir), persona, priority)
    if as_json:
        sys.stdout.write(json.dumps(rec.to_json(), indent=2) + "\n")
        return
    out.print(as_text(rec), highlight=False, soft_wrap=True)


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Algorithms (with family and paper), datasets, partitioners and models."""
    from fedarena.algorithms import REGISTRY
    from fedarena.experiments.presets import PRESETS

    info = {
        "algorithms": [{"name": n, "family": a.family, "paper": a.paper, "federated": a.federated,
                        "personal_keys": list(a.personal.patterns),
                        # what --tune searches: the declared spaces and the learning rate (config.TRAIN_SPACES)
                        "search_space": {k: s.to_json() for k, s in cfg.declared_spaces(n).items()
                                         if k not in cfg.TRAIN_SPACES or k in cfg.TRAIN_SEARCHED}}
                       for n, a in ((n, c()) for n, c in REGISTRY.items())],
        "tune": {"objectives": list(cfg.TUNE_OBJECTIVES), "pruners": list(cfg.TUNE_PRUNERS),
                 "quick_trials": cfg.QUICK_TRIALS, "seeds_when_tuning": cfg.TUNED_SEEDS},
        "datasets": list(cfg.DATASETS),
        "partitions": list(cfg.PARTITIONS),
        "models": list(cfg.MODELS),
        "engines": list(cfg.ENGINES),
        "presets": [{"name": p.name, "use_case": p.use_case, "offline": p.offline, "where": p.where}
                    for p in PRESETS.values()],
    }
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return
    table = Table(title="algorithms")
    for col in ("name", "family", "personal keys", "paper"):
        table.add_column(col)
    for a in info["algorithms"]:
        table.add_row(a["name"], a["family"], ", ".join(a["personal_keys"]) or "-", a["paper"])
    out.print(table)
    for key in ("datasets", "partitions", "models", "engines"):
        out.print(f"{key}: {', '.join(info[key])}", highlight=False)
    for p in PRESETS.values():
        out.print(f"preset {p.name} ({p.where}): {p.use_case}", highlight=False, soft_wrap=True)


def _bench_rounds_help() -> str:
    from fedarena.experiments.bench_workloads import DEFAULT_ROUNDS, QUICK_ROUNDS, WORKLOADS

    own = ", ".join(f"{w.name} {w.rounds}" for w in WORKLOADS if w.rounds)
    return (f"Rounds per engine and workload (default {DEFAULT_ROUNDS}, except the slow workloads' own: {own}; "
            f"--quick: {QUICK_ROUNDS}). Given, it applies to every workload.")


def _bench_workloads_help() -> str:
    from fedarena.experiments.bench_workloads import QUICK_WORKLOADS, WORKLOADS

    return (f"Comma-separated workloads to run (default: all; --quick: {','.join(QUICK_WORKLOADS)}). "
            f"Valid: {', '.join(w.name for w in WORKLOADS)}.")


@app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="About a minute: 3 rounds of the 100-client workloads."),
    workloads: Optional[str] = typer.Option(None, "--workloads", help=_bench_workloads_help()),
    rounds: Optional[int] = typer.Option(None, "--rounds", help=_bench_rounds_help()),
    repeat: int = typer.Option(1, "--repeat", help="Runs of each (workload, engine), each in a fresh process; "
                               "the times reported are medians over the runs (ms/round: median of their medians)."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto: where the runs train (run.device)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: all cores)."),
    scale: bool = typer.Option(False, "--scale", help="Instead of the workloads: FedAvg and FedPer with 100 to 10,000 "
                               "clients (100 or 1,000 per round) on the vectorized engine only, 5 rounds unless --rounds; "
                               "combines with --repeat and --device, not with --quick or --workloads."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory for bench.json (absent or empty)."),
) -> None:
    """Time the engines side by side on the same workloads (or, with --scale, the vectorized engine at up to
    10,000 clients); writes bench.json."""
    import datetime as dt
    import os

    from fedarena.core.device import resolve_device
    from fedarena.experiments.bench import run_bench, write
    from fedarena.experiments.bench_workloads import select
    from fedarena.experiments.rundir import check_out_dir

    target = out_dir or Path("runs") / f"{dt.datetime.now():%Y%m%d-%H%M%S}-bench"
    _guard(check_out_dir, target)
    if scale and (quick or workloads is not None):
        _fail(2, "--scale runs its own FedAvg/FedPer sizes; it does not combine with --quick or --workloads")
    _guard(select, workloads, quick)
    if rounds is not None and rounds < 2:
        _fail(2, "--rounds must be >= 2 (the first round is timed apart)")
    if repeat < 1:
        _fail(2, f"--repeat must be >= 1, got {repeat}")
    if device not in ("cpu", "cuda", "auto"):
        _fail(2, f"--device must be cpu, cuda or auto, got '{device}'")
    _guard(resolve_device, device)
    with err.status("benchmarking (each engine in its own process)..."):
        if scale:
            from fedarena.experiments.bench_scale import run_scale_bench

            result = _guard(run_scale_bench, rounds, threads or os.cpu_count() or 1, repeat=repeat, device=device)
        else:
            result = _guard(run_bench, quick, rounds, threads or os.cpu_count() or 1, workloads=workloads,
                            repeat=repeat, device=device)
    path = write(result, target)
    out.print(_scale_table(result) if scale else _bench_table(result))
    mem = result.get("memory")
    if mem:
        out.print(f"memory: {mem['workload']} peak RSS {mem['peak_rss_mb']:.0f} MB "
                  f"(python+torch baseline {mem['baseline_rss_mb']:.0f} MB, target {mem['target_mb']} MB)")
    out.print(f"bench: {path}", highlight=False, soft_wrap=True)
