"""`fedarena bench`'s workload selection, repeats, generated images and device option, checked without timing
anything (the fake child below returns fixed numbers; the one real run is marked slow and compares accuracies)."""

import numpy as np
import pytest
from typer.testing import CliRunner

from fedarena import config as cfg
from fedarena.cli import app
from fedarena.core.types import FedarenaError
from fedarena.data.npz import load_npz_dir
from fedarena.experiments import bench
from fedarena.experiments.bench_workloads import (
    DEFAULT_ROUNDS,
    QUICK_ROUNDS,
    WORKLOADS,
    config_flags,
    rounds_for,
    select,
    write_images,
)

BY_NAME = {w.name: w for w in WORKLOADS}
runner = CliRunner()


def test_select_by_name_keeps_the_table_order_and_quick_defaults():
    assert [w.name for w in select("lstm-shakespeare, mlr-10", quick=False)] == ["mlr-10", "lstm-shakespeare"]
    assert [w.name for w in select(None, quick=False)] == [w.name for w in WORKLOADS]
    assert [w.name for w in select(None, quick=True)] == ["mlr-100", "mlp-100"]
    assert [w.name for w in select("cnn-28", quick=True)] == ["cnn-28"]  # --workloads wins over --quick's pair


def test_unknown_workload_names_the_valid_ones():
    with pytest.raises(FedarenaError, match="unknown bench workload.*femnist.*valid: mlr-10, .*cnn-28, lstm-shakespeare"):
        select("mlr-10,femnist", quick=False)
    with pytest.raises(FedarenaError, match="names no workload"):
        select(" , ", quick=False)


def test_cli_refuses_an_unknown_workload_with_exit_2_and_writes_nothing(tmp_path):
    out = tmp_path / "bench"
    result = runner.invoke(app, ["bench", "--workloads", "mlp-100,nope", "--out", str(out)])
    assert result.exit_code == 2
    assert "nope" in result.output and "lstm-shakespeare" in result.output
    assert not out.exists()


@pytest.mark.parametrize("args, says", [(["--repeat", "0"], "--repeat"), (["--device", "tpu"], "--device")])
def test_cli_refuses_bad_repeat_and_device(tmp_path, args, says):
    result = runner.invoke(app, ["bench", "--workloads", "mlr-10", "--out", str(tmp_path / "b"), *args])
    assert result.exit_code == 2 and says in result.output
    assert not (tmp_path / "b").exists()


def test_rounds_per_workload():
    lstm, mlr = BY_NAME["lstm-shakespeare"], BY_NAME["mlr-10"]
    assert rounds_for(lstm, None, quick=False) == 5 and rounds_for(BY_NAME["cnn-28"], None, quick=False) == 5
    assert rounds_for(mlr, None, quick=False) == DEFAULT_ROUNDS
    assert rounds_for(lstm, 7, quick=False) == 7 and rounds_for(mlr, 7, quick=True) == 7
    assert rounds_for(lstm, None, quick=True) == QUICK_ROUNDS


def test_aggregate_repeats_is_the_median_of_the_repeats_medians():
    def repeat(ms, first, rss):
        return {"first_round_s": first, "ms_per_round_median": ms, "ms_per_round_p90": 2 * ms, "gflops": 1000 / ms,
                "peak_rss_mb": rss, "final_acc": 0.5, "rounds": 20, "notes": ["n"]}

    three = bench.aggregate_repeats([repeat(100.0, 1.0, 300.0), repeat(300.0, 3.0, 310.0), repeat(200.0, 2.0, 305.0)])
    assert three["ms_per_round_median"] == 200.0
    assert three["ms_per_round_repeats"] == [100.0, 300.0, 200.0]
    assert (three["first_round_s"], three["ms_per_round_p90"], three["gflops"], three["peak_rss_mb"]) == (2.0, 400.0, 5.0, 305.0)
    assert three["rounds"] == 20 and isinstance(three["rounds"], int) and three["final_acc"] == 0.5
    assert three["repeats"] == 3 and three["notes"] == ["n"] and "final_acc_repeats" not in three
    two = bench.aggregate_repeats([repeat(100.0, 1.0, 300.0), {**repeat(140.0, 1.0, 300.0), "final_acc": 0.6}])
    assert two["ms_per_round_median"] == 120.0  # an even count: the mean of the middle two
    assert two["final_acc_repeats"] == [0.5, 0.6]
    one = bench.aggregate_repeats([repeat(100.0, 1.0, 300.0)])
    assert one["ms_per_round_median"] == 100.0 and one["ms_per_round_repeats"] == [100.0]


def test_repeats_run_each_engine_in_its_own_child_taking_turns(monkeypatch):
    calls = []
    medians = iter([100.0, 50.0, 300.0, 70.0, 200.0, 60.0])  # reference, vectorized, reference, ...

    def child(spec, timeout, module="fedarena.experiments.bench"):
        calls.append(spec)
        if spec["kind"] == "peak":
            return {"device": "cpu", "matmul_peak_gflops": 10.0}
        if spec["kind"] == "baseline":
            return {"peak_rss_mb": 100.0}
        return {"first_round_s": 1.0, "ms_per_round_median": next(medians), "ms_per_round_p90": 1.0,
                "peak_rss_mb": 1.0, "gflops": 1.0, "final_acc": 0.5, "rounds": spec["rounds"]}

    monkeypatch.setattr(bench, "_child", child)
    result = bench.run_bench(quick=False, rounds=None, threads=1, workloads="lstm-shakespeare", repeat=3,
                             device="auto", engines=("reference", "vectorized"))
    runs = [c for c in calls if c["kind"] == "run"]
    assert [c["engine"] for c in runs] == ["reference", "vectorized"] * 3
    assert {c["rounds"] for c in runs} == {5} and {c["device"] for c in calls if c["kind"] != "baseline"} == {"auto"}
    (w,) = result["workloads"]
    assert w["name"] == "lstm-shakespeare" and w["rounds"] == 5
    assert w["engines"]["reference"]["ms_per_round_repeats"] == [100.0, 300.0, 200.0]
    assert w["engines"]["reference"]["ms_per_round_median"] == 200.0
    assert w["engines"]["vectorized"]["ms_per_round_median"] == 60.0
    assert w["speedup"]["vectorized_vs_reference"] == pytest.approx(200.0 / 60.0)
    assert result["selected_workloads"] == ["lstm-shakespeare"] and result["repeat"] == 3
    assert result["device"] == "auto" and "memory" not in result  # a selection runs no memory workload


def test_flower_sim_runs_on_every_workload_outside_quick(monkeypatch):
    calls = []

    def child(spec, timeout, module="fedarena.experiments.bench"):
        calls.append(spec)
        return {"matmul_peak_gflops": 1.0, "peak_rss_mb": 1.0, "first_round_s": 1.0, "ms_per_round_median": 1.0,
                "ms_per_round_p90": 1.0, "gflops": 1.0, "final_acc": 0.5, "rounds": 1}

    monkeypatch.setattr(bench, "_child", child)
    monkeypatch.setattr(bench, "flower_sim_status", lambda: None)
    bench.run_bench(quick=False, rounds=2, threads=1, workloads="cnn-28,lstm-shakespeare")
    assert [c["workload"]["name"] for c in calls if c.get("engine") == "flower-sim"] == ["cnn-28", "lstm-shakespeare"]


def test_generated_images_are_deterministic_npz_clients(tmp_path):
    write_images(tmp_path / "a", seed=3, num_clients=3, train=70, test=62)
    write_images(tmp_path / "b", seed=3, num_clients=3, train=70, test=62)
    write_images(tmp_path / "c", seed=4, num_clients=3, train=70, test=62)
    with np.load(tmp_path / "a" / "train" / "writer-01.npz") as f:
        x, y = f["x"], f["y"]
    assert x.shape == (70, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    assert set(y.tolist()) == set(range(62))
    for split in ("train", "test"):
        for client in ("writer-00", "writer-02"):
            a, b, c = (np.load(tmp_path / d / split / f"{client}.npz") for d in "abc")
            assert np.array_equal(a["x"], b["x"]) and np.array_equal(a["y"], b["y"])
            assert not np.array_equal(a["x"], c["x"])
    data = load_npz_dir(tmp_path / "a")
    assert data.num_clients == 3 and data.input_shape == (1, 28, 28) and data.num_classes == 62
    assert data.client_ids == ("writer-00", "writer-01", "writer-02")
    assert data.train_offsets == (0, 70, 140, 210)


def test_workload_configs_build():
    cnn = cfg.build(None, config_flags(BY_NAME["cnn-28"], "npz-dir:/x", 0, 5, "vectorized", "auto"), [])
    assert (cnn.model.name, cnn.model.hidden, cnn.data.val_fraction, cnn.run.device) == ("cnn", 2048, 0.0, "auto")
    assert (cnn.train.clients_per_round, cnn.train.batch_size, cnn.train.local_epochs) == (5, 20, 1)
    lstm = cfg.build(None, config_flags(BY_NAME["lstm-shakespeare"], "shakespeare", 0, 5, "reference", "cpu"), [])
    assert (lstm.model.name, lstm.data.num_clients, lstm.model.hidden) == ("lstm", 98, 200)  # every role; LEAF's 256
    assert (lstm.train.batch_size, lstm.train.lr, lstm.train.clients_per_round, lstm.train.rounds) == (10, 0.8, 10, 5)


def test_device_facts_on_cpu():
    assert bench.device_facts("cpu") == {"device": "cpu"}


@pytest.mark.slow
def test_cnn_28_one_round_gives_the_same_accuracy_on_both_in_process_engines():
    """A real bench of cnn-28 (one round, ~1-2 min on 2 cores). Accuracies agree to one test sample per client
    (tests/sim's tolerance: float32 sums in another order), here on the mean over the 10 clients of 100 tests."""
    result = bench.run_bench(quick=False, rounds=1, threads=2, workloads="cnn-28", engines=("reference", "vectorized"))
    (w,) = result["workloads"]
    ref, vec = w["engines"]["reference"], w["engines"]["vectorized"]
    assert ref["available"] and vec["available"], (ref, vec)
    assert ref["final_acc"] > 1 / 62  # it learned something in one round
    assert abs(ref["final_acc"] - vec["final_acc"]) <= 1 / BY_NAME["cnn-28"].test_per_client


def test_table_title_names_each_workloads_rounds_the_repeats_and_the_device():
    from fedarena.cli.tables import _bench_title

    machine = {"torch_threads": 2, "matmul_peak_gflops": 50.0, "device": "cuda:0", "device_name": "NVIDIA H100"}
    result = {"machine": machine, "repeat": 3, "workloads": [{"name": "mlr-10", "rounds": 20},
                                                             {"name": "cnn-28", "rounds": 5}]}
    assert _bench_title(result) == ("rounds mlr-10 20, cnn-28 5 · median of 3 repeats · 2 torch threads · NVIDIA H100 · "
                                    "matmul peak 50.0 GFLOP/s")
    one = {"machine": {**machine, "device": "cpu", "device_name": None}, "workloads": [{"name": "cnn-28", "rounds": 5}]}
    assert _bench_title(one) == "5 rounds · 2 torch threads · cpu · matmul peak 50.0 GFLOP/s"
