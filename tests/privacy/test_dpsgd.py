"""Sample-level DP-SGD (Opacus) for local training: it trains the right thing on its Poisson lots, clips every
per-sample gradient, adds noise of the right scale, is accounted as dp-accounting and Opacus account it, refuses
what it cannot protect, is deterministic, runs the same on both engines, and reaches summary.json."""

import json
import logging
import math

import dp_accounting
import pytest
import torch
from opacus.accountants import RDPAccountant
from running import run_loop
from torch.func import functional_call, grad, vmap
from toy import classification_task, federation
from typer.testing import CliRunner

from fedarena import config as cfg
from fedarena.algorithms import REGISTRY
from fedarena.cli import app
from fedarena.core.types import SGD, FedarenaError
from fedarena.privacy.checks import check
from fedarena.privacy.dpsgd import DPSGD, SampleLevel, check_dpsgd, dp_sgd, poisson_lots, steps_per_epoch
from fedarena.tasks import make_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blobs(n, features=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    return torch.randn(n, features, generator=g) + y[:, None].float(), y


def mlp(features=6, classes=3, hidden=8, lr=0.5, batch=5):
    task = make_task("mlp", (features,), classes, SGD(1, batch, lr), hidden=hidden)
    return task, task.init_params(torch.Generator().manual_seed(1))


def gen(seed):
    return torch.Generator().manual_seed(seed)


def plain_sgd_on_lots(task, params, trainable, x, y, epochs, lots_seed):
    """Algorithm 1 without clipping or noise: w <- w - lr * (sum of per-sample gradients over the lot) / B."""
    sgd, w = task.sgd, {k: v.clone() for k, v in params.items()}
    sampler = poisson_lots(int(y.shape[0]), sgd.batch_size, gen(lots_seed))
    for _ in range(epochs):
        for idx in sampler:
            if not idx:
                continue
            keys = sorted(trainable)
            leaves = {k: w[k].clone().requires_grad_(True) for k in keys}
            loss = task.loss({**w, **leaves}, x[idx], y[idx]) * len(idx) / sgd.batch_size
            for k, g in zip(keys, torch.autograd.grad(loss, [leaves[k] for k in keys])):
                w[k] = w[k] - sgd.lr * g
    return w


@pytest.mark.parametrize("trainable", ["all", "head"])
def test_without_noise_and_clipping_it_is_sgd_on_the_same_poisson_lots(trainable):
    task, params = mlp()
    x, y = blobs(37)
    keys = task.parameter_names if trainable == "all" else frozenset(k for k in task.parameter_names if "head" in k)
    got, loss, steps = dp_sgd(task, params, keys, x, y, task.sgd, 2, DPSGD(0.0, 1e6), gen(7), gen(8))
    want = plain_sgd_on_lots(task, params, keys, x, y, 2, 7)
    assert steps == 2 * (37 // 5) and loss == loss  # a finite mean loss
    for k in params:
        assert torch.allclose(got[k], want[k], atol=1e-6), k
        if k not in keys:
            assert torch.equal(got[k], params[k]), k  # frozen keys are not touched
    assert any(not torch.equal(got[k], params[k]) for k in keys)


def test_every_per_sample_gradient_is_clipped_to_c_before_the_sum():
    task, params = mlp(lr=1.0, batch=12)
    x, y = blobs(12)
    clip = 0.05
    # q = 1: the one lot is every sample, so the step is -lr * sum_i clip_C(g_i) / n
    got, _, steps = dp_sgd(task, params, task.parameter_names, x, y, task.sgd, 1, DPSGD(0.0, clip), gen(1), gen(2))
    names = sorted(task.parameter_names)

    def sample_loss(p, xi, yi):
        return task.loss_fn(functional_call(task.module, p, (xi[None],)), yi[None])

    per = vmap(grad(sample_loss), in_dims=(None, 0, 0))({k: params[k] for k in names}, x, y)
    norms = torch.sqrt(sum(per[k].reshape(12, -1).pow(2).sum(1) for k in names))
    assert steps == 1 and (norms > clip).all()  # clipping is active for every sample
    factor = (clip / norms).clamp(max=1.0)
    clipped_norms = norms * factor
    assert (clipped_norms <= clip * (1 + 1e-6)).all()
    for k in names:
        step = (factor.reshape(-1, *[1] * (per[k].dim() - 1)) * per[k]).sum(0) / 12
        assert torch.allclose(params[k] - got[k], step, atol=1e-6), k


def test_noise_std_is_sigma_c_over_the_expected_lot_size():
    task, params = mlp(features=64, classes=10, hidden=32, lr=1.0, batch=5)
    x, y = blobs(9, features=64, classes=10)  # q = 5/9: one lot per epoch, expected size 5
    sigma, clip = 1.3, 0.7
    base, _, steps = dp_sgd(task, params, task.parameter_names, x, y, task.sgd, 1, DPSGD(0.0, clip), gen(3), gen(0))
    assert steps == 1
    diffs = []
    for seed in range(4):  # same lot (same lots generator), different noise
        noisy, _, _ = dp_sgd(task, params, task.parameter_names, x, y, task.sgd, 1, DPSGD(sigma, clip), gen(3), gen(seed))
        diffs += [(base[k] - noisy[k]).reshape(-1) for k in params]
    noise = torch.cat(diffs)  # lr * N(0, sigma^2 C^2) / B per coordinate
    assert noise.numel() > 10_000
    assert abs(noise.std().item() / (sigma * clip / 5) - 1) < 0.03
    assert abs(noise.mean().item()) < 0.03 * sigma * clip / 5


def test_epsilon_is_dp_accountings_rdp_and_agrees_with_opacus():
    q, sigma, steps, delta = 5 / 37, 1.1, 7 * 6, 1e-5
    sample = SampleLevel(DPSGD(sigma, 1.0, delta))
    sample.rates = {0: q}
    sample.steps = {(r, 0): 7 for r in range(1, 7)}
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    direct = dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(delta)
    got = sample.epsilons(6)[0]
    assert got == pytest.approx(direct, rel=1e-9)
    opacus = RDPAccountant()
    opacus.history = [(sigma, q, steps)]
    assert got == pytest.approx(opacus.get_epsilon(delta), rel=0.01)
    assert sample.epsilons(3)[0] < got  # per round: fewer steps, smaller epsilon
    assert sample.summary(6)["epsilon_max"] == got and sample.summary(6)["library"].startswith("opacus 1.6")


SETTINGS = cfg.PrivacyConfig(sgd_noise=1.0, sgd_clip=1.0)


@pytest.mark.parametrize("name, reason", [
    ("fedprox", "parameter-dependent"), ("scaffold", "parameter-dependent"), ("ditto", "lambda/2"),
    ("per-fedavg", "meta-gradient"), ("pfedme", "Moreau"), ("apfl", "mixes"), ("ifca", "cluster"), ("mocha", "SDCA"),
])
def test_algorithms_that_do_not_fit_are_refused_with_the_reason(name, reason):
    with pytest.raises(FedarenaError, match=reason):
        check(SETTINGS, REGISTRY[name](), cfg.ModelConfig())


@pytest.mark.parametrize("name", [n for n, cls in REGISTRY.items() if cls.per_sample_risk])
def test_empirical_risk_algorithms_fit(name):
    check_dpsgd(SETTINGS, REGISTRY[name](), cfg.ModelConfig())


def test_batchnorm_and_bad_settings_are_refused():
    with pytest.raises(FedarenaError, match="BatchNorm"):
        check(SETTINGS, REGISTRY["fedbn"](), cfg.ModelConfig(norm="bn"))
    check(cfg.PrivacyConfig(), REGISTRY["fedprox"](), cfg.ModelConfig(norm="bn"))  # off: nothing refused
    for privacy, message in (({"sgd_noise": 1.0}, "sgd_clip > 0"), ({"sgd_clip": 1.0}, "sgd_noise > 0"),
                             ({"sgd_noise": -1.0, "sgd_clip": 1.0}, ">= 0")):
        with pytest.raises(FedarenaError, match=message):
            cfg.build(None, {"privacy": privacy}, [])


def test_steps_reported_from_elsewhere_are_checked_and_accounted():
    """A Flower SuperNode trains with its own SampleLevel and reports (steps, q); the server's accounts them."""
    server, node = SampleLevel(DPSGD(1.0, 1.0)), SampleLevel(DPSGD(1.0, 1.0))
    node.record(1, 7, 5, 0.2)
    node.record(2, 7, 5, 0.2)
    for (rnd, c), n in node.steps.items():
        server.record(rnd, c, n, node.rates[c])
    assert server.epsilons(2) == node.epsilons(2) and server.epsilons(2)[7] > server.epsilons(1)[7] > 0
    for steps, rate in ((0, 0.2), (3, 0.0), (3, 1.5), (True, 0.2), (2.5, 0.2)):
        with pytest.raises(FedarenaError, match="steps must be >= 1"):
            server.record(3, 7, steps, rate)


def test_an_objective_other_than_the_empirical_risk_is_refused_at_run_time():
    data = federation([12, 14], [4, 4])
    task = classification_task(data)
    with pytest.raises(FedarenaError, match="empirical risk"):
        run_loop(REGISTRY["ditto"](), task, data, rounds=1, clients_per_round=2, eval_every=1, seed=0,
                      dpsgd=SampleLevel(DPSGD(1.0, 1.0)))


def train(engine, data, task, name="fedavg", rounds=2):
    return run_loop(REGISTRY[name](), task, data, rounds=rounds, clients_per_round=3, eval_every=rounds, seed=4,
                         engine=engine, dpsgd=SampleLevel(DPSGD(1.0, 1.0)))


@pytest.fixture(scope="module")
def toy():
    data = federation([17, 23, 31], [6, 6, 6], features=6)
    return data, classification_task(data, batch_size=4)


def same_bits(a, b):
    assert a.server.params.keys() == b.server.params.keys()
    assert all(torch.equal(v, b.server.params[k]) for k, v in a.server.params.items())
    for c, s in a.states.items():
        assert all(torch.equal(v, b.states[c].params[k]) for k, v in s.params.items())


@pytest.mark.parametrize("name", ["fedavg", "fedrep"])
def test_same_seed_same_bits_and_steps_are_counted_per_client(toy, name):
    data, task = toy
    a, b = train("reference", data, task, name), train("reference", data, task, name)
    same_bits(a, b)
    assert a.sample_dp.steps == b.sample_dp.steps
    epochs = 1 + (REGISTRY["fedrep"]().tau_h if name == "fedrep" else 0)  # fedrep: head epochs + body epochs
    sizes = [data.train_offsets[i + 1] - data.train_offsets[i] for i in range(3)]
    assert a.sample_dp.steps == {(r, c): epochs * steps_per_epoch(4, sizes[c]) for r in (1, 2) for c in range(3)}
    assert a.sample_dp.rates == {c: 4 / sizes[c] for c in range(3)}
    plain = run_loop(REGISTRY[name](), task, data, rounds=2, clients_per_round=3, eval_every=2, seed=4)
    assert any(not torch.equal(v, plain.server.params[k]) for k, v in a.server.params.items())


def test_vectorized_engine_falls_back_with_a_logged_reason_and_the_same_numbers(toy, caplog):
    data, task = toy
    ref = train("reference", data, task, "fedper")
    with caplog.at_level(logging.WARNING, logger="fedarena.sim.vectorized"):
        vec = train("vectorized", data, task, "fedper")
    assert "DP-SGD" in caplog.text and any("DP-SGD" in n for n in vec.engine["notes"])
    assert vec.engine["batched_sgd_calls"] == 0
    same_bits(ref, vec)
    assert ref.sample_dp.steps == vec.sample_dp.steps
    assert [e.per_client_acc for e in ref.evaluations] == [e.per_client_acc for e in vec.evaluations]


def test_cli_compare_writes_the_sample_level_block(tmp_path):
    runner = CliRunner()
    args = ["compare", "--data", "digits", "--clients", "4", "--clients-per-round", "2", "--rounds", "2", "--model",
            "mlr", "--seed", "1", "--dp-sgd-noise", "1.0", "--dp-sgd-clip", "1.0", "--engine", "reference"]
    result = runner.invoke(app, [*args, "--algorithms", "fedavg,fedper", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for run in summary["runs"]:
        block = run["privacy"]["sample_level"]
        assert block["noise_multiplier"] == 1.0 and block["clip"] == 1.0 and block["delta"] == 1e-5
        assert block["accountant"] == "rdp" and block["library"] == "opacus 1.6.0"
        assert block["epsilon_max"] >= block["epsilon_median"] > 0
        history = [h["sample_epsilon_max"] for h in run["history"]]
        assert 0 < history[0] < history[-1] == block["epsilon_max"]
        assert run["privacy"]["epsilon"] is None and run["privacy"]["dp_mode"] is None  # user-level DP is off
    assert summary["config"]["privacy"]["sgd_noise"] == 1.0
    refused = runner.invoke(app, [*args, "--algorithms", "fedprox", "--out", str(tmp_path / "no")])
    assert refused.exit_code == 2 and "fedprox" in refused.output and not (tmp_path / "no").exists()


def test_user_level_block_is_unchanged_with_dp_sgd_on_too(tmp_path):
    from fedarena.experiments.compare import run_compare

    base = {"data": {"name": "digits", "num_clients": 4}, "train": {"rounds": 2, "clients_per_round": 2},
            "model": {"name": "mlr"}, "run": {"algorithms": "fedavg", "engine": "reference", "seed": 2}}
    user = {"dp_clip": 1.0, "dp_noise": 1.0}
    alone = run_compare(cfg.build(None, {**base, "privacy": user}, []), tmp_path / "a")["runs"][0]["privacy"]
    both = run_compare(cfg.build(None, {**base, "privacy": {**user, "sgd_noise": 1.0, "sgd_clip": 1.0}}, []),
                       tmp_path / "b")["runs"][0]["privacy"]
    assert alone["sample_level"] is None and both["sample_level"]["epsilon_max"] > 0
    assert {k: v for k, v in both.items() if k != "sample_level"} == {k: v for k, v in alone.items() if k != "sample_level"}


def test_uploads_carry_no_training_loss_under_dp_sgd(toy):
    """The loss is computed from the raw samples without clipping or noise: it must not leave the client."""
    data, task = toy
    run = train("reference", data, task)
    assert run.train_loss and all(math.isnan(v) for v in run.train_loss.values())
