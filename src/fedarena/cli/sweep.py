"""`fedarena sweep`: the heterogeneity grid, or (`--epsilons`) the privacy budgets."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedarena import config as cfg
from fedarena.cli.app import _guard, app, err, out
from fedarena.cli.options import (
    Algorithms,
    Clients,
    ClientsPerRound,
    ConfigFile,
    Data,
    Device,
    Model,
    Rounds,
    Seed,
    Seeds,
    Sets,
    Threads,
    Track,
    _given,
    set_threads,
)


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
    device: Device = None,
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Sweep directory; rerun with the same --out to resume."),
    set_: Sets = None,
    track: Track = None,
    threads: Threads = None,
) -> None:
    """Run the comparison over a heterogeneity grid and find where personalization stops paying off.

    The grid re-partitions embedded data per cell (--config sets everything but the partition); by default
    it compares global FL, personalized FL and the baselines over 3 seeds per cell (2 with --quick)."""
    import datetime as dt

    from fedarena.experiments import sweep as sw
    from fedarena.experiments import tracking
    from fedarena.report.render import sweep_lines, write_sweep_report
    from fedarena.report.sweep import Cell

    flags: dict[str, dict[str, Any]] = {
        "data": _given(name=data, num_clients=clients),
        "train": _given(clients_per_round=clients_per_round, rounds=rounds),
        "model": _given(name=model),
        "run": _given(algorithms=algorithms or ",".join(sw.default_algorithms()), seed=seed,
                      seeds=seeds or (sw.QUICK_SEEDS if quick else sw.DEFAULT_SEEDS), device=device),
    }
    set_threads(threads)
    conf = _guard(cfg.build, str(config) if config else None, flags, set_ or [])
    if epsilons:
        return _privacy_sweep(conf, epsilons, out_dir, track or [])
    names = cells.split(",") if cells else (sw.QUICK_CELLS if quick else sw.DEFAULT_CELLS)
    grid = [_guard(Cell.parse, n) for n in names]
    target = out_dir or Path("runs") / f"{dt.datetime.now():%Y%m%d-%H%M%S}-sweep"
    trackers = _guard(tracking.prepare, track or [], target)
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
    for line in _guard(tracking.track_sweep, trackers, target):
        out.print(line, highlight=False, soft_wrap=True)


def _privacy_sweep(conf: cfg.Config, epsilons: str, out_dir: Optional[Path], track: list[str]) -> None:
    import datetime as dt

    from fedarena.experiments import tracking
    from fedarena.experiments.privacy_sweep import run_privacy_sweep
    from fedarena.report import privacy_sweep as ps
    from fedarena.report.render import write_privacy_sweep_report

    budgets = [_guard(ps.parse_epsilon, e) for e in epsilons.split(",") if e.strip()]
    target = out_dir or Path("runs") / f"{dt.datetime.now():%Y%m%d-%H%M%S}-privacy-sweep"
    trackers = _guard(tracking.prepare, track, target)
    with Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        bar = progress.add_task("privacy budgets", total=len(budgets) + 1)
        result = _guard(run_privacy_sweep, conf, budgets, target,
                        lambda i, name, reused: progress.update(bar, completed=i + 1, description=name))
    paths = _guard(write_privacy_sweep_report, result, target)
    for line in ps.lines(result):
        out.print(line, highlight=False, soft_wrap=True)
    out.print(f"privacy sweep directory: {target} (report: {paths.html})", highlight=False, soft_wrap=True)
    for line in _guard(tracking.track_sweep, trackers, target):
        out.print(line, highlight=False, soft_wrap=True)
