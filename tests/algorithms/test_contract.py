"""The algorithm contract, checked for every registered algorithm."""

import dataclasses
import json

import pytest
import torch
from running import run_loop
from toy import classification_task, federation

from fedarena.algorithms import REGISTRY
from fedarena.core import codec
from fedarena.core.algorithm import FAMILIES
from fedarena.core.codec import decode, encode
from fedarena.core.params import clone
from fedarena.core.rng import torch_rng
from fedarena.core.types import Broadcast, ClientState, Upload

ALGOS = sorted(REGISTRY)


@pytest.fixture(scope="module")
def toy():
    data = federation([30, 20, 40, 25], [10, 10, 10, 10])
    return data, classification_task(data)


def run(name, toy, rounds=3):
    data, task = toy
    return run_loop(REGISTRY[name](), task, data, rounds=rounds, clients_per_round=3, eval_every=1, seed=7)


@pytest.mark.parametrize("name", ALGOS)
def test_declares_contract(name):
    algo = REGISTRY[name]()
    assert algo.name == name and algo.family in FAMILIES and algo.paper
    assert dataclasses.is_dataclass(algo)
    for fn in ("init_server", "broadcast", "init_client", "client_update", "aggregate", "personalize", "global_model"):
        assert callable(getattr(algo, fn))
    with pytest.raises(dataclasses.FrozenInstanceError):
        algo.__setattr__("x", 1)


@pytest.mark.parametrize("name", ALGOS)
def test_deterministic(name, toy):
    a, b = run(name, toy), run(name, toy)
    assert [e.per_client_acc for e in a.evaluations] == [e.per_client_acc for e in b.evaluations]
    assert a.ledger.up == b.ledger.up and a.ledger.down == b.ledger.down
    for k in a.server.params:
        assert torch.equal(a.server.params[k], b.server.params[k])


@pytest.mark.parametrize("norm", ["none", "bn"])
@pytest.mark.parametrize("name", ALGOS)
def test_inputs_unchanged_and_no_personal_key_uploaded(name, norm, toy):
    data, _ = toy
    task = classification_task(data, norm=norm)
    algo = REGISTRY[name]()
    full = task.init_params(torch_rng(0, "init"))
    shared = {k: v for k, v in full.items() if not algo.personal(k)}
    server = algo.init_server(clone(shared))
    before_server = clone(server.params)
    state = algo.init_client(clone(full))
    before_state = clone(state.params)
    b = algo.broadcast(server, 0)
    before_b = clone(b.params)
    d = data.client(0)
    before_x = d.x_train.clone()
    upload, new_state = algo.client_update(task, b, state, d, torch.Generator().manual_seed(1))
    algo.personalize(task, b, new_state, d, torch.Generator().manual_seed(2))
    algo.aggregate(server, {0: upload})
    for ref, now in ((before_server, server.params), (before_state, state.params), (before_b, b.params)):
        assert all(torch.equal(ref[k], now[k]) for k in ref)
    assert torch.equal(before_x, d.x_train)
    assert algo.uploads_personal or not any(algo.personal(k) for k in upload.params)
    assert set(upload.params) | set(new_state.params) >= set(full) or not algo.federated


@pytest.mark.parametrize("name", ALGOS)
def test_loss_falls_on_toy_task(name, toy):
    result = run(name, toy, rounds=6)
    first, last = result.evaluations[0], result.evaluations[-1]
    assert sum(last.per_client_loss) < sum(first.per_client_loss)
    assert last.personal_acc_mean > 0.5  # 3 classes: chance is about 1/3


@pytest.mark.parametrize("name", ALGOS)
def test_state_and_messages_survive_encode_decode(name, toy):
    data, task = toy
    algo = REGISTRY[name]()
    full = task.init_params(torch_rng(0, "init"))
    server = algo.init_server({k: v for k, v in full.items() if not algo.personal(k)})
    b = algo.broadcast(server, 0)
    upload, state = algo.client_update(task, b, algo.init_client(full), data.client(0), torch.Generator())
    for msg, kind in ((b, Broadcast), (upload, Upload)):
        back = decode(encode(msg), kind)
        assert set(back.params) == set(msg.params)
        assert all(torch.equal(back.params[k], msg.params[k]) for k in msg.params)
    back_state = decode(encode(Broadcast(params=state.params, extra=state.extra)), Broadcast)
    restored = ClientState(params=back_state.params, extra=back_state.extra)
    assert all(torch.equal(restored.params[k], state.params[k]) for k in state.params)
    if upload.params:
        assert decode(encode(upload), Upload).num_samples == upload.num_samples


def test_fedprox_mu0_equals_fedavg_bit_for_bit(toy):
    data, task = toy
    kw = dict(rounds=3, clients_per_round=3, eval_every=1, seed=3)
    a = run_loop(REGISTRY["fedavg"](), task, data, **kw)
    b = run_loop(REGISTRY["fedprox"](mu=0.0), task, data, **kw)
    for k in a.server.params:
        assert torch.equal(a.server.params[k], b.server.params[k])
    assert [e.per_client_acc for e in a.evaluations] == [e.per_client_acc for e in b.evaluations]


def test_fedprox_mu_changes_result(toy):
    data, task = toy
    kw = dict(rounds=2, clients_per_round=3, eval_every=1, seed=3)
    a = run_loop(REGISTRY["fedavg"](), task, data, **kw)
    b = run_loop(REGISTRY["fedprox"](mu=1.0), task, data, **kw)
    assert any(not torch.equal(a.server.params[k], b.server.params[k]) for k in a.server.params)


def test_fedavg_ft_zero_epochs_is_fedavg(toy):
    data, task = toy
    kw = dict(rounds=2, clients_per_round=3, eval_every=1, seed=3)
    a = run_loop(REGISTRY["fedavg"](), task, data, **kw)
    b = run_loop(REGISTRY["fedavg-ft"](epochs=0), task, data, **kw)
    assert [e.per_client_acc for e in a.evaluations] == [e.per_client_acc for e in b.evaluations]


def test_centralized_is_fedavg_on_one_pooled_client(toy):
    data, task = toy
    pooled = dataclasses.replace(
        data, client_ids=("all",), x_train=data.x_train, y_train=data.y_train,
        train_offsets=(0, data.train_offsets[-1]), test_offsets=(0, data.test_offsets[-1]),
    )
    kw = dict(rounds=2, clients_per_round=1, eval_every=1, seed=5)
    a = run_loop(REGISTRY["centralized"](), task, data, **kw)
    b = run_loop(REGISTRY["fedavg"](), task, pooled, **kw)
    for k in a.server.params:
        assert torch.equal(a.server.params[k], b.server.params[k])
    assert a.ledger.up == {} and a.ledger.down == {}
    assert a.evaluations[-1].global_acc == b.evaluations[-1].global_acc


def test_centralized_pool_excludes_new_clients(toy):
    data, task = toy
    rest = [1, 2, 3]
    pooled = data.pooled(rest)
    assert pooled.num_train == sum(data.client(c).num_train for c in rest)
    only_rest = dataclasses.replace(
        data, client_ids=("rest",), x_train=pooled.x_train, y_train=pooled.y_train,
        train_offsets=(0, pooled.num_train), x_test=pooled.x_test, y_test=pooled.y_test,
        test_offsets=(0, pooled.num_test),
    )
    kw = dict(rounds=2, clients_per_round=1, eval_every=2, seed=5)
    a = run_loop(REGISTRY["centralized"](), task, data, new_clients=[0], **kw)
    b = run_loop(REGISTRY["fedavg"](), task, only_rest, **kw)
    assert all(torch.equal(a.server.params[k], b.server.params[k]) for k in a.server.params)
    assert a.evaluations[-1].clients == rest and a.new_clients["clients"] == ["0"]


def _payload_keys(payload: bytes) -> list[str]:
    if not payload:
        return []
    n = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8 : 8 + n])
    return [name.partition("/")[2] for name in header if name != "__metadata__"]


@pytest.mark.parametrize("name", ALGOS)
def test_no_personal_key_in_the_bytes_the_ledger_counts(name, toy, monkeypatch):
    data, _ = toy
    task = classification_task(data, norm="bn")
    sent = []

    def spy(message):
        payload = real_encode(message)
        sent.append((type(message).__name__, payload))
        return payload

    real_encode = codec.encode
    monkeypatch.setattr(codec, "encode", spy)
    algo = REGISTRY[name]()
    run_loop(algo, task, data, rounds=2, clients_per_round=3, eval_every=2, seed=1)
    assert len(sent) == (0 if not algo.federated else 2 * 2 * 3)
    for kind, payload in sent:
        leaked = [k for k in _payload_keys(payload) if algo.personal(k)]
        if algo.uploads_personal and kind == "Upload":
            continue
        assert not leaked, f"{name} sent personal keys {leaked} in a {kind}"
