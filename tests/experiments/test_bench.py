"""Bench pieces that can be checked without timing anything."""

from fedarena.core.types import SGD
from fedarena.experiments import bench
from fedarena.experiments.bench import _macs_per_sample, _quantile, _speedups, flower_sim_status
from fedarena.experiments.bench_workloads import QUICK_FLOWER_SIM, WORKLOADS
from fedarena.tasks import make_task


def test_macs_from_layer_shapes():
    mlp = make_task("mlp", (60,), 10, SGD(), hidden=200)
    assert _macs_per_sample(mlp, (60,)) == 60 * 200 + 200 * 200 + 200 * 10
    cnn = make_task("cnn", (1, 8, 8), 10, SGD())
    # conv1: 8x8 outputs x 25 x 1 x 32; conv2: 4x4 x 25 x 32 x 64; fc3: 256 x 512; head: 512 x 10
    assert _macs_per_sample(cnn, (1, 8, 8)) == 64 * 25 * 32 + 16 * 25 * 32 * 64 + 256 * 512 + 512 * 10


def test_macs_of_the_lstm_whose_inputs_are_character_indices():
    """The lstm takes int64 indices (a float input fails in its embedding): each of the seq_len steps of a layer
    costs its input and recurrent projections, 4H x (in + H); the head H x vocab once."""
    lstm = make_task("lstm", (5,), 80, SGD(), hidden=16)
    embed, h = 8, 16
    assert _macs_per_sample(lstm, (5,)) == 5 * 4 * h * (embed + h) + 5 * 4 * h * (h + h) + h * 80


def test_speedups_and_quantile():
    engines = {"reference": {"available": True, "ms_per_round_median": 300.0},
               "vectorized": {"available": True, "ms_per_round_median": 100.0},
               "flower-sim": {"available": False, "reason": "x"}}
    assert _speedups(engines) == {"vectorized_vs_reference": 3.0, "vectorized_vs_flower_sim": None}
    assert _quantile([5, 1, 4, 2, 3, 6, 7, 8, 9, 10], 0.9) == 10


def test_default_workloads_are_the_documented_ones():
    assert [w.name for w in WORKLOADS] == ["mlr-10", "mlr-100", "mlp-10", "mlp-100", "cnn-digits", "cnn-28",
                                          "lstm-shakespeare"]


def test_flower_sim_status_names_missing_ray(monkeypatch):
    import importlib.util

    assert flower_sim_status() is None  # Ray comes with flwr[simulation]==1.42.0 (pyproject)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    assert "Ray is not installed" in flower_sim_status()


def _fake_child(calls):
    def child(spec, timeout, module="fedarena.experiments.bench"):
        calls.append(spec)
        if spec["kind"] == "peak":
            return {"matmul_peak_gflops": 10.0}
        if spec["kind"] == "baseline":
            return {"peak_rss_mb": 100.0}
        ms = {"reference": 300.0, "vectorized": 100.0, "flower-sim": 2000.0}[spec["engine"]]
        return {"first_round_s": 1.0, "ms_per_round_median": ms, "ms_per_round_p90": ms, "peak_rss_mb": 1.0,
                "gflops": 1.0, "final_acc": 0.5, "rounds": spec["rounds"]}
    return child


def test_bench_reports_flower_sim_unavailable_without_ray(monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "_child", _fake_child(calls))
    monkeypatch.setattr(bench, "flower_sim_status", lambda: "Ray is not installed (pip install ...)")
    result = bench.run_bench(quick=True, rounds=None, threads=1)
    for w in result["workloads"]:
        assert w["engines"]["flower-sim"] == {"available": False, "reason": "Ray is not installed (pip install ...)"}
        assert w["speedup"]["vectorized_vs_flower_sim"] is None
    assert all(c.get("engine") != "flower-sim" for c in calls)


def test_quick_bench_runs_flower_sim_on_the_smallest_workload_only(monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "_child", _fake_child(calls))
    monkeypatch.setattr(bench, "flower_sim_status", lambda: None)
    result = bench.run_bench(quick=True, rounds=None, threads=1)
    flower = [c["workload"]["name"] for c in calls if c.get("engine") == "flower-sim"]
    assert flower == [QUICK_FLOWER_SIM]
    by_name = {w["name"]: w for w in result["workloads"]}
    assert by_name[QUICK_FLOWER_SIM]["speedup"]["vectorized_vs_flower_sim"] == 20.0
    assert by_name["mlp-100"]["engines"]["flower-sim"]["skipped"] is True


def test_tree_memory_sums_marked_processes():
    import os
    import subprocess
    import sys

    from fedarena.flower.processes import MARKER

    token = "bench-test-" + str(os.getpid())
    hold = "b = bytearray(80 * 2**20); import sys; sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", hold], env={**os.environ, MARKER: token},
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        alone = bench.TreeMemory()
        alone.sample()
        tree = bench.TreeMemory()
        tree.token = token
        tree.sample()
    finally:
        child.stdin.close()
        child.wait(timeout=10)
    assert alone.processes == 1 and tree.processes == 2
    assert 0 < alone.peak_pss_mb <= alone.peak_rss_mb
    assert tree.peak_rss_mb - alone.peak_rss_mb > 80  # the child's 80 MiB buffer is counted
