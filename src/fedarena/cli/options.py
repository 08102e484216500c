"""Options several commands share, declared once (config sections [data], [train], [model], [run], [privacy])."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

PresetName = Annotated[Optional[str], typer.Option(
    "--preset", help="A use case's documented config (fedarena list shows them); flags apply on top.")]
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
Seeds = Annotated[Optional[int], typer.Option("--seeds", help="Run for K seeds (seed, seed+1, ...); 3 when tuning.")]
Tune = Annotated[Optional[str], typer.Option(
    "--tune", help="N trials per algorithm (or 'quick': 8) searching each algorithm's declared space on validation "
                   "data, then the best configuration on --seeds seeds (docs/tuning.md).")]
TuneObjective = Annotated[Optional[str], typer.Option(
    "--tune-objective", help="mean (validation personal accuracy, sample-weighted; default) | worst10")]
Target = Annotated[Optional[float], typer.Option("--target", help="Target personal accuracy (fraction).")]
Device = Annotated[Optional[str], typer.Option("--device", help="cpu (default) | cuda | cuda:N | auto")]
RunOut = Annotated[Optional[Path], typer.Option("--out", help="Run directory (must be absent or empty).")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="SECTION.KEY=VALUE override, repeatable.")]
Track = Annotated[Optional[list[str]], typer.Option(
    "--track", help="mlflow[:URI] | tensorboard[:DIR], repeatable: log the finished run directory to MLflow (default "
                    "sqlite:///<runs dir>/mlflow.db) or TensorBoard (default <run dir>/tensorboard); needs "
                    "pip install 'fedarena[track]' (docs/tracking.md).")]

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
Threads = Annotated[Optional[int], typer.Option(
    "--threads", min=1, help="torch threads (default: torch's, all cores). On a busy machine 1 can be ~10x faster for "
    "small models; numbers are bit for bit the same only for the same thread count (docs/compare.md).")]


def set_threads(threads: int | None) -> None:
    """`--threads`: the process's torch thread count (the CLI's business: library code touches no global state)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


Attack = Annotated[Optional[str], typer.Option(
    "--attack", help="Simulate poisoning: label-flip | sign-flip | scale | gaussian | alie | backdoor (docs/robustness.md).")]
Malicious = Annotated[Optional[float], typer.Option(
    "--malicious", help="Share of the training clients that attack (default 0.2); metrics are over the benign ones.")]
Aggregator = Annotated[Optional[str], typer.Option(
    "--aggregator", help="Server rule: mean (default) | median | trimmed-mean | krum | multi-krum | bulyan | centered-clip.")]
SecAggThreshold = Annotated[Optional[int], typer.Option("--secagg-threshold", help="Survivors needed (t of n).")]
SecAggNeighbours = Annotated[Optional[int], typer.Option("--secagg-neighbours", help="SecAgg+ graph degree k.")]


def _privacy_flags(dp_clip: float | None, dp_noise: float | None, dp_delta: float | None, dp_mode: str | None,
                   sgd_noise: float | None, sgd_clip: float | None, target_epsilon: float | None, secagg: bool,
                   secagg_threshold: int | None, secagg_neighbours: int | None) -> dict[str, Any]:
    """The [privacy] keys the flags set (the ones given)."""
    return _given(dp_clip=dp_clip, dp_noise=dp_noise, dp_delta=dp_delta, dp_mode=dp_mode, target_epsilon=target_epsilon,
                  secagg=secagg or None, secagg_threshold=secagg_threshold, secagg_neighbours=secagg_neighbours,
                  sgd_noise=sgd_noise, sgd_clip=sgd_clip)


def tune_trials(value: str | None) -> int | None:
    """--tune N or quick, as tune.trials (a bad value is refused by the config's check, naming the key)."""
    from fedarena import config as cfg

    if value is None:
        return None
    if value.strip().lower() == "quick":
        return cfg.QUICK_TRIALS
    try:
        trials = int(value)
    except ValueError:
        trials = 0
    if trials < 1:
        raise cfg.FedarenaError(f"tune.trials (--tune): expected a number of trials >= 1 or 'quick', got {value!r}")
    return trials


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
