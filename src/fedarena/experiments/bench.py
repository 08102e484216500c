"""`fedarena bench`: the same workloads on every engine, side by side, in one process tree.

Each (workload, engine) pair runs in a fresh child process (`python -m fedarena.experiments.bench worker SPEC`)
so that its peak RSS is its own; the matmul peak is measured in a child too, in the same run.
Timings are training time per round (broadcast, local work, upload, aggregation; evaluation runs
once, after the last round, and is not timed). GFLOP/s counts the model's forward+backward
multiply-adds (3 x 2 x MACs per sample, MACs from the layer shapes) over the samples trained.
The workloads, their selection and generated data are in :mod:`fedarena.experiments.bench_workloads`.

`repeat` runs each (workload, engine) K times, each in a fresh child; within a workload the engines take turns
(repeat 1 of every engine, then repeat 2, ...), so a slow spell of the machine falls on all of them. The K results
are combined by :func:`aggregate_repeats` (medians over repeats). `device` is the runs' `run.device`; the matmul
peak is measured on that device. `fedarena bench --scale` is :mod:`fedarena.experiments.bench_scale`, built on this
module (its children run that module's worker).

`flower-sim` runs the workload through `fedarena.experiments.flower_sim.simulate` (a `--simulation`
SuperLink, `flwr run`, Ray actors; Ray gets `threads` CPUs, one per virtual client, so `threads`
clients train at once with one torch thread each). Its per-round times are the ServerApp's own
training seconds per round (the same clock as the in-process engines; Ray start-up and the
describe step happen before round 1 and are reported apart as `total_wall_s`). Its memory is that
of the whole process tree (this worker, the SuperLink, the simulation process, Ray's GCS, raylet
and actor processes: every process carrying the deployment marker), sampled every 0.2 s from
/proc/PID/smaps_rollup: `peak_rss_mb` is the peak of the summed RSS (shared pages counted in each
process, an upper bound), `peak_pss_mb` the peak of the summed PSS (shared pages split).
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
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fedarena.experiments.bench_workloads import (
    MEMORY_WORKLOAD,
    QUICK_FLOWER_SIM,
    QUICK_FLOWER_SIM_NOTE,
    Workload,
    config_flags,
    data_name,
    rounds_for,
    select,
)

log = logging.getLogger(__name__)

ENGINES = ("reference", "vectorized", "flower-sim")
REPEAT_AGGREGATION = ("each number is the median over the repeats (ms_per_round_median: the median of the repeats' "
                      "medians); ms_per_round_repeats lists each repeat's median")


def _config(w: Workload, data: str, spec: dict[str, Any]):
    """The run config of a worker's `spec` (its rounds, seed, engine and device) for `w` on data `data`."""
    from fedarena import config as cfg

    return cfg.build(None, config_flags(w, data, spec["seed"], spec["rounds"], spec["engine"], spec["device"]), [])


def _macs_per_sample(task, input_shape) -> int:
    """Multiply-accumulates of one forward pass, from the layer shapes: Linear, Conv2d and the LSTM's layers
    (per step, its input and recurrent projections: 4H x (in + H)). The input is of the model's own dtype
    (int64 character indices for the lstm, zeros: a valid index), so every model can be measured."""
    import torch
    from torch import nn

    from fedarena.tasks import input_dtype
    from fedarena.tasks.lstm import LSTMLayer

    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Linear):
            total += module.in_features * module.out_features
        elif isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += k * module.out_channels * output.shape[-1] * output.shape[-2]
        elif isinstance(module, LSTMLayer):  # output (N, T, H); w_ih is (4H, in), w_hh (4H, H)
            total += output.shape[1] * module.w_ih.shape[0] * (module.w_ih.shape[1] + module.w_hh.shape[1])

    counted = (nn.Linear, nn.Conv2d, LSTMLayer)
    handles = [m.register_forward_hook(hook) for m in task.module.modules() if isinstance(m, counted)]
    try:
        with torch.no_grad():
            task.module(torch.zeros(1, *input_shape, dtype=input_dtype(task.name)))
    finally:
        for h in handles:
            h.remove()
    return total


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in the child: one workload on one engine (or the matmul peak, or the import baseline)."""
    import tempfile

    import torch

    torch.set_num_threads(spec["threads"])
    if spec["kind"] == "peak":
        facts = device_facts(spec["device"])
        return facts | {"matmul_peak_gflops": _matmul_peak(torch.device(facts["device"]))}
    if spec["kind"] == "baseline":
        from fedarena.experiments import compare  # noqa: F401  (imports torch and what a worker imports)

        return {"peak_rss_mb": _peak_rss_mb()}
    w = Workload(**spec["workload"])
    with tempfile.TemporaryDirectory(prefix="fedarena-bench-data-") as tmp:  # a generated workload's clients
        return _run(_config(w, data_name(w, spec["seed"], Path(tmp)), spec), spec["engine"], spec["threads"])


def _run(conf, engine: str, threads: int) -> dict[str, Any]:
    """One FedAvg run of `conf` on `engine`: its timings, memory and final accuracy."""
    from fedarena.experiments.compare import prepare, train_algorithm

    in_process = engine != "flower-sim"
    p = prepare(conf, engine if in_process else "reference")  # the comparison's own clients and task
    if not in_process:
        return _flower_sim(conf, threads, p.data, p.task)
    _, run = train_algorithm(conf, p, "fedavg")
    return _timings(run.train_seconds, run.sampled, p.data, p.task, conf.train.local_epochs) | {
        "peak_rss_mb": _peak_rss_mb(),
        "final_acc": run.evaluations[-1].personal_acc_mean,
        "notes": run.engine.get("notes", []),
    }


def device_facts(name: str) -> dict[str, str]:
    """The resolved `run.device` (`str(torch.device)`) and, for a CUDA device, its name."""
    import torch

    from fedarena.core.device import resolve_device

    device = resolve_device(name)
    facts = {"device": str(device)}
    if device.type == "cuda":
        facts["device_name"] = torch.cuda.get_device_name(device)
    return facts


def _timings(cumulative: list[float], sampled: list[list[int]], data, task, local_epochs: int) -> dict[str, Any]:
    """First-round time, median/p90 ms per later round and GFLOP/s from cumulative training seconds."""
    per_round = [b - a for a, b in zip([0.0, *cumulative], cumulative)]
    steady = per_round[1:] or per_round
    sizes = [data.train_offsets[c + 1] - data.train_offsets[c] for c in range(data.num_clients)]
    samples = sum(sizes[c] for chosen in sampled for c in chosen) * local_epochs
    flops = 3 * 2 * _macs_per_sample(task, data.input_shape) * samples
    return {
        "first_round_s": per_round[0],
        "ms_per_round_median": 1000 * statistics.median(steady),
        "ms_per_round_p90": 1000 * _quantile(steady, 0.9),
        "gflops": flops / sum(per_round) / 1e9,
        "rounds": len(per_round),
    }


def _flower_sim(conf, threads: int, data, task) -> dict[str, Any]:
    """The workload on Flower's simulation runtime; memory of the whole process tree."""
    import tempfile

    import pyarrow.parquet as pq

    from fedarena.experiments.flower_sim import Resources, simulate

    memory = TreeMemory()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedarena-bench-") as tmp:
        out = Path(tmp) / "run"
        with memory:
            summary = simulate(conf, out, resources=Resources(num_cpus=threads), on_started=memory.watch)
        wall = time.perf_counter() - start
        seed = conf.run.seed
        cumulative = json.loads((out / "deployment.json").read_text())[f"fedavg/seed-{seed}"]["train_seconds"]
        rows = pq.read_table(out / "metrics.parquet", columns=["round", "client", "sampled"]).to_pylist()
    index = {cid: i for i, cid in enumerate(data.client_ids)}
    sampled = [[index[r["client"]] for r in rows if r["sampled"] and r["round"] == n] for n in range(1, len(cumulative) + 1)]
    return _timings(cumulative, sampled, data, task, conf.train.local_epochs) | {
        "peak_rss_mb": memory.peak_rss_mb, "peak_pss_mb": memory.peak_pss_mb, "processes": memory.processes,
        "memory": "sum over the process tree (this worker + every process carrying the deployment marker)",
        "final_acc": summary["runs"][0]["final"]["personal_acc_mean"], "total_wall_s": wall,
        "ray_cpus": threads, "notes": ["first_round_s excludes Ray start-up and the describe step (see total_wall_s)"],
    }


class TreeMemory:
    """Peak summed RSS and PSS of this process and every process carrying a deployment's marker,
    sampled every `every` seconds by a background thread (use as a context manager)."""

    def __init__(self, every: float = 0.2) -> None:
        import threading

        self.every, self.token = every, ""
        self.peak_rss_mb = self.peak_pss_mb = 0.0
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, federation: Any) -> None:
        self.token = federation.token

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def sample(self) -> None:
        from fedarena.flower.processes import marked_pids

        pids = [os.getpid(), *(marked_pids(self.token) if self.token else [])]
        totals = [_smaps_kb(pid) for pid in pids]
        self.peak_rss_mb = max(self.peak_rss_mb, sum(t[0] for t in totals) / 1024)
        self.peak_pss_mb = max(self.peak_pss_mb, sum(t[1] for t in totals) / 1024)
        self.processes = max(self.processes, len(pids))


def _smaps_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; (0, 0) once it is gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return rss, pss


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _matmul_peak(device: Any = "cpu", repeats: int = 10) -> float:
    """Best of `repeats` fp32 n x n matmuls on `device` in GFLOP/s (n = 1024 on a CPU, 8192 on a GPU, which a
    1024 matmul leaves mostly idle)."""
    import torch

    device = torch.device(device)
    n = 8192 if device.type == "cuda" else 1024
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b  # warm up
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def _child(spec: dict[str, Any], timeout: float, module: str = "fedarena.experiments.bench") -> dict[str, Any]:
    """`spec` run by `python -m MODULE worker SPEC` in a fresh process; the JSON of its last stdout line."""
    cmd = [sys.executable, "-m", module, "worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)  # noqa: S603
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"worker failed ({proc.returncode}): {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def flower_sim_status() -> str | None:
    """None when the flower-sim engine can run here, else the reason it cannot."""
    import importlib.util

    if importlib.util.find_spec("flwr") is None:
        return "Flower is not installed (pip install 'flwr[simulation]==1.42.0')"
    from fedarena.experiments.flower_sim import ray_missing

    return ray_missing()


def run_bench(quick: bool, rounds: int | None, threads: int, seed: int = 0, timeout: float = 3600,
              workloads: str | None = None, repeat: int = 1, device: str = "cpu",
              engines: tuple[str, ...] = ENGINES) -> dict[str, Any]:
    """Every selected workload on every engine, `repeat` times each (see the module docstring); bench.json's dict.

    `workloads`: comma-separated names (None: all, or the quick ones under `quick`); `rounds`: None for each
    workload's default (`bench_workloads.rounds_for`); `engines`: a subset of ENGINES, in that order. A child that
    runs past `timeout` seconds (an hour: 5 reference rounds of lstm-shakespeare and its final evaluation with the
    membership measure take ~15 min on a busy 2-core CPU) leaves its engine unavailable, with the reason."""
    from fedarena.core.types import FedarenaError

    chosen = select(workloads, quick)
    if repeat < 1:
        raise FedarenaError(f"--repeat must be >= 1, got {repeat}")
    machine = machine_facts(threads, device, timeout)
    result: dict[str, Any] = {
        "machine": machine, "rounds": rounds, "quick": quick, "repeat": repeat,
        "selected_workloads": [w.name for w in chosen], "device": device, "repeat_aggregation": REPEAT_AGGREGATION,
        "workloads": [],
    }
    unavailable = flower_sim_status()
    for w in chosen:
        n = rounds_for(w, rounds, quick)
        log.info("bench %s: %d rounds, %d repeat(s)", w.name, n, repeat)
        spec = {"kind": "run", "workload": asdict(w), "rounds": n, "seed": seed, "threads": threads, "device": device}
        out = {e: _skipped(e, w, quick, unavailable) for e in engines}
        runs, failed = run_in_turns({e: {**spec, "engine": e} for e in engines if out[e] is None}, repeat, timeout)
        out |= {e: {"available": False, "reason": reason} for e, reason in failed.items()}
        for engine in engines:
            if out[engine] is None:
                r = aggregate_repeats(runs[engine])
                out[engine] = {"available": True, **r, "peak_fraction": r["gflops"] / machine["matmul_peak_gflops"]}
        result["workloads"].append({"name": w.name, "model": w.model, "data": w.data, "num_clients": w.num_clients,
                                    "clients_per_round": w.clients_per_round, "rounds": n, "engines": out,
                                    "speedup": _speedups(out)})
    if not quick and workloads is None:
        mem = _child({"kind": "run", "workload": asdict(MEMORY_WORKLOAD), "engine": "vectorized", "rounds": 3,
                      "seed": seed, "threads": threads, "device": device}, timeout)
        result["memory"] = {"workload": MEMORY_WORKLOAD.name, "engine": "vectorized", "num_clients": 1000,
                            "clients_per_round": 100, "peak_rss_mb": mem["peak_rss_mb"],
                            "baseline_rss_mb": machine["baseline_rss_mb"], "target_mb": 512}
    return result


def machine_facts(threads: int, device: str, timeout: float) -> dict[str, Any]:
    """bench.json's ``machine``: threads, CPUs, platform, versions, the matmul peak on `device` and the import
    baseline, each measured in its own child. A `device` this machine lacks raises FedarenaError first."""
    import torch

    from fedarena.core.device import resolve_device

    resolve_device(device)  # a device this machine lacks exits 2 before anything runs
    return {
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **_child({"kind": "peak", "threads": threads, "device": device}, timeout),
        "baseline_rss_mb": _child({"kind": "baseline", "threads": threads}, timeout)["peak_rss_mb"],
        "torch": torch.__version__,
    }


def run_in_turns(specs: dict[Any, dict[str, Any]], repeat: int, timeout: float,
                 module: str = "fedarena.experiments.bench") -> tuple[dict[Any, list[dict[str, Any]]], dict[Any, str]]:
    """Each spec run `repeat` times, each run a fresh child (`_child`), the specs taking turns (the first run of
    every spec, then the second, ...), so that a slow spell of the machine falls on all of them. A spec whose child
    fails or runs past `timeout` seconds is not run again. Returns each key's results and the failed keys' reasons."""
    results: dict[Any, list[dict[str, Any]]] = {key: [] for key in specs}
    failed: dict[Any, str] = {}
    for _ in range(repeat):
        for key, spec in specs.items():
            if key in failed:
                continue
            try:
                results[key].append(_child(spec, timeout, module))
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                failed[key] = str(exc)
    return results, failed


def _skipped(engine: str, w: Workload, quick: bool, unavailable: str | None) -> dict[str, Any] | None:
    """Why `engine` does not run `w` in this bench (bench.json's entry), or None when it runs."""
    if engine == "flower-sim" and unavailable:
        return {"available": False, "reason": unavailable}
    if engine == "flower-sim" and quick and w.name != QUICK_FLOWER_SIM:
        return {"available": False, "skipped": True, "reason": QUICK_FLOWER_SIM_NOTE}
    return None


def aggregate_repeats(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One engine's repeats (each a worker's result) as one: every number is the median over the repeats, so
    ``ms_per_round_median`` is the median of the repeats' medians (statistics.median: the mean of the middle two
    for an even count); a number equal in every repeat (rounds, a seeded final accuracy) is kept as it is.
    ``ms_per_round_repeats`` lists each repeat's median; ``final_acc_repeats`` each final accuracy, only when they
    differ (a seeded run should not). Other fields (notes) are the first repeat's."""
    if not results:
        raise ValueError("aggregate_repeats needs at least one result")
    out = dict(results[0])
    for key, first in results[0].items():
        if isinstance(first, (int, float)) and not isinstance(first, bool):
            values = [r[key] for r in results]
            out[key] = first if all(v == first for v in values) else statistics.median(values)
    out["ms_per_round_repeats"] = [r["ms_per_round_median"] for r in results]
    accs = [r.get("final_acc") for r in results]
    if any(a != accs[0] for a in accs):
        out["final_acc_repeats"] = accs
    out["repeats"] = len(results)
    return out


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


def worker_main(run: Any, module: str, command: str) -> None:
    """A child's entry point: `python -m MODULE worker SPEC_JSON` prints `run(spec)` as JSON."""
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(run(json.loads(sys.argv[2]))))
    else:
        sys.exit(f"usage: python -m {module} worker SPEC_JSON (use `{command}`)")


if __name__ == "__main__":
    worker_main(worker, "fedarena.experiments.bench", "fedarena bench")
