"""DP-SGD on `fedarena deploy` (slow: real SuperLink and SuperNodes): each SuperNode trains with DP-SGD and
reports its steps; the server's sample-level epsilons equal the simulator's for the same run (the steps a
client takes do not depend on the noise, which the nodes draw from OS-seeded generators)."""

from __future__ import annotations

import pytest

from fedarena import config as cfg
from fedarena.experiments.compare import run_compare
from fedarena.experiments.deploy import Timeouts
from flower.deploying import deploy_and_reap


@pytest.mark.slow
def test_deployed_dp_sgd_is_accounted_as_in_simulation(tmp_path):
    config = cfg.build(None, {"data": {"num_clients": 3}, "train": {"rounds": 2, "clients_per_round": 2},
                              "run": {"algorithms": "fedavg,fedper", "engine": "reference", "target": 0.5},
                              "privacy": {"sgd_noise": 1.0, "sgd_clip": 1.0}}, [])
    deployed = deploy_and_reap(tmp_path, config, Timeouts(round=120, evaluate=120, start=120))
    simulated = run_compare(config, tmp_path / "sim")
    for got, want in zip(deployed["runs"], simulated["runs"]):
        a, b = got["privacy"]["sample_level"], want["privacy"]["sample_level"]
        assert a["epsilon_max"] == pytest.approx(b["epsilon_max"], rel=1e-12) and a["epsilon_max"] > 0
        assert a["epsilon_median"] == pytest.approx(b["epsilon_median"], rel=1e-12)
        assert a["noise_source"].startswith("os-seeded") and b["noise_source"] == "seeded (simulation only)"
        assert [h["sample_epsilon_max"] for h in got["history"]] == pytest.approx(
            [h["sample_epsilon_max"] for h in want["history"]], rel=1e-12)
