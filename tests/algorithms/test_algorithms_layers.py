"""The personalization-layer family: FedPer, LG-FedAvg, FedRep, FedBN.

Hand-checked case: y = h * s * x with MSE, a body scale s (named `body.norm1.weight`, like a
BatchNorm's affine weight, so FedBN's key routing is checkable by hand too) and a head weight h;
s0 = 1, h0 = 0.5, lr 0.1, batch 3, 1 epoch. Client 0 holds (x=1, y=2); client 1 holds three
copies of (x=2, y=-1), so each client takes exactly one full-batch step per epoch.
With r = h s x - y: dL/dh = 2 r s x and dL/ds = 2 r h x.
  client 0: r = 0.5 - 2 = -1.5, dh = -3, ds = -1.5  -> h = 0.8,  s = 1.15
  client 1: r = 1 + 1 = 2,      dh = 8,  ds = 4     -> h = -0.3, s = 0.6
  weighted means (1 : 3): s = (1.15 + 3 * 0.6) / 4 = 0.7375, h = (0.8 - 3 * 0.3) / 4 = -0.025
"""

import dataclasses
import logging
import math
from collections import OrderedDict

import pytest
import torch
from running import run_loop
from torch import nn
from toy import classification_task, federation

from fedarena import config as cfg
from fedarena.algorithms import REGISTRY
from fedarena.core.params import weighted_mean
from fedarena.core.rng import torch_rng
from fedarena.core.types import SGD, ClientData, FedarenaError
from fedarena.tasks import Net, Task

S, H = "body.norm1.weight", "head.weight"
CLIENTS = [
    ClientData(torch.tensor([[1.0]]), torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([[2.0]])),
    ClientData(torch.full((3, 1), 2.0), torch.full((3, 1), -1.0), torch.full((3, 1), 2.0), torch.full((3, 1), -1.0)),
]


def scaled_task() -> Task:
    body = nn.Sequential(OrderedDict(norm1=nn.Linear(1, 1, bias=False)))
    module = Net(body, nn.Linear(1, 1, bias=False))
    module.requires_grad_(False)
    return Task("scaled", module, lambda out, y: ((out - y) ** 2).mean(), SGD(epochs=1, batch_size=3, lr=0.1))


def one_round(algo):
    """One round of both clients; returns (server, uploads, states, task)."""
    task = scaled_task()
    full = {S: torch.tensor([[1.0]]), H: torch.tensor([[0.5]])}
    server = algo.init_server({k: v for k, v in full.items() if not algo.personal(k)})
    uploads, states = {}, {}
    for c, d in enumerate(CLIENTS):
        b = algo.broadcast(server, c)
        uploads[c], states[c] = algo.client_update(task, b, algo.init_client(full), d, torch.Generator().manual_seed(c))
    return algo.aggregate(server, uploads), uploads, states, task


def v(params, key):
    return params[key].item()


def test_fedper_hand_checked():
    # the head stays home (0.8 / -0.3), the body scale is averaged: 0.7375
    algo = REGISTRY["fedper"]()
    server, uploads, states, task = one_round(algo)
    assert [set(u.params) for u in uploads.values()] == [{S}, {S}]
    assert [v(uploads[c].params, S) for c in (0, 1)] == pytest.approx([1.15, 0.6], abs=1e-6)
    assert [v(states[c].params, H) for c in (0, 1)] == pytest.approx([0.8, -0.3], abs=1e-6)
    assert set(server.params) == {S} and v(server.params, S) == pytest.approx(0.7375, abs=1e-6)
    mine = algo.personalize(task, algo.broadcast(server, 0), states[0], CLIENTS[0], None)
    assert (v(mine, S), v(mine, H)) == pytest.approx((0.7375, 0.8), abs=1e-6)
    assert algo.global_model(server) is None


@pytest.mark.parametrize("name", ["lg-fedavg", "fedbn"])
def test_lg_fedavg_and_fedbn_hand_checked(name):
    # the body scale stays home (1.15 / 0.6: LG-FedAvg's local representation, FedBN's norm
    # weight), the head is averaged: -0.025
    algo = REGISTRY[name]()
    server, uploads, states, task = one_round(algo)
    assert [set(u.params) for u in uploads.values()] == [{H}, {H}]
    assert [v(states[c].params, S) for c in (0, 1)] == pytest.approx([1.15, 0.6], abs=1e-6)
    assert set(server.params) == {H} and v(server.params, H) == pytest.approx(-0.025, abs=1e-6)
    mine = algo.personalize(task, algo.broadcast(server, 1), states[1], CLIENTS[1], None)
    assert (v(mine, S), v(mine, H)) == pytest.approx((0.6, -0.025), abs=1e-6)
    assert algo.global_model(server) is None


def test_fedrep_hand_checked():
    # tau_h = 1: the head first, with s = 1 frozen: client 0 h = 0.8, client 1 h = -0.3 (as above).
    # Then s with the NEW head frozen: client 0: r = 0.8 - 2 = -1.2, ds = 2 * -1.2 * 0.8 = -1.92
    # -> s = 1.192; client 1: r = -0.6 + 1 = 0.4, ds = 2 * 0.4 * -0.3 * 2 = -0.48 -> s = 1.048.
    # Server: (1.192 + 3 * 1.048) / 4 = 1.084.
    server, uploads, states, _ = one_round(REGISTRY["fedrep"](tau_h=1))
    assert [v(uploads[c].params, S) for c in (0, 1)] == pytest.approx([1.192, 1.048], abs=1e-6)
    assert [v(states[c].params, H) for c in (0, 1)] == pytest.approx([0.8, -0.3], abs=1e-6)
    assert v(server.params, S) == pytest.approx(1.084, abs=1e-6)
    assert [u.metrics["steps"] for u in uploads.values()] == [2, 2]
    # tau_h = 2, client 0: second head step r = -1.2, dh = -2.4 -> h = 1.04; then
    # r = 1.04 - 2 = -0.96, ds = 2 * -0.96 * 1.04 = -1.9968 -> s = 1.19968
    _, uploads, states, _ = one_round(REGISTRY["fedrep"](tau_h=2))
    assert (v(states[0].params, H), v(uploads[0].params, S)) == pytest.approx((1.04, 1.19968), abs=1e-6)
    # tau_h = 0: the head is never trained; the body step uses h = 0.5: client 0 s = 1.15
    _, uploads, states, _ = one_round(REGISTRY["fedrep"](tau_h=0))
    assert (v(states[0].params, H), v(uploads[0].params, S)) == pytest.approx((0.5, 1.15), abs=1e-6)


# ---------------------------------------------------------------- reductions to FedAvg (exact)


@pytest.fixture(scope="module")
def toy():
    return federation([30, 20, 40, 25], [10, 10, 10, 10])


def assert_same_run(a, b, global_too=True):
    assert set(a.server.params) == set(b.server.params)
    assert all(torch.equal(a.server.params[k], b.server.params[k]) for k in a.server.params)
    assert [e.per_client_acc for e in a.evaluations] == [e.per_client_acc for e in b.evaluations]
    assert [e.per_client_loss for e in a.evaluations] == [e.per_client_loss for e in b.evaluations]
    assert a.train_loss == b.train_loss and a.ledger.up == b.ledger.up and a.ledger.down == b.ledger.down
    if global_too:
        assert [e.global_acc for e in a.evaluations] == [e.global_acc for e in b.evaluations]


KW = dict(rounds=3, clients_per_round=4, eval_every=1, seed=3)  # full participation


@pytest.mark.parametrize("norm", ["none", "bn"])
@pytest.mark.parametrize(
    "algo",
    [REGISTRY["fedper"](personal_layers=()), REGISTRY["lg-fedavg"](personal_layers=()),
     REGISTRY["fedrep"](personal_layers=()), REGISTRY["fedrep"](tau_h=3, personal_layers=())],
    ids=["fedper", "lg-fedavg", "fedrep", "fedrep-tau3"],
)
def test_empty_personal_set_is_fedavg_bit_for_bit(algo, norm, toy):
    # FedRep: with no personal key the head phase has nothing to train and is skipped for any tau_h
    task = classification_task(toy, norm=norm)
    fedavg = run_loop(REGISTRY["fedavg"](), task, toy, **KW)
    assert_same_run(fedavg, run_loop(algo, task, toy, **KW))


def test_fedbn_without_batchnorm_is_fedavg_and_warns_once(toy, caplog):
    # a new client too: its onboarding calls init_client again, still one warning for the run
    task = classification_task(toy, norm="none")
    fedavg = run_loop(REGISTRY["fedavg"](), task, toy, **KW, new_clients=[3])
    with caplog.at_level(logging.WARNING):
        fedbn = run_loop(REGISTRY["fedbn"](), task, toy, **KW, new_clients=[3])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "fedbn" in warnings[0] and "model.norm=bn" in warnings[0]
    assert_same_run(fedavg, fedbn, global_too=False)  # FedBN reports no global model
    assert fedbn.evaluations[-1].global_acc is None


def test_personal_layers_that_match_nothing_warn(toy, caplog):
    task = classification_task(toy)
    with caplog.at_level(logging.WARNING):
        run_loop(REGISTRY["fedper"](personal_layers=("heda.*",)), task, toy, **KW)
        run_loop(REGISTRY["fedper"](personal_layers=()), task, toy, **KW)  # FedAvg on purpose: silent
    assert len([r for r in caplog.records if "match no key" in r.getMessage()]) == 1


# ---------------------------------------------------------------- FedBN with BatchNorm layers


def test_fedbn_keeps_every_batchnorm_key_local(toy):
    task = classification_task(toy, norm="bn")
    algo = REGISTRY["fedbn"]()
    full = task.init_params(torch_rng(0, "init"))
    norm_keys = {k for k in full if k.startswith("body.norm")}
    assert {k.rsplit(".", 1)[1] for k in norm_keys} >= {"weight", "bias", "running_mean", "running_var"}
    server = algo.init_server({k: t for k, t in full.items() if k not in norm_keys})
    uploads, states = {}, {}
    for c in range(toy.num_clients):
        b = algo.broadcast(server, c)
        assert not set(b.params) & norm_keys
        uploads[c], states[c] = algo.client_update(task, b, algo.init_client(full), toy.client(c), torch_rng(0, "c", c))
        assert not set(uploads[c].params) & norm_keys and set(states[c].params) == norm_keys
    new = algo.aggregate(server, uploads)
    assert set(new.params) == set(full) - norm_keys
    mean = weighted_mean([u.params for u in uploads.values()], [u.num_samples for u in uploads.values()])
    assert all(torch.equal(new.params[k], mean[k]) for k in mean)
    for k in norm_keys - {"body.norm1.num_batches_tracked", "body.norm2.num_batches_tracked"}:
        assert not torch.equal(states[0].params[k], states[1].params[k]), k  # each client its own BN
    mine = algo.personalize(task, algo.broadcast(new, 2), states[2], toy.client(2), None)
    assert all(torch.equal(mine[k], states[2].params[k]) for k in norm_keys)


def test_fedbn_full_run_never_sends_a_batchnorm_key(toy):
    task = classification_task(toy, norm="bn")
    run = run_loop(REGISTRY["fedbn"](), task, toy, **KW)
    assert not any(k.startswith("body.norm") for k in run.server.params)
    assert all(any(k.startswith("body.norm") for k in s.params) for s in run.states.values())
    assert run.evaluations[-1].personal_acc_mean > 0.5


def test_fedbn_undoes_a_per_client_affine_feature_shift():
    # FedBN's setting, feature shift: the same task seen through different "scanners". Client i sees
    # a_i x + b_i; a BatchNorm after the first layer removes a_i and b_i per client, but only if its
    # statistics and affine parameters are the client's own (FedBN), not averaged (FedAvg).
    data = federation([40] * 6, [20] * 6, seed=1)
    xs, xt = data.x_train.clone(), data.x_test.clone()
    for i, (a, b) in enumerate(zip([0.2, 5.0, 1.0, 0.3, 3.0, 0.5], [3.0, -3.0, 0.0, -2.0, 2.0, 4.0])):
        for x, off in ((xs, data.train_offsets), (xt, data.test_offsets)):
            x[off[i] : off[i + 1]] = a * x[off[i] : off[i + 1]] + b
    data = dataclasses.replace(data, x_train=xs, x_test=xt)
    task = classification_task(data, norm="bn", lr=0.05)
    kw = dict(rounds=10, clients_per_round=6, eval_every=10, seed=0)
    fedavg = run_loop(REGISTRY["fedavg"](), task, data, **kw).evaluations[-1]
    fedbn = run_loop(REGISTRY["fedbn"](), task, data, **kw).evaluations[-1]
    assert fedbn.personal_acc_mean > fedavg.personal_acc_mean + 0.15  # measured: 0.78 vs 0.52
    assert fedbn.personal_acc_worst10 > fedavg.personal_acc_worst10 + 0.3  # measured: 0.70 vs 0.25


# ---------------------------------------------------------------- FedRep specifics and validation


def test_fedrep_onboarding_fits_only_the_head(toy):
    task = classification_task(toy, norm="none")
    algo = REGISTRY["fedrep"](tau_h=2)
    full = task.init_params(torch_rng(0, "init"))
    server = algo.init_server({k: t for k, t in full.items() if not algo.personal(k)})
    b = algo.broadcast(server, 0)
    result = algo.onboard(task, b, algo.init_client(full), toy.client(0), torch.Generator().manual_seed(0))
    assert all(torch.equal(result.after[k], b.params[k]) for k in b.params)  # representation frozen
    assert not torch.equal(result.after["head.weight"], full["head.weight"])
    assert result.steps == 2 * math.ceil(toy.client(0).num_train / task.sgd.batch_size)


def test_defaults_and_validation():
    assert REGISTRY["fedper"]().personal.patterns == ("head.*",)
    assert REGISTRY["fedrep"]().personal.patterns == ("head.*",) and REGISTRY["fedrep"]().tau_h == 10
    assert REGISTRY["lg-fedavg"]().personal.patterns == ("body.*",)
    assert REGISTRY["fedbn"]().personal.patterns == ("body.norm*",)
    with pytest.raises(FedarenaError, match="fedrep.tau_h"):
        REGISTRY["fedrep"](tau_h=-1)
    for name in ("fedper", "fedrep", "lg-fedavg"):
        with pytest.raises(FedarenaError, match=f"{name}.personal_layers"):
            REGISTRY[name](personal_layers=("",))
        with pytest.raises(FedarenaError, match=f"{name}.personal_layers"):
            REGISTRY[name](personal_layers="head.*")


def test_personal_layers_from_config():
    algo = cfg.replace_fields(REGISTRY["fedper"](), {"personal_layers": "head.*, body.fc2.*"}, "fedper")
    assert algo.personal.patterns == ("head.*", "body.fc2.*") and algo.personal("body.fc2.bias")
    assert cfg.replace_fields(REGISTRY["lg-fedavg"](), {"personal_layers": []}, "lg-fedavg").personal_layers == ()
