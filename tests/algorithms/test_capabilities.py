"""Every registered algorithm's declared capabilities (core/algorithm.py), checked against its behaviour.

Parametrized over REGISTRY, filtered by what each algorithm declares, never by name:
- server_step "mean" / "mean+optimizer": the server state after `aggregate(server, uploads)` equals the one
  after `aggregate(server, {one upload: their weighted mean, their summed weight})`, bit for bit (torch.equal
  on every key of params and extra). Bit for bit, not merely within rounding: `weighted_mean` computes the mean
  of the real uploads once, in float64, and the one-upload mean adds its only upload with alpha = W / W = 1.0
  exactly, so both server steps start from the same bits and run the same arithmetic. "mean" algorithms also
  equal `fedavg_aggregate`. "custom" ones really need each upload (their server state differs or the
  one-upload round is refused), so no algorithm is refused by DP/SecAgg that could take the mean.
- per_sample_risk: True ones run one round of `client_update` under DP-SGD (privacy/dpsgd.SampleLevel, which
  refuses any local_sgd objective other than the per-sample empirical risk); False ones are refused by
  `check_dpsgd` with the reason they declare.
- communicates: among algorithms that train on the clients' own data (`federated`), False ones broadcast and
  upload no tensor and True ones send something (the pooled `centralized` runs no client protocol: its 0 bytes
  are checked end to end in tests/cli/test_cli.py).
The uploads come from a real round after a first one, so server optimizers have non-zero moments.
"""

from __future__ import annotations

import pytest
import torch
from toy import classification_task, federation

from fedarena import config as cfg
from fedarena.algorithms import REGISTRY
from fedarena.core.algorithm import MEAN_STEPS, fedavg_aggregate
from fedarena.core.params import clone, weighted_mean
from fedarena.core.rng import torch_rng
from fedarena.core.types import FedarenaError, ServerState, Upload
from fedarena.privacy.dpsgd import DPSGD, SampleLevel, check_dpsgd

CLIENTS = (0, 1, 2)


def names(keep):
    return sorted(n for n, cls in REGISTRY.items() if keep(cls))


@pytest.fixture(scope="module")
def toy():
    data = federation([13, 20, 31], [4, 4, 4])  # unequal weights
    return data, classification_task(data, batch_size=4)


def start(algo, task):
    full = task.init_params(torch_rng(0, "init"))
    server = algo.init_server(clone({k: v for k, v in full.items() if not algo.personal(k)}))
    return server, {c: algo.init_client(clone(full)) for c in CLIENTS}


def train(algo, task, data, server, states, rnd):
    """One round of client work on every client: (broadcasts, uploads, new states)."""
    b, uploads, new = {}, {}, {}
    for c in CLIENTS:
        b[c] = algo.broadcast(server, c)
        uploads[c], new[c] = algo.client_update(task, b[c], states[c], data.client(c), torch_rng(3, "t", rnd, c))
    return b, uploads, new


def second_round(name, toy):
    """The server after one round and the uploads of a second one."""
    data, task = toy
    algo = REGISTRY[name]()
    server, states = start(algo, task)
    _, uploads, states = train(algo, task, data, server, states, 1)
    server = algo.aggregate(server, uploads)
    _, uploads, _ = train(algo, task, data, server, states, 2)
    return algo, server, uploads


def as_mean(uploads):
    ups = [u for u in uploads.values() if u.params]
    total = sum(u.num_samples for u in ups)
    return {0: Upload(params=weighted_mean([u.params for u in ups], [u.num_samples for u in ups]), num_samples=total)}


def same_state(a: ServerState, b: ServerState) -> bool:
    return (a.round == b.round and a.params.keys() == b.params.keys() and a.extra.keys() == b.extra.keys()
            and all(torch.equal(v, b.params[k]) for k, v in a.params.items())
            and all(torch.equal(v, b.extra[k]) for k, v in a.extra.items()))


@pytest.mark.parametrize("name", names(lambda cls: cls.communicates and cls.server_step in MEAN_STEPS))
def test_a_mean_server_step_sees_only_the_weighted_mean(name, toy):
    algo, server, uploads = second_round(name, toy)
    distinct = [u.params for u in uploads.values()]
    assert any(not torch.equal(distinct[0][k], distinct[1][k]) for k in distinct[0])  # a real mean, not a copy
    assert same_state(algo.aggregate(server, uploads), algo.aggregate(server, as_mean(uploads)))
    if algo.server_step == "mean":
        assert same_state(algo.aggregate(server, uploads), fedavg_aggregate(algo, server, uploads))


@pytest.mark.parametrize("name", names(lambda cls: cls.server_step == "mean+optimizer"))
def test_a_server_optimizer_moves_the_model_off_the_mean(name, toy):
    """The optimizer step exists: with its defaults, the new model is not FedAvg's mean (pFedMe at beta = 1
    is FedAvg's on purpose: its step is (1 - beta) x + beta mean, so it is checked at beta = 0.5)."""
    algo, server, uploads = second_round(name, toy)
    if hasattr(algo, "beta") and algo.beta == 1.0:
        algo = type(algo)(beta=0.5)
    new, mean = algo.aggregate(server, uploads), fedavg_aggregate(algo, server, uploads)
    assert any(not torch.equal(new.params[k], mean.params[k]) for k in mean.params)


@pytest.mark.parametrize("name", names(lambda cls: cls.server_step == "custom"))
def test_a_custom_server_step_needs_each_upload(name, toy):
    algo, server, uploads = second_round(name, toy)
    try:
        reduced = algo.aggregate(server, as_mean(uploads))
    except (FedarenaError, KeyError) as exc:  # refused: e.g. IFCA's upload names no cluster
        assert str(exc)
        return
    assert not same_state(algo.aggregate(server, uploads), reduced)


@pytest.mark.parametrize("name", names(lambda cls: cls.per_sample_risk))
def test_per_sample_risk_algorithms_train_under_dp_sgd(name, toy):
    data, task = toy
    algo = REGISTRY[name]()
    check_dpsgd(cfg.PrivacyConfig(sgd_noise=1.0, sgd_clip=1.0), algo, cfg.ModelConfig())
    server, states = start(algo, task)
    sample = SampleLevel(DPSGD(noise_multiplier=1.0, clip=1.0))
    b = algo.broadcast(server, 0)
    upload, state = sample.client_update(algo, task, b, states[0], data.client(0), torch_rng(3, "t", 1, 0), 1, 0)
    assert sample.steps[(1, 0)] >= 1 and 0 < sample.rates[0] <= 1
    plain_upload, plain_state = algo.client_update(task, b, states[0], data.client(0), torch_rng(3, "t", 1, 0))
    private, plain = {**upload.params, **state.params}, {**plain_upload.params, **plain_state.params}
    assert private.keys() == plain.keys() and plain
    assert any(not torch.equal(private[k], plain[k]) for k in plain)  # noised DP-SGD, not plain SGD


@pytest.mark.parametrize("name", names(lambda cls: not cls.per_sample_risk))
def test_other_algorithms_are_refused_by_dp_sgd_with_their_reason(name):
    algo = REGISTRY[name]()
    assert algo.not_per_sample
    with pytest.raises(FedarenaError, match="does not fit " + name) as refused:
        check_dpsgd(cfg.PrivacyConfig(sgd_noise=1.0, sgd_clip=1.0), algo, cfg.ModelConfig())
    assert algo.not_per_sample in str(refused.value)


@pytest.mark.parametrize("name", names(lambda cls: cls.federated))  # pooled (centralized): tests/cli/test_cli.py, 0 bytes
def test_communicates_is_whether_anything_crosses_the_network(name, toy):
    data, task = toy
    algo = REGISTRY[name]()
    server, states = start(algo, task)
    b, uploads, _ = train(algo, task, data, server, states, 1)
    assert any(m.params or m.extra for m in [*b.values(), *uploads.values()]) == algo.communicates
