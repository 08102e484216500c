"""`fedarena bench`: the same workloads on every engine, side by side, in one process tree.

Each (workload, engine) pair runs in a fresh child process (`python -m fedarena.bench worker SPEC`)
so that its peak RSS is its own; the matmul peak is measured in a child too, in the same run.
Timings are training time per round (broadcast, local work, upload, aggregation; evaluation runs
once, after the last round, and is not timed). GFLOP/s counts the model's forward+backward
multiply-adds (3 x 2 x MACs per sample, MACs from the layer shapes) over the samples trained.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENGINES = ("reference", "vectorized", "flower-sim")


@dataclass(frozen=True)
class Workload:
    name: str
    data: str
    model: str
    num_clients: int
    clients_per_round: int
    samples_per_client: int = 267  # synthetic: 200 train + 67 test after the 25% test split
    batch_size: int = 20
    local_epochs: int = 1
    lr: float = 0.05


WORKLOADS = (
    Workload("mlr-10", "synthetic", "mlr", 100, 10),
    Workload("mlr-100", "synthetic", "mlr", 100, 100),
    Workload("mlp-10", "synthetic", "mlp", 100, 10),
    Workload("mlp-100", "synthetic", "mlp", 100, 100),
    Workload("cnn-digits", "digits", "cnn", 20, 10, batch_size=10),
)
MEMORY_WORKLOAD = Workload("fedavg-1000-clients", "synthetic", "mlp", 1000, 100)


def _config(w: Workload, seed: int):
    from fedarena import config as cfg

    flags = {
        "data": {"name": w.data, "num_clients": w.num_clients},
        "synthetic": {"samples_per_client": w.samples_per_client},
        "model": {"name": w.model},
        "train": {"clients_per_round": w.clients_per_round, "batch_size": w.batch_size,
                  "local_epochs": w.local_epochs, "lr": w.lr},
        "run": {"seed": seed, "algorithms": ["fedavg"]},
    }
    return cfg.build(None, flags, [])


def _macs_per_sample(task, input_shape) -> int:
    """Multiply-accumulates of one forward pass, from the layer shapes (Linear and Conv2d)."""
    import torch
    from torch import nn

    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Linear):
            total += module.in_features * module.out_features
        elif isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += k * module.out_channels * output.shape[-1] * output.shape[-2]

    handles = [m.register_forward_hook(hook) for m in task.module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.no_grad():
            task.module(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return total


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in the child: one workload on one engine (or the matmul peak)."""
    import torch

    torch.set_num_threads(spec["threads"])
    if spec["kind"] == "peak":
        return {"matmul_peak_gflops": _matmul_peak()}
    if spec["kind"] == "baseline":
        from fedarena.sim import engine  # noqa: F401  (imports torch and fedarena)

        return {"peak_rss_mb": _peak_rss_mb()}
    from fedarena.algorithms import REGISTRY
    from fedarena.core.types import SGD
    from fedarena.data import load_federated
    from fedarena.sim.engine import run_algorithm
    from fedarena.tasks import make_task

    w = Workload(**spec["workload"])
    conf = _config(w, spec["seed"])
    data = load_federated(conf)
    task = make_task(w.model, data.input_shape, data.num_classes, SGD(w.local_epochs, w.batch_size, w.lr))
    rounds = spec["rounds"]
    run = run_algorithm(REGISTRY["fedavg"](), task, data, rounds=rounds, clients_per_round=w.clients_per_round,
                        eval_every=rounds, seed=spec["seed"], engine=spec["engine"])
    cumulative = run.train_seconds
    per_round = [b - a for a, b in zip([0.0, *cumulative], cumulative)]
    steady = per_round[1:] or per_round
    sizes = [data.train_offsets[c + 1] - data.train_offsets[c] for c in range(data.num_clients)]
    samples = sum(sizes[c] for chosen in run.sampled for c in chosen) * w.local_epochs
    flops = 3 * 2 * _macs_per_sample(task, data.input_shape) * samples
    return {
        "first_round_s": per_round[0],
        "ms_per_round_median": 1000 * statistics.median(steady),
        "ms_per_round_p90": 1000 * _quantile(steady, 0.9),
        "peak_rss_mb": _peak_rss_mb(),
        "gflops": flops / sum(per_round) / 1e9,
        "final_acc": run.evaluations[-1].personal_acc_mean,
        "rounds": rounds,
        "notes": run.engine.get("notes", []),
    }


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _matmul_peak(n: int = 1024, repeats: int = 10) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def _child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "fedarena.bench", "worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)  # noqa: S603
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"worker failed ({proc.returncode}): {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def flower_sim_status() -> str | None:
    """None when the flower-sim engine can run here, else the reason it cannot."""
    from fedarena.config import ENGINES as AVAILABLE

    if "flower-sim" not in AVAILABLE:
        return "fedarena has no flower-sim engine yet (the Flower deployment issue builds it)"
    return None


def run_bench(quick: bool, rounds: int | None, threads: int, seed: int = 0, timeout: float = 900) -> dict[str, Any]:
    rounds = rounds or (3 if quick else 20)
    workloads = [w for w in WORKLOADS if not quick or w.name in ("mlr-100", "mlp-100")]
    machine = {
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **_child({"kind": "peak", "threads": threads}, timeout),
        "baseline_rss_mb": _child({"kind": "baseline", "threads": threads}, timeout)["peak_rss_mb"],
    }
    import torch

    machine["torch"] = torch.__version__
    result: dict[str, Any] = {"machine": machine, "rounds": rounds, "quick": quick, "workloads": []}
    unavailable = flower_sim_status()
    for w in workloads:
        engines: dict[str, Any] = {}
        for engine in ENGINES:
            if engine == "flower-sim" and unavailable:
                engines[engine] = {"available": False, "reason": unavailable}
                continue
            log.info("bench %s on %s", w.name, engine)
            spec = {"kind": "run", "workload": asdict(w), "engine": engine, "rounds": rounds, "seed": seed,
                    "threads": threads}
            try:
                r = _child(spec, timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                engines[engine] = {"available": False, "reason": str(exc)}
                continue
            r["peak_fraction"] = r["gflops"] / machine["matmul_peak_gflops"]
            engines[engine] = {"available": True, **r}
        result["workloads"].append({"name": w.name, "model": w.model, "data": w.data, "num_clients": w.num_clients,
                                    "clients_per_round": w.clients_per_round, "engines": engines,
                                    "speedup": _speedups(engines)})
    if not quick:
        spec = {"kind": "run", "workload": asdict(MEMORY_WORKLOAD), "engine": "vectorized", "rounds": 3,
                "seed": seed, "threads": threads}
        mem = _child(spec, timeout)
        result["memory"] = {"workload": MEMORY_WORKLOAD.name, "engine": "vectorized", "num_clients": 1000,
                            "clients_per_round": 100, "peak_rss_mb": mem["peak_rss_mb"],
                            "baseline_rss_mb": machine["baseline_rss_mb"], "target_mb": 512}
    return result


def _speedups(engines: dict[str, Any]) -> dict[str, float | None]:
    def ms(name):
        e = engines.get(name, {})
        return e.get("ms_per_round_median") if e.get("available") else None

    vec = ms("vectorized")
    return {
        "vectorized_vs_reference": (ms("reference") / vec) if vec and ms("reference") else None,
        "vectorized_vs_flower_sim": (ms("flower-sim") / vec) if vec and ms("flower-sim") else None,
    }


def write(result: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench.json"
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.rename(path)
    return path


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(worker(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: python -m fedarena.bench worker SPEC_JSON (use `fedarena bench`)")
