"""Bench pieces that can be checked without timing anything."""

from fedarena.bench import WORKLOADS, _macs_per_sample, _quantile, _speedups, flower_sim_status
from fedarena.core.types import SGD
from fedarena.tasks import make_task


def test_macs_from_layer_shapes():
    mlp = make_task("mlp", (60,), 10, SGD(), hidden=200)
    assert _macs_per_sample(mlp, (60,)) == 60 * 200 + 200 * 200 + 200 * 10
    cnn = make_task("cnn", (1, 8, 8), 10, SGD())
    # conv1: 8x8 outputs x 25 x 1 x 32; conv2: 4x4 x 25 x 32 x 64; fc3: 256 x 512; head: 512 x 10
    assert _macs_per_sample(cnn, (1, 8, 8)) == 64 * 25 * 32 + 16 * 25 * 32 * 64 + 256 * 512 + 512 * 10


def test_speedups_and_quantile():
    engines = {"reference": {"available": True, "ms_per_round_median": 300.0},
               "vectorized": {"available": True, "ms_per_round_median": 100.0},
               "flower-sim": {"available": False, "reason": "x"}}
    assert _speedups(engines) == {"vectorized_vs_reference": 3.0, "vectorized_vs_flower_sim": None}
    assert _quantile([5, 1, 4, 2, 3, 6, 7, 8, 9, 10], 0.9) == 10


def test_default_workloads_are_the_documented_ones():
    assert [w.name for w in WORKLOADS] == ["mlr-10", "mlr-100", "mlp-10", "mlp-100", "cnn-digits"]
    assert flower_sim_status() is not None  # no flower-sim engine yet: reported, not crashed
