"""`fedarena deploy`: the comparison on Flower SuperLink/SuperNodes, local or remote."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from fedarena import config as cfg
from fedarena.cli.app import _fail, _guard, app, err, out
from fedarena.cli.options import (
    Algorithms,
    Alpha,
    BatchSize,
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
    Model,
    NewClients,
    Partition,
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
    Track,
    _given,
    _privacy_flags,
)
from fedarena.cli.tables import _table


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
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="RUN_DIR",
                                          help="Finish the interrupted deploy whose --out was RUN_DIR (same config)."),
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
    device: Device = None,
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
    track: Track = None,
) -> None:
    """Run the comparison on Flower: SuperLink + SuperNodes, personal state kept on the nodes (--algorithms
    defaults to fedavg; algorithms with nothing to federate are skipped)."""
    if (local is None) == (superlink is None):
        _fail(2, "give exactly one of --local N or --superlink HOST:PORT")
    if local is not None and local < 1:
        _fail(2, f"--local must be >= 1, got {local}")
    if resume is not None:  # the interrupted deploy's config (where visible here) under the flags given
        if out_dir is not None and out_dir.resolve() != resume.resolve():
            _fail(2, "--resume RUN_DIR names the run directory: give no other --out")
        from fedarena.experiments.deploy_resume import CONFIG, state_dir

        out_dir, saved = resume, state_dir(resume.resolve()) / CONFIG
        config = config or (saved if saved.is_file() else None)
    flags: dict[str, dict[str, Any]] = {
        "data": _given(name=data, partition=partition, alpha=alpha, shards_per_client=shards_per_client,
                       num_clients=local, new_clients=new_clients),
        "train": _given(clients_per_round=clients_per_round, rounds=rounds, local_epochs=local_epochs,
                        batch_size=batch_size, lr=lr),
        "model": _given(name=model),
        "run": _given(algorithms=algorithms or (None if config else "fedavg"), seed=seed, seeds=seeds, target=target,
                      engine="reference", device=device),
        "privacy": _privacy_flags(dp_clip, dp_noise, dp_delta, dp_mode, dp_sgd_noise, dp_sgd_clip, target_epsilon,
                                  secagg, secagg_threshold, secagg_neighbours),
    }
    conf = _guard(cfg.build, str(config) if config else None, flags, set_ or [])
    from fedarena.experiments import tracking
    from fedarena.experiments.deploy import Timeouts, deploy_local, deploy_remote
    from fedarena.experiments.rundir import check_out_dir, default_out_dir

    target_dir = (out_dir or default_out_dir(conf)).resolve()
    _guard(check_out_dir, target_dir)
    trackers = _guard(tracking.prepare, track or [], target_dir)
    timeouts = Timeouts(round=round_timeout, evaluate=eval_timeout)
    with err.status("deploying on Flower (SuperLink, SuperNodes, flwr run)..."):
        if local is not None:
            summary = _guard(deploy_local, conf, target_dir, tls=tls, timeouts=timeouts, resume=resume is not None)
        else:
            summary = _guard(deploy_remote, conf, target_dir, superlink, root_certificates=root_certificates,
                             insecure=insecure, expect_nodes=expect_nodes, timeouts=timeouts, resume=resume is not None)
    out.print(_table(summary))
    out.print(f"run directory: {target_dir}", highlight=False, soft_wrap=True)
    for line in _guard(tracking.track_run, trackers, target_dir):
        out.print(line, highlight=False, soft_wrap=True)
