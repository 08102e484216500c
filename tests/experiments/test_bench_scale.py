"""`fedarena bench --scale` at tiny sizes: what bench.json's scale section records, never how fast anything ran."""

import json

import pytest
from typer.testing import CliRunner

from fedarena.cli import app
from fedarena.experiments import bench, bench_scale

runner = CliRunner()

RUN_FIELDS = {"algorithm", "num_clients", "clients_per_round", "rounds", "available", "first_round_s",
              "ms_per_round_median", "ms_per_round_p90", "ms_per_round_repeats", "ms_per_sampled_client", "gflops",
              "peak_rss_mb", "peak_rss_before_eval_mb", "import_rss_mb", "rss_after_prepare_mb",
              "peak_rss_after_prepare_mb", "data_mb", "final_acc", "repeats", "notes"}


def test_scale_through_the_cli_writes_every_field(tmp_path, monkeypatch):
    """Real children (each run its own process), two tiny sizes, two rounds (the CLI's minimum)."""
    monkeypatch.setattr(bench_scale, "SCALE_SIZES", ((20, 5), (40, 5)))
    out = tmp_path / "bench"
    result = runner.invoke(app, ["bench", "--scale", "--rounds", "2", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "scale" in result.output and "fedper" in result.output
    written = json.loads((out / "bench.json").read_text())
    assert written["workloads"] == [] and written["selected_workloads"] == [] and "memory" not in written
    s = written["scale"]
    assert (s["engine"], s["algorithms"], s["rounds"], s["repeat"], s["device"]) == (
        "vectorized", ["fedavg", "fedper"], 2, 1, "cpu")
    assert s["workload"] == {"data": "synthetic", "model": "mlp", "samples_per_client": 267, "batch_size": 20,
                             "local_epochs": 1, "lr": 0.05, "val_fraction": 0.0}
    assert s["baseline_rss_mb"] == written["machine"]["baseline_rss_mb"] > 0
    assert s["target_peak_rss_mb"] == 2048
    assert [(r["algorithm"], r["num_clients"], r["clients_per_round"]) for r in s["runs"]] == [
        ("fedavg", 20, 5), ("fedavg", 40, 5), ("fedper", 20, 5), ("fedper", 40, 5)]
    for r in s["runs"]:
        assert r["available"], r
        assert RUN_FIELDS <= set(r), RUN_FIELDS - set(r)
        assert r["rounds"] == 2 and r["repeats"] == 1 and len(r["ms_per_round_repeats"]) == 1
        # memory is recorded in the order it was measured (peaks only grow); no timing is asserted
        assert 0 < r["import_rss_mb"] <= r["peak_rss_after_prepare_mb"] <= r["peak_rss_before_eval_mb"] <= r["peak_rss_mb"]
        assert r["rss_after_prepare_mb"] > 0  # VmRSS now: the kernel's peak counter may lag it by a few pages
        # 267 float32 features x 60 + int64 label per sample (synthetic's default 60 features)
        assert r["data_mb"] == pytest.approx(r["num_clients"] * 267 * (60 * 4 + 8) / 2**20)
        assert 0 <= r["final_acc"] <= 1


@pytest.mark.parametrize("extra", [["--quick"], ["--workloads", "mlp-100"]])
def test_scale_refuses_quick_and_workloads_with_exit_2(tmp_path, extra):
    out = tmp_path / "bench"
    result = runner.invoke(app, ["bench", "--scale", *extra, "--out", str(out)])
    assert result.exit_code == 2 and "--scale" in result.output
    assert not out.exists()


def test_scale_repeats_take_turns_and_a_failed_run_is_unavailable(monkeypatch):
    calls = []
    medians = iter(range(10, 1000, 10))

    def child(spec, timeout, module="fedarena.experiments.bench"):
        calls.append({**spec, "module": module})
        if spec["kind"] == "peak":
            return {"device": "cpu", "matmul_peak_gflops": 10.0}
        if spec["kind"] == "baseline":
            return {"peak_rss_mb": 100.0}
        if spec["algorithm"] == "fedper" and spec["num_clients"] == 40:
            raise RuntimeError("worker failed (1): MemoryError")
        return {"first_round_s": 1.0, "ms_per_round_median": float(next(medians)), "peak_rss_mb": 200.0,
                "final_acc": 0.5, "rounds": spec["rounds"]}

    monkeypatch.setattr(bench, "_child", child)
    monkeypatch.setattr(bench_scale, "SCALE_SIZES", ((20, 5), (40, 10)))
    result = bench_scale.run_scale_bench(rounds=None, threads=1, repeat=2, device="auto")
    assert {c["kind"]: c["module"] for c in calls} == {"peak": "fedarena.experiments.bench", "baseline":
                                                       "fedarena.experiments.bench", "scale": "fedarena.experiments.bench_scale"}
    runs = [(c["algorithm"], c["num_clients"]) for c in calls if c["kind"] == "scale"]
    assert runs == [("fedavg", 20), ("fedavg", 40), ("fedper", 20), ("fedper", 40),
                    ("fedavg", 20), ("fedavg", 40), ("fedper", 20)]  # the failed run is not repeated
    assert {c["rounds"] for c in calls if c["kind"] == "scale"} == {bench_scale.SCALE_ROUNDS}
    assert {c["device"] for c in calls if c["kind"] != "baseline"} == {"auto"}
    by = {(r["algorithm"], r["num_clients"]): r for r in result["scale"]["runs"]}
    assert by[("fedavg", 20)]["ms_per_round_repeats"] == [10.0, 40.0] and by[("fedavg", 20)]["ms_per_round_median"] == 25.0
    assert by[("fedavg", 40)]["ms_per_sampled_client"] == 35.0 / 10  # median of 20 and 50, over 10 clients per round
    assert by[("fedper", 40)] == {"algorithm": "fedper", "num_clients": 40, "clients_per_round": 10, "rounds": 5,
                                  "available": False, "reason": "worker failed (1): MemoryError"}
    assert result["scale"]["repeat"] == 2 and result["workloads"] == [] and result["machine"]["baseline_rss_mb"] == 100.0


def test_scale_config_is_the_bench_mlp_workload_on_the_vectorized_engine():
    conf = bench_scale.scale_config({"algorithm": "fedper", "num_clients": 10_000, "clients_per_round": 1_000,
                                     "rounds": 5, "seed": 0, "device": "cpu"})
    assert (conf.run.engine, conf.run.algorithms, conf.data.num_clients, conf.data.val_fraction) == (
        "vectorized", ("fedper",), 10_000, 0.0)
    assert (conf.model.name, conf.synthetic.samples_per_client) == ("mlp", 267)
    t = conf.train
    assert (t.clients_per_round, t.batch_size, t.local_epochs, t.lr, t.rounds, t.eval_every) == (1_000, 20, 1, 0.05, 5, 5)
