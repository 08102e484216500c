"""Privacy in the round loop: secure aggregation gives FedAvg's aggregate, DP-FedAvg's server step and
accounting, the target-epsilon stop, and refusals of what cannot hold together."""

import dataclasses
import math

import pyarrow.parquet as pq
import pytest
import torch
from running import run_loop

from fedarena import config as cfg
from fedarena.algorithms import REGISTRY
from fedarena.core.types import FedarenaError, ServerState, Upload
from fedarena.experiments.compare import prepare, run_compare
from fedarena.privacy import accountant as acc
from fedarena.privacy import dp
from fedarena.privacy.checks import check
from fedarena.privacy.round import Privacy

N, PER_ROUND, ROUNDS = 12, 4, 3


def make_config(**privacy):
    return cfg.build(None, {
        "data": {"name": "digits", "partition": "dirichlet", "alpha": 0.5, "num_clients": N},
        "train": {"rounds": ROUNDS, "clients_per_round": PER_ROUND}, "model": {"name": "mlp", "hidden": 16},
        "run": {"algorithms": "fedavg", "seed": 5, "engine": "reference"}, "privacy": privacy}, [])


def train(name, config):
    p = prepare(config)
    algo = REGISTRY[name]()
    size = max(p.data.train_offsets[i + 1] - p.data.train_offsets[i] for i in range(N))
    privacy = Privacy.build(config.privacy, algo, N, PER_ROUND, config.run.seed, size)
    return run_loop(algo, p.task, p.data, rounds=ROUNDS, clients_per_round=PER_ROUND, eval_every=ROUNDS,
                         seed=config.run.seed, privacy=privacy)


@pytest.mark.parametrize("name", ["fedavg", "fedper"])
def test_secure_aggregation_gives_the_plain_aggregate(name):
    plain, masked = train(name, make_config()), train(name, make_config(secagg=True))
    for k, v in plain.server.params.items():
        assert torch.allclose(v, masked.server.params[k], atol=1e-5), k
    info = masked.privacy.summary(ROUNDS)["secagg"]
    assert info["survivors"] == PER_ROUND and info["seeded_test_mode"] is False
    shared = sum(v.numel() for v in masked.server.params.values())
    # only shared keys (+ the weight) are masked: 4 bytes each with a 32-bit modulus, plus a small header
    assert 4 * (shared + 1) * PER_ROUND <= info["masked_up_bytes"] <= 2 * 4 * (shared + 1) * PER_ROUND
    if name == "fedper":
        assert not any(k.startswith("head") for k in masked.server.params)


def test_central_dp_is_the_fixed_denominator_mean_of_clipped_updates():
    config = make_config(dp_clip=1.0, dp_noise=0.0, sampling="fixed")
    algo = REGISTRY["fedavg"]()
    privacy = Privacy.build(config.privacy, algo, N, PER_ROUND, 0, 10)
    ref = {"w": torch.zeros(2)}
    ups = {0: Upload(params={"w": torch.tensor([3.0, 4.0])}, num_samples=5),  # norm 5 -> clipped to 1
           1: Upload(params={"w": torch.tensor([0.3, 0.4])}, num_samples=50)}  # norm 0.5 -> kept
    out = privacy.aggregate(algo, ServerState(params=ref), ups, 1)
    assert torch.allclose(out.params["w"], torch.tensor([0.6 + 0.3, 0.8 + 0.4]) / PER_ROUND, atol=1e-6)


def _skellam_round(noise: float, bits: int = 32):
    config = make_config(dp_clip=1.0, dp_noise=noise, secagg=True, secagg_bits=bits)
    algo = REGISTRY["fedavg"]()
    privacy = Privacy.build(config.privacy, algo, N, PER_ROUND, 0, 10, shared_dim=2)
    ref = {"w": torch.zeros(2)}
    ups = {c: Upload(params={"w": torch.tensor(w)}, num_samples=5)
           for c, w in enumerate(([3.0, 4.0], [0.3, 0.4], [-0.1, 0.2], [0.0, -0.5]))}  # the first clipped to norm 1
    return privacy, privacy.aggregate(algo, ServerState(params=ref), ups, 1).params["w"]


def test_central_dp_under_secagg_is_the_clipped_mean_plus_client_side_skellam_noise():
    privacy, without_noise = _skellam_round(0.0)
    scale, l2 = privacy.skellam
    expected = torch.tensor([0.6 + 0.3 - 0.1, 0.8 + 0.4 + 0.2 - 0.5]) / PER_ROUND  # DP-FedAvg's fixed denominator
    assert torch.allclose(without_noise, expected, atol=1 / scale)  # only the integer grid's rounding
    assert privacy.summary(1)["accountant"].startswith("rdp (Skellam") and privacy.summary(1)["secagg"]["survivors"] == 4
    privacy, noisy = _skellam_round(1.0)
    assert not torch.allclose(noisy, expected, atol=1e-3)  # the clients' shares reached the sum
    scale, l2 = privacy.skellam
    l1 = privacy.accountant.l1_sensitivity
    assert (l2, l1) == dp.skellam_sensitivity(1.0, scale, 2)
    direct = acc.AccountantConfig(1.0, population=N, per_round=PER_ROUND, mechanism="skellam", l2_sensitivity=l2,
                                  l1_sensitivity=l1)
    assert 0 < privacy.epsilon(3) == acc.epsilon_for(direct, 3) < math.inf
    # against the server, who knows who took part: no amplification, over the one round each client made
    unsampled = acc.AccountantConfig(1.0, sampling_probability=1.0, mechanism="skellam", l2_sensitivity=l2,
                                     l1_sensitivity=l1)
    summary = privacy.summary(1)
    assert summary["epsilon_vs_server"] == acc.epsilon_for(unsampled, 1) > summary["epsilon"]


def test_skellam_noise_of_the_secure_sum_has_the_calibrated_variance():
    """Many clients' encodings summed: the noise has std z L2 sqrt(n / (t - 1)) per coordinate (each share is
    Sk(0, mu / (t - 1)), so any t - 1 of them carry the accounted mu)."""
    from fedarena.privacy.encoding import ClientPrivacy, encode_update
    from fedarena.privacy.fixedpoint import centered_lift

    scale, n, t, z = 1000.0, 4, 3, 0.5
    l2, _ = dp.skellam_sensitivity(1.0, scale, 2000)
    cp = ClientPrivacy(round=1, dp_clip=0.0, dp_noise=0.0, secagg=True, clients=n, max_weight=10, fp_clip=10.0,
                       bits=32, threshold=t, neighbours=0, skellam_clip=1.0, skellam_scale=scale,
                       skellam_variance=(z * l2) ** 2)
    zero = {"w": torch.zeros(2000)}
    total = sum(centered_lift(encode_update(zero, 5, cp, dp.SeededNoise(torch.Generator().manual_seed(c))), 32)
                for c in range(n))
    got = float(torch.from_numpy(total).double().std())
    assert got == pytest.approx(z * l2 * (n / (t - 1)) ** 0.5, rel=0.05)


def test_too_narrow_a_modulus_for_the_skellam_grid_is_refused():
    with pytest.raises(FedarenaError, match="secagg_bits=8 leaves no integer resolution"):
        _skellam_round(1.0, bits=8)


def test_reported_epsilon_is_dp_accountings_and_the_target_stops_training(tmp_path):
    config = make_config(dp_clip=1.0, dp_noise=1.0)
    summary = run_compare(config, tmp_path / "a")
    got = summary["runs"][0]["privacy"]
    direct = acc.epsilon(1.0, population=N, per_round=PER_ROUND, rounds=ROUNDS, delta=1e-5)
    assert got["epsilon"] == direct and got["accountant"] == "rdp" and got["sampling"] == "poisson"
    assert summary["runs"][0]["history"][-1]["epsilon"] == direct
    rows = pq.read_table(tmp_path / "a" / "metrics.parquet", columns=["round", "epsilon"]).to_pylist()
    per_round = {r["round"]: r["epsilon"] for r in rows}  # every round, the same on each of its rows
    assert len({(r["round"], r["epsilon"]) for r in rows}) == ROUNDS and per_round[ROUNDS] == direct
    assert per_round[1] == acc.epsilon(1.0, population=N, per_round=PER_ROUND, rounds=1, delta=1e-5) < direct
    target = acc.epsilon(1.0, population=N, per_round=PER_ROUND, rounds=2, delta=1e-5) * 1.001
    limited = run_compare(make_config(dp_clip=1.0, dp_noise=1.0, target_epsilon=target), tmp_path / "b")
    run = limited["runs"][0]
    assert run["rounds"] == 2 and run["privacy"]["epsilon"] <= target


def test_poisson_sampling_is_per_client_and_seeded():
    config = make_config(dp_clip=1.0, dp_noise=1.0)
    privacy = Privacy.build(config.privacy, REGISTRY["fedavg"](), N, PER_ROUND, 3, 10)
    picks = [privacy.sample(r, list(range(N)), []) for r in range(1, 200)]
    assert picks[0] == privacy.sample(1, list(range(N)), [])
    assert privacy.sample(1, [c for c in range(N) if c != 4], []) == [c for c in picks[0] if c != 4]
    assert abs(sum(map(len, picks)) / len(picks) - PER_ROUND) < 0.5  # E|S| = qN


@pytest.mark.parametrize("name, settings, message", [
    ("scaffold", {"dp_clip": 1.0, "dp_noise": 1.0}, "not a weighted mean"),
    ("ifca", {"secagg": True}, "not a weighted mean"),
    ("fedavg", {"secagg": True, "dp_clip": 1.0, "dp_noise": 1.0, "accountant": "pld"}, "Skellam.*poisson"),
])
def test_impossible_combinations_are_refused(name, settings, message):
    config = make_config(**settings)
    with pytest.raises(FedarenaError, match=message):
        check(config.privacy, REGISTRY[name](), config.model)


@pytest.mark.parametrize("settings", [{"secagg": True}, {"dp_clip": 1.0, "dp_noise": 1.0}])
def test_a_server_optimizer_after_the_mean_is_accepted(settings):
    """FedAdam's server step reads only the (noised / secure) mean: DP and SecAgg accept it (server_step
    "mean+optimizer"); tests/algorithms/test_capabilities.py checks that declaration against behaviour."""
    config = make_config(**settings)
    check(config.privacy, REGISTRY["fedadam"](), config.model)


def test_bad_privacy_settings_are_refused():
    for bad in ({"dp_noise": 1.0}, {"dp_clip": 1.0, "sampling": "fixed", "accountant": "pld"},
                {"secagg": True, "secagg_neighbours": 3}, {"target_epsilon": 1.0}):
        with pytest.raises(FedarenaError, match="privacy"):
            make_config(**bad)


def test_shared_integer_batchnorm_counters_are_refused_but_fedbn_passes():
    config = cfg.build(None, {"model": {"name": "mlp", "norm": "bn"}, "privacy": {"secagg": True}}, [])
    with pytest.raises(FedarenaError, match="integer"):
        check(config.privacy, REGISTRY["fedper"](), config.model)
    check(config.privacy, REGISTRY["fedbn"](), config.model)


def test_an_empty_poisson_round_still_adds_central_noise():
    config = make_config(dp_clip=1.0, dp_noise=1.0)
    algo = REGISTRY["fedavg"]()
    privacy = Privacy.build(config.privacy, algo, N, PER_ROUND, 0, 10)
    server = ServerState(params={"w": torch.zeros(3)})
    uploads, out = privacy.train_and_aggregate(algo, server, None, 1, {})
    assert uploads == {} and not torch.equal(out.params["w"], server.params["w"])


def test_too_few_clients_for_a_secure_sum_abort_the_round():
    config = make_config(secagg=True)
    algo = REGISTRY["fedavg"]()
    privacy = Privacy.build(config.privacy, algo, N, PER_ROUND, 0, 10)
    server = ServerState(params={"w": torch.zeros(2)})
    ups = {c: Upload(params={"w": torch.ones(2)}, num_samples=5) for c in (0, 1)}
    assert privacy.aggregate(algo, server, ups, 1) is server and privacy.aborted == [1]


def test_secagg_plus_uses_a_threshold_its_neighbourhood_can_meet():
    def six(**privacy):
        return dataclasses.replace(make_config(**privacy), train=dataclasses.replace(
            make_config().train, clients_per_round=6))

    p = prepare(six())
    algo = REGISTRY["fedavg"]()
    runs = []
    for privacy in ({}, {"secagg": True, "secagg_neighbours": 2}):
        config = six(**privacy)
        priv = Privacy.build(config.privacy, algo, N, 6, config.run.seed, 1000)
        runs.append(run_loop(algo, p.task, p.data, rounds=2, clients_per_round=6, eval_every=2,
                                  seed=config.run.seed, privacy=priv))
    assert runs[1].privacy.secagg_summary["protocol"] == "SecAgg+"
    for k, v in runs[0].server.params.items():
        assert torch.allclose(v, runs[1].server.params[k], atol=1e-5)


def test_local_dp_epsilon_grows_round_by_round():
    config = make_config(dp_clip=1.0, dp_noise=1.0, dp_mode="local")
    run = train("fedavg", config)
    eps = [run.privacy.epsilon(r) for r in range(1, ROUNDS + 1)]
    assert eps == sorted(eps) and eps[0] < eps[-1]
