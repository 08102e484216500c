"""`fedarena bench --scale`: FedAvg and FedPer with up to 10,000 clients (issue #17, item 4), on the vectorized
engine only (the engine meant to scale; the mode takes no engine choice).

The workload is bench's synthetic MLP (`synthetic`, 267 samples per client, MLP 60-200-200-10, batch 20, one local
epoch, lr 0.05, ``data.val_fraction=0``) at every (total clients, clients per round) of :data:`SCALE_SIZES`, for each
algorithm of :data:`SCALE_ALGORITHMS`. Each run is a fresh child process (``python -m
fedarena.experiments.bench_scale worker SPEC``), so its peak RSS is its own; `repeat` runs each K times, the runs
taking turns as bench's engines do, combined by `bench.aggregate_repeats` (medians). The machine's facts (matmul
peak, import baseline) are bench's, measured in their own children in the same run. This module builds on
:mod:`fedarena.experiments.bench`, which knows nothing of it.

A run reports, beside bench's training-only timings (`first_round_s`, `ms_per_round_median` of the rounds after
the first, `ms_per_round_p90`, `gflops`): the child's memory at four points (`ru_maxrss`, MiB, the process's
peak so far, unless said otherwise):

- ``import_rss_mb``: after importing what a worker imports, before any data (what bench's baseline child measures);
- ``rss_after_prepare_mb``: the current RSS (/proc/self/status VmRSS) once the clients' data and the task are
  prepared, and ``peak_rss_after_prepare_mb`` the peak by then (generation may peak above what it keeps);
  ``data_mb`` is the size of the prepared data's tensors;
- ``peak_rss_before_eval_mb``: the peak when the final evaluation starts (every training round done);
- ``peak_rss_mb``: the peak of the whole run, the final evaluation (every client, with the membership measure)
  included.

On a CUDA device RSS is host memory only; ``cuda_peak_allocated_mb`` adds torch's peak allocation on the device.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from fedarena.experiments import bench
from fedarena.experiments.bench_workloads import Workload, config_flags

log = logging.getLogger(__name__)

SCALE_SIZES: tuple[tuple[int, int], ...] = ((100, 100), (1_000, 100), (10_000, 100), (1_000, 1_000), (10_000, 1_000))
SCALE_ALGORITHMS = ("fedavg", "fedper")
SCALE_ROUNDS = 5
SCALE_ENGINE = "vectorized"
TARGET_PEAK_RSS_MB = 2048  # issue #17: "within 2 GB peak RSS"


def scale_workload(num_clients: int, clients_per_round: int) -> Workload:
    """Bench's synthetic MLP workload (mlp-10/mlp-100) with `num_clients` clients, `clients_per_round` per round."""
    return Workload(f"mlp-{num_clients}x{clients_per_round}", "synthetic", "mlp", num_clients, clients_per_round)


def scale_config(spec: dict[str, Any]):
    """The run config of a scale worker's `spec`: its algorithm alone on the vectorized engine."""
    from fedarena import config as cfg

    w = scale_workload(spec["num_clients"], spec["clients_per_round"])
    flags = config_flags(w, w.data, spec["seed"], spec["rounds"], SCALE_ENGINE, spec["device"])
    flags["run"]["algorithms"] = [spec["algorithm"]]
    return cfg.build(None, flags, [])


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in the child: one algorithm at one size on `spec["threads"]` torch threads, its timings and memory."""
    import torch

    from fedarena.core.device import resolve_device
    from fedarena.experiments.compare import prepare, train_algorithm

    torch.set_num_threads(spec["threads"])
    imported = bench._peak_rss_mb()
    conf = scale_config(spec)
    device = resolve_device(conf.run.device)
    p = prepare(conf, SCALE_ENGINE)
    memory: dict[str, Any] = {"import_rss_mb": imported, "rss_after_prepare_mb": _current_rss_mb(),
                              "peak_rss_after_prepare_mb": bench._peak_rss_mb(), "data_mb": _data_mb(p.data)}
    marks: dict[str, float] = {}
    p = dataclasses.replace(p, runtime=_marking_evaluation(p.runtime, marks))
    _, run = train_algorithm(conf, p, spec["algorithm"])
    out = bench._timings(run.train_seconds, run.sampled, p.data, p.task, conf.train.local_epochs) | memory | {
        "peak_rss_before_eval_mb": marks.get("peak_rss_mb"),
        "peak_rss_mb": bench._peak_rss_mb(),
        "final_acc": run.evaluations[-1].personal_acc_mean,
        "notes": run.engine.get("notes", []),
    }
    if device.type == "cuda":
        out["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _marking_evaluation(factory: Any, marks: dict[str, float]) -> Any:
    """`factory` (a RuntimeFactory) whose runtimes record the peak RSS in `marks` when their first evaluation starts
    (bench's runs evaluate once, after the last round)."""

    def build(*args: Any, **kwargs: Any) -> Any:
        clients = factory(*args, **kwargs)
        evaluate = clients.evaluate

        def marked(*a: Any, **k: Any) -> Any:
            marks.setdefault("peak_rss_mb", bench._peak_rss_mb())
            return evaluate(*a, **k)

        clients.evaluate = marked
        return clients

    return build


def _current_rss_mb() -> float | None:
    """This process's resident set now (VmRSS, MiB); None where /proc/self/status cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _data_mb(data: Any) -> float:
    """MiB held by the tensors of a FederatedData (features and labels of every split)."""
    tensors = (data.x_train, data.y_train, data.x_test, data.y_test, data.x_val, data.y_val)
    return sum(t.numel() * t.element_size() for t in tensors if t is not None) / 2**20


def run_scale_bench(rounds: int | None, threads: int, seed: int = 0, timeout: float = 3600, repeat: int = 1,
                    device: str = "cpu") -> dict[str, Any]:
    """`fedarena bench --scale`: bench.json's dict, bench's ``machine`` and an empty ``workloads`` beside the
    ``scale`` section (:func:`run_scale`)."""
    from fedarena.core.types import FedarenaError

    if repeat < 1:
        raise FedarenaError(f"--repeat must be >= 1, got {repeat}")
    machine = bench.machine_facts(threads, device, timeout)
    return {"machine": machine, "rounds": rounds, "quick": False, "repeat": repeat, "selected_workloads": [],
            "device": device, "repeat_aggregation": bench.REPEAT_AGGREGATION, "workloads": [],
            "scale": run_scale(rounds, threads, seed, timeout, repeat, device, machine["baseline_rss_mb"])}


def run_scale(rounds: int | None, threads: int, seed: int, timeout: float, repeat: int, device: str,
              baseline_rss_mb: float | None = None) -> dict[str, Any]:
    """Every (algorithm, size) of the scale mode, `repeat` times each in a fresh child (all the runs take turns:
    the first run of each, then the second, ...); bench.json's ``scale`` section. A child that fails or runs past
    `timeout` seconds leaves its entry unavailable, with the reason."""
    n = rounds or SCALE_ROUNDS
    keys = [(a, total, k) for a in SCALE_ALGORITHMS for total, k in SCALE_SIZES]
    log.info("bench --scale: %d runs of %d rounds, %d repeat(s)", len(keys), n, repeat)
    specs = {(a, total, k): {"kind": "scale", "algorithm": a, "num_clients": total, "clients_per_round": k,
                             "rounds": n, "seed": seed, "threads": threads, "device": device} for a, total, k in keys}
    results, failed = bench.run_in_turns(specs, repeat, timeout, module="fedarena.experiments.bench_scale")
    runs = []
    for key in keys:
        algorithm, total, k = key
        entry: dict[str, Any] = {"algorithm": algorithm, "num_clients": total, "clients_per_round": k, "rounds": n}
        if key in failed:
            runs.append(entry | {"available": False, "reason": failed[key]})
            continue
        r = bench.aggregate_repeats(results[key])
        runs.append(entry | {"available": True, **r, "ms_per_sampled_client": r["ms_per_round_median"] / k})
    w = scale_workload(0, 0)
    return {
        "engine": SCALE_ENGINE, "algorithms": list(SCALE_ALGORITHMS), "rounds": n, "repeat": repeat, "device": device,
        "workload": {"data": w.data, "model": w.model, "samples_per_client": w.samples_per_client,
                     "batch_size": w.batch_size, "local_epochs": w.local_epochs, "lr": w.lr, "val_fraction": 0.0},
        "evaluation": "once, after the last round (not timed; inside peak_rss_mb, not peak_rss_before_eval_mb)",
        "baseline_rss_mb": baseline_rss_mb, "target_peak_rss_mb": TARGET_PEAK_RSS_MB, "runs": runs,
    }


if __name__ == "__main__":
    bench.worker_main(worker, "fedarena.experiments.bench_scale", "fedarena bench --scale")
