"""The `fedarena` command line: parses flags and calls the library; no logic of its own.

Exit codes: 0 success, 2 bad input (one line naming the problem), 1 runtime failure.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedarena import config as cfg

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Global vs personalized federated learning, measured.")
err = Console(stderr=True)
out = Console(width=None if Console().is_terminal else 140)


def _fail(code: int, message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _guard(fn, *args, **kwargs):
    """Run a library call, turning user errors into exit 2 and other failures into exit 1."""
    from fedarena.core.types import FedarenaError

    try:
        return fn(*args, **kwargs)
    except FedarenaError as exc:
        _fail(2, str(exc))
    except KeyboardInterrupt:
        _fail(130, "interrupted; nothing was written")
    except typer.Exit:
        raise
    except Exception as exc:  # a runtime failure: one line, the traceback only with -v
        logging.getLogger("fedarena").debug("traceback", exc_info=True)
        _fail(1, f"{type(exc).__name__}: {exc}")


# Options several commands share, declared once (config sections [data], [train], [model], [run]).
ConfigFile = Annotated[Optional[Path], typer.Option("--config", help="TOML config (e.g. a run's config.toml).")]
Data = Annotated[Optional[str], typer.Option("--data", help="digits | synthetic | npz-dir:PATH")]
Partition = Annotated[Optional[str], typer.Option(
    "--partition", help="iid | dirichlet | shards | quantity | feature (default: dirichlet for digits)")]
Alpha = Annotated[Optional[float], typer.Option("--alpha", help="Dirichlet concentration (dirichlet, quantity).")]
ShardsPerClient = Annotated[Optional[int], typer.Option("--shards-per-client", help="Classes per client (shards).")]
Clients = Annotated[Optional[int], typer.Option("--clients", help="Number of clients (embedded data).")]
NewClients = Annotated[Optional[float], typer.Option(
    "--new-clients", help="Fraction of clients held out of training and onboarded at the end.")]
ClientsPerRound = Annotated[Optional[int], typer.Option(
    "--clients-per-round", help="Clients sampled per round (default: min(10, training clients)).")]
Rounds = Annotated[Optional[int], typer.Option("--rounds", help="Training rounds.")]
LocalEpochs = Annotated[Optional[int], typer.Option("--local-epochs", help="Local epochs per round.")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="Local mini-batch size.")]
Lr = Annotated[Optional[float], typer.Option("--lr", help="Local learning rate.")]
Model = Annotated[Optional[str], typer.Option("--model", help="mlr | mlp | cnn")]
Algorithms = Annotated[Optional[str], typer.Option(
    "--algorithms", help="Comma-separated, e.g. fedavg,fedprox,local (`fedarena list` names them all).")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Seed (the first one, with --seeds).")]
Seeds = Annotated[Optional[int], typer.Option("--seeds", help="Run for K seeds (seed, seed+1, ...).")]
Target = Annotated[Optional[float], typer.Option("--target", help="Target personal accuracy (fraction).")]
RunOut = Annotated[Optional[Path], typer.Option("--out", help="Run directory (must be absent or empty).")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="SECTION.KEY=VALUE override, repeatable.")]

# The privacy flags `compare` and `deploy` share (config section [privacy]).
DpClip = Annotated[Optional[float], typer.Option("--dp-clip", help="DP: clip each client update to L2 norm C.")]
DpNoise = Annotated[Optional[float], typer.Option("--dp-noise", help="DP: noise multiplier z (std z*C).")]
DpDelta = Annotated[Optional[float], typer.Option("--dp-delta", help="DP: delta (default 1e-5).")]
DpMode = Annotated[Optional[str], typer.Option(
    "--dp-mode", help="central (default: the server adds noise; the clients, under --secagg) | local (each client)")]
DpSgdNoise = Annotated[Optional[float], typer.Option(
    "--dp-sgd-noise", help="DP-SGD (sample-level DP of local training): noise multiplier sigma.")]
DpSgdClip = Annotated[Optional[float], typer.Option("--dp-sgd-clip", help="DP-SGD: clip each per-sample gradient to C.")]
TargetEpsilon = Annotated[Optional[float], typer.Option(
    "--target-epsilon", help="DP: stop before the round that would exceed it.")]
SecAgg = Annotated[bool, typer.Option(
    "--secagg", help="Secure aggregation between the clients and the server (SecAgg; SecAgg+ with --secagg-neighbours).")]
SecAggThreshold = Annotated[Optional[int], typer.Option("--secagg-threshold", help="Survivors needed (t of n).")]
SecAggNeighbours = Annotated[Optional[int], typer.Option("--secagg-neighbours", help="SecAgg+ graph degree k.")]


def _privacy_flags(dp_clip: float | None, dp_noise: float | None, dp_delta: float | None, dp_mode: str | None,
                   sgd_noise: float | None, sgd_clip: float | None, target_epsilon: float | None, secagg: bool,
                   secagg_threshold: int | None, secagg_neighbours: int | None) -> dict[str, Any]:
    """The [privacy] keys the flags set (the ones given)."""
    return _given(dp_clip=dp_clip, dp_noise=dp_noise, dp_delta=dp_delta, dp_mode=dp_mode, target_epsilon=target_epsilon,
                  secagg=secagg or None, secagg_threshold=secagg_threshold, secagg_neighbours=secagg_neighbours,
                  sgd_noise=sgd_noise, sgd_clip=sgd_clip)


@app.callback()
def main_callback(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # dp-accounting's RDP search logs every order it skips (harmless; the remaining orders bound epsilon)
    logging.getLogger("absl").setLevel(logging.ERROR)


@app.command()
def compare(
    config: ConfigFile = None,
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
    seeds: Seeds = None,
    target: Target = None,
    out_dir: RunOut = None,
    set_: Sets = None,
    report: bool = typer.Option(False, "--report", help="Also write report.html and report.md into the run directory."),
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
    forget_probe: Optional[str] = typer.Option(
        None, "--forget-probe",
        help="Client ID: plant a backdoor in its data, then forget it (retrain, federaser) into RUN/forget-ID/."),
) -> None:
    """Run global FL, personalized FL and baselines on identical seeded clients."""
    flags: dict[str, dict[str, Any]] = {
        "data": _given(name=data, partition=partition, alpha=alpha, shards_per_client=shards_per_client,
                       num_clients=clients, new_clients=new_clients),
        "train": _given(clients_per_round=clients_per_round, rounds=rounds, local_epochs=local_epochs,
                        batch_size=batch_size, lr=lr),
        "model": _given(name=model),
        "run": _given(algorithms=algorithms, seed=seed, engine=engine, target=target, seeds=seeds),
        "forget": _given(probe=forget_probe),
        "privacy": _privacy_flags(dp_clip, dp_noise, dp_delta, dp_mode, dp_sgd_noise, dp_sgd_clip, target_epsilon,
                                  secagg, secagg_threshold, secagg_neighbours),
    }
    conf = _guard(cfg.build, str(config) if config else None, flags, set_ or [])
    from fedarena.experiments.compare import run_compare
    from fedarena.experiments.rundir import check_out_dir, default_out_dir

    target_dir = out_dir or default_out_dir(conf)
    _guard(check_out_dir, target_dir)
    rounds_total = conf.train.rounds * conf.run.seeds
    with Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        bars = {name: progress.add_task(name, total=rounds_total) for name in conf.run.algorithms}
        summary = _guard(run_compare, conf, target_dir, lambda name, r: progress.update(bars[name], completed=r))
    out.print(_table(summary))
    out.print(f"run directory: {target_dir}", highlight=False, soft_wrap=True)
    if forget_probe:
        from fedarena.experiments.forget.run import forget as forget_clients

        result = _guard(forget_clients, target_dir, [forget_probe], ["retrain", "federaser"],
                        target_dir / f"forget-{forget_probe}")
        out.print(_forget_table(result))
    if report:
        from fedarena.report.render import write_report

        paths = _guard(write_report, target_dir)
        out.print(f"report: {paths.html}", highlight=False, soft_wrap=True)


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _table(summary: dict[str, Any]) -> Table:
    ds = summary["dataset"]
    table = Table(title=f"{ds['name']} · {ds['partition']} · {ds['num_clients']} clients · "
                        f"target {100 * summary['target_acc']:.1f}%")
    for col in ("algorithm", "family", "global acc %", "personal mean %", "std %", "worst-10% %",
                "MB up+down", "rounds to target", "wall s"):
        table.add_column(col, justify="left" if col in ("algorithm", "family") else "right")
    for run in summary["runs"]:
        f = run["final"]
        mb = (run["bytes"]["up_total"] + run["bytes"]["down_total"]) / 1e6
        family = run["family"] + ("" if run["federated"] else " (not federated)")
        label = run["algorithm"] + (f" (seed {run['seed']})" if len(summary.get("seeds", [])) > 1 else "")
        table.add_row(label, family, _pct(f["global_acc"]), _pct(f["personal_acc_mean"]),
                      _pct(f["personal_acc_std"]), _pct(f["personal_acc_worst10"]), f"{mb:.2f}",
                      str(run["rounds_to_target"] or "-"), f"{run['wall_seconds']:.1f}")
    return table


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
    run_dir: Path = typer.Argument(..., help="A run directory written by fedarena compare (in-process engine)."),
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


def _forget_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"forgetting {', '.join(result['forgotten'])}: before -> after (retrain)")
    for col in ("algorithm", "method", "MIA AUC", "backdoor %", "remaining acc %", "rounds", "MB", "s"):
        table.add_column(col, justify="left" if col in ("algorithm", "method") else "right")
    for r in result["runs"]:
        if r["refused"]:
            table.add_row(r["algorithm"], r["method"], f"refused: {r['refused']}", "", "", "", "", "")
            continue
        def trio(k: str, pct: bool = False) -> str:
            f = _pct if pct else (lambda v: "-" if v is None else f"{v:.3f}")
            return f"{f(r[k + '_before'])} -> {f(r[k + '_after'])} ({f(r[k + '_retrain'])})"
        table.add_row(r["algorithm"], r["method"], trio("mia_auc"), trio("backdoor", True),
                      f"{_pct(r['remaining_acc_after'])} ({_pct(r['remaining_acc_retrain'])})",
                      f"{r['rounds']} ({r['retrain_rounds']})",
                      f"{r['bytes'] / 1e6:.2f} ({(r['retrain_bytes'] or 0) / 1e6:.2f})",
                      f"{r['seconds']:.1f} ({r['retrain_seconds'] or 0:.1f})")
    return table


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


@app.command()
def sweep(
    config: ConfigFile = None,
    algorithms: Algorithms = None,
    cells: Optional[str] = typer.Option(
        None, "--cells", help="Comma-separated grid, e.g. iid,dirichlet-0.1,shards-2 (default: Dirichlet "
                              "0.05/0.1/0.3/1/10, IID, shards 2/5)."),
    quick: bool = typer.Option(False, "--quick", help="Small grid (dirichlet-0.1, iid, shards-2) and 2 seeds."),
    epsilons: Optional[str] = typer.Option(
        None, "--epsilons", help="Privacy sweep instead: comma-separated DP budgets, e.g. 1,3,8,inf "
                                 "(central DP-FedAvg, noise chosen per budget; any --data)."),
    seeds: Seeds = None,
    seed: Seed = None,
    data: Data = None,
    clients: Clients = None,
    clients_per_round: ClientsPerRound = None,
    rounds: Rounds = None,
    model: Model = None,
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Sweep directory; rerun with the same --out to resume."),
    set_: Sets = None,
) -> None:
    """Run the comparison over a heterogeneity grid and find where personalization stops paying off.

    The grid re-partitions embedded data per cell (--config sets everything but the partition); by default
    it compares global FL, personalized FL and the baselines over 3 seeds per cell (2 with --quick)."""
    import datetime as dt

    from fedarena.experiments import sweep as sw
    from fedarena.report.render import sweep_lines, write_sweep_report
    from fedarena.report.sweep import Cell

    flags: dict[str, dict[str, Any]] = {
        "data": _given(name=data, num_clients=clients),
        "train": _given(clients_per_round=clients_per_round, rounds=rounds),
        "model": _given(name=model),
        "run": _given(algorithms=algorithms or ",".join(sw.default_algorithms()), seed=seed,
                      seeds=seeds or (sw.QUICK_SEEDS if quick else sw.DEFAULT_SEEDS)),
    }
    conf = _guard(cfg.build, str(config) if config else None, flags, set_ or [])
    if epsilons:
        return _privacy_sweep(conf, epsilons, out_dir)
    names = cells.split(",") if cells else (sw.QUICK_CELLS if quick else sw.DEFAULT_CELLS)
    grid = [_guard(Cell.parse, n) for n in names]
    target = out_dir or Path("runs") / f"{dt.datetime.now():%Y%m%d-%H%M%S}-sweep"
    with Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        bar = progress.add_task("sweep cells", total=len(grid))
        result = _guard(sw.run_sweep, conf, grid, target,
                        lambda i, name, reused: progress.update(bar, completed=i + 1, description=name))
    paths = _guard(write_sweep_report, result, target)
    for line in sweep_lines(result):
        out.print(line, highlight=False, soft_wrap=True)
    out.print(f"ideal data similarity: {result['data_similarity_verdict']}; {result['crossover']['text']}",
              highlight=False, soft_wrap=True)
    out.print(f"sweep directory: {target} (report: {paths.html})", highlight=False, soft_wrap=True)


def _privacy_sweep(conf: cfg.Config, epsilons: str, out_dir: Optional[Path]) -> None:
    import datetime as dt

    from fedarena.experiments.privacy_sweep import run_privacy_sweep
    from fedarena.report import privacy_sweep as ps
    from fedarena.report.render import write_privacy_sweep_report

    budgets = [_guard(ps.parse_epsilon, e) for e in epsilons.split(",") if e.strip()]
    target = out_dir or Path("runs") / f"{dt.datetime.now():%Y%m%d-%H%M%S}-privacy-sweep"
    with Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        bar = progress.add_task("privacy budgets", total=len(budgets) + 1)
        result = _guard(run_privacy_sweep, conf, budgets, target,
                        lambda i, name, reused: progress.update(bar, completed=i + 1, description=name))
    paths = _guard(write_privacy_sweep_report, result, target)
    for line in ps.lines(result):
        out.print(line, highlight=False, soft_wrap=True)
    out.print(f"privacy sweep directory: {target} (report: {paths.html})", highlight=False, soft_wrap=True)


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Algorithms (with family and paper), datasets, partitioners and models."""
    from fedarena.algorithms import REGISTRY

    info = {
        "algorithms": [{"name": n, "family": a.family, "paper": a.paper, "federated": a.federated,
                        "personal_keys": list(a.personal.patterns)} for n, a in ((n, c()) for n, c in REGISTRY.items())],
        "datasets": list(cfg.DATASETS),
        "partitions": list(cfg.PARTITIONS),
        "models": list(cfg.MODELS),
        "engines": list(cfg.ENGINES),
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


@app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="About a minute: 3 rounds of the 100-client workloads."),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Rounds per engine and workload (default 20)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: all cores)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory for bench.json (absent or empty)."),
) -> None:
    """Time the engines side by side on the same workloads; writes bench.json."""
    import datetime as dt
    import os

    from fedarena.experiments.bench import run_bench, write
    from fedarena.experiments.rundir import check_out_dir

    target = out_dir or Path("runs") / f"{dt.datetime.now():%Y%m%d-%H%M%S}-bench"
    _guard(check_out_dir, target)
    if rounds is not None and rounds < 2:
        _fail(2, "--rounds must be >= 2 (the first round is timed apart)")
    with err.status("benchmarking (each engine in its own process)..."):
        result = _guard(run_bench, quick, rounds, threads or os.cpu_count() or 1)
    path = write(result, target)
    out.print(_bench_table(result))
    mem = result.get("memory")
    if mem:
        out.print(f"memory: {mem['workload']} peak RSS {mem['peak_rss_mb']:.0f} MB "
                  f"(python+torch baseline {mem['baseline_rss_mb']:.0f} MB, target {mem['target_mb']} MB)")
    out.print(f"bench: {path}", highlight=False, soft_wrap=True)


def _bench_table(result: dict[str, Any]) -> Table:
    m = result["machine"]
    table = Table(title=f"{result['rounds']} rounds · {m['torch_threads']} torch threads · "
                        f"matmul peak {m['matmul_peak_gflops']:.1f} GFLOP/s")
    for col in ("workload", "engine", "first round s", "ms/round median", "p90", "peak RSS MB", "GFLOP/s",
                "% of peak", "final acc %", "speed-up"):
        table.add_column(col, justify="left" if col in ("workload", "engine") else "right")
    notes: set[str] = set()
    for w in result["workloads"]:
        for name, e in w["engines"].items():
            if not e.get("available"):
                table.add_row(w["name"], name, "-", "-", "-", "-", "-", "-", "-", "unavailable")
                notes.add(f"{name}: {e['reason']}")
                continue
            speed = ""
            if name == "vectorized":
                ratios = w["speedup"]
                speed = " ".join(f"{v:.1f}x {k.split('_vs_')[1]}" for k, v in ratios.items() if v)
            table.add_row(w["name"], name, f"{e['first_round_s']:.2f}", f"{e['ms_per_round_median']:.0f}",
                          f"{e['ms_per_round_p90']:.0f}", f"{e['peak_rss_mb']:.0f}", f"{e['gflops']:.1f}",
                          f"{100 * e['peak_fraction']:.1f}", f"{100 * e['final_acc']:.1f}", speed)
    if notes:
        table.caption = "; ".join(sorted(notes))
    return table


@app.command()
def deploy(
    local: Optional[int] = typer.Option(None, "--local", help="Start a SuperLink and N SuperNodes (one per client) here."),
    superlink: Optional[str] = typer.Option(None, "--superlink", help="HOST:PORT of a running SuperLink."),
    root_certificates: Optional[Path] = typer.Option(None, "--root-certificates", help="CA PEM for --superlink TLS."),
    insecure: bool = typer.Option(False, "--insecure", help="Plain HTTP to --superlink (trusted networks only)."),
    expect_nodes: Optional[int] = typer.Option(None, "--expect-nodes", help="SuperNodes to wait for (--superlink)."),
    tls: bool = typer.Option(False, "--tls", help="--local: serve HTTPS with a throwaway CA."),
    round_timeout: float = typer.Option(60.0, "--round-timeout", help="Seconds a round waits for train replies."),
    eval_timeout: float = typer.Option(120.0, "--eval-timeout", help="Seconds an evaluation waits for every client."),
    config: ConfigFile = None,
    data: Data = None,
    partition: Partition = None,
    alpha: Alpha = None,
    shards_per_client: ShardsPerClient = None,
    new_clients: NewClients = None,
    clients_per_round: ClientsPerRound = None,
    rounds: Rounds = None,
    local_epochs: LocalEpochs = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    model: Model = None,
    algorithms: Algorithms = None,
    seed: Seed = None,
    seeds: Seeds = None,
    target: Target = None,
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
    out_dir: RunOut = None,
    set_: Sets = None,
) -> None:
    """Run the comparison on Flower: SuperLink + SuperNodes, personal state kept on the nodes (--algorithms
    defaults to fedavg; algorithms with nothing to federate are skipped)."""
    if (local is None) == (superlink is None):
        _fail(2, "give exactly one of --local N or --superlink HOST:PORT")
    if local is not None and local < 1:
        _fail(2, f"--local must be >= 1, got {local}")
    flags: dict[str, dict[str, Any]] = {
        "data": _given(name=data, partition=partition, alpha=alpha, shards_per_client=shards_per_client,
                       num_clients=local, new_clients=new_clients),
        "train": _given(clients_per_round=clients_per_round, rounds=rounds, local_epochs=local_epochs,
                        batch_size=batch_size, lr=lr),
        "model": _given(name=model),
        "run": _given(algorithms=algorithms or (None if config else "fedavg"), seed=seed, seeds=seeds, target=target,
                      engine="reference"),
        "privacy": _privacy_flags(dp_clip, dp_noise, dp_delta, dp_mode, dp_sgd_noise, dp_sgd_clip, target_epsilon,
                                  secagg, secagg_threshold, secagg_neighbours),
    }
    conf = _guard(cfg.build, str(config) if config else None, flags, set_ or [])
    from fedarena.experiments.rundir import check_out_dir, default_out_dir
    from fedarena.experiments.deploy import Timeouts, deploy_local, deploy_remote

    target_dir = (out_dir or default_out_dir(conf)).resolve()
    _guard(check_out_dir, target_dir)
    timeouts = Timeouts(round=round_timeout, evaluate=eval_timeout)
    with err.status("deploying on Flower (SuperLink, SuperNodes, flwr run)..."):
        if local is not None:
            summary = _guard(deploy_local, conf, target_dir, tls=tls, timeouts=timeouts)
        else:
            summary = _guard(deploy_remote, conf, target_dir, superlink, root_certificates=root_certificates,
                             insecure=insecure, expect_nodes=expect_nodes, timeouts=timeouts)
    out.print(_table(summary))
    out.print(f"run directory: {target_dir}", highlight=False, soft_wrap=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
