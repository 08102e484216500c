"""SCAFFOLD, the server optimizers (FedAvgM, FedAdam, FedYogi, FedAdagrad) and IFCA: hand-checked numbers,
reductions to FedAvg, and bytes.

Hand-checked cases: y = w x, MSE, lr 0.1, batch 1, 1 epoch. Client 0 holds (x=1, y=2); client 1 holds
three copies of (x=2, y=-1); w0 = 0.5. The gradient of (w x - y)^2 is 2 x (w x - y): client 0's is
2 (w - 2), client 1's is 4 (2 w + 1). Plain local SGD (FedAvg) from 0.5 gives 0.8 and -0.492 (steps
-0.3, -0.46, -0.492), and the train-size-weighted mean (1 * 0.8 + 3 * -0.492) / 4 = -0.169.
"""

from dataclasses import replace

import pytest
import torch
from running import run_loop
from toy import classification_task, federation, linear_regression_task

from fedarena.algorithms import REGISTRY
from fedarena.algorithms.ifca import pack
from fedarena.core.rng import torch_rng
from fedarena.core.types import ClientData, ClientState, FedarenaError, ServerState
from fedarena.sim.engine import storage_bytes

KEY = "head.weight"


def data(x, y):
    x = torch.tensor(x).reshape(-1, 1)
    y = torch.tensor(y).reshape(-1, 1)
    return ClientData(x, y, x, y)


CLIENTS = [data([1.0], [2.0]), data([2.0, 2.0, 2.0], [-1.0, -1.0, -1.0])]


def w(t):
    return t.item()


def one_round(algo, task, server, states):
    uploads, new_states = {}, {}
    for c, d in enumerate(CLIENTS):
        b = algo.broadcast(server, c)
        uploads[c], new_states[c] = algo.client_update(task, b, states[c], d, torch.Generator().manual_seed(c))
    return algo.aggregate(server, uploads), uploads, new_states


def start(algo):
    init = {KEY: torch.tensor([[0.5]])}
    return algo.init_server(init), {c: algo.init_client(init) for c in range(2)}


# ---------------------------------------------------------------- SCAFFOLD


def test_scaffold_hand_checked_two_rounds():
    algo, task = REGISTRY["scaffold"](), linear_regression_task()
    server, states = start(algo)
    assert algo.broadcast(server, 0).extra == {}  # c_0 = 0 is not sent
    # round 1: c = c_i = 0, so the local steps are FedAvg's: y = 0.8 and -0.492, x = -0.169.
    # option II: c_0+ = (0.5 - 0.8) / (1 * 0.1) = -3 (= g_0(x) for one step);
    #            c_1+ = (0.5 + 0.492) / (3 * 0.1) = 3.306667 (mean of the gradients 8, 1.6, 0.32)
    server, uploads, states = one_round(algo, task, server, states)
    assert w(uploads[0].params[KEY]) == pytest.approx(0.8, abs=1e-6)
    assert w(uploads[1].params[KEY]) == pytest.approx(-0.492, abs=1e-6)
    assert w(uploads[0].extra["c/" + KEY]) == pytest.approx(-3.0, abs=1e-5)  # Delta c_i = c_i+ - 0
    assert w(states[1].extra["c/" + KEY]) == pytest.approx(3.306667, abs=1e-5)
    assert w(server.params[KEY]) == pytest.approx(-0.169, abs=1e-6)
    # c = (1 * -3 + 3 * 3.306667) / 4 = 1.73 (train-size weighted; both clients heard from: N = 2)
    b = algo.broadcast(server, 0)
    assert w(b.extra["c/" + KEY]) == pytest.approx(1.73, abs=1e-5)
    # round 2, client 0: corrected gradient 2 (-0.169 - 2) - (-3) + 1.73 = 0.392 -> y = -0.2082;
    #   c_0+ = -3 - 1.73 + (-0.169 + 0.2082) / 0.1 = -4.338 (= g_0(x) again)
    # client 1: steps w <- w - 0.1 (4 (2 w + 1) + 1.73 - 3.306667): -0.276133, -0.29756, -0.301845
    # x = (-0.2082 + 3 * -0.301845) / 4 = -0.278434
    server, uploads, states = one_round(algo, task, server, states)
    assert w(uploads[0].params[KEY]) == pytest.approx(-0.2082, abs=1e-5)
    assert w(states[0].extra["c/" + KEY]) == pytest.approx(-4.338, abs=1e-4)
    assert w(uploads[1].params[KEY]) == pytest.approx(-0.301845, abs=1e-5)
    assert w(server.params[KEY]) == pytest.approx(-0.278434, abs=1e-5)
    # c = (1 * -4.338 + 3 * 2.019484) / 4 = 0.430113
    assert w(algo.broadcast(server, 0).extra["c/" + KEY]) == pytest.approx(0.430113, abs=1e-4)


def test_scaffold_server_step_size():
    # x <- x + eta_g (mean y - x) = 0.5 + 2 * (-0.169 - 0.5) = -0.838
    algo, task = REGISTRY["scaffold"](eta_g=2.0), linear_regression_task()
    server, states = start(algo)
    server, _, _ = one_round(algo, task, server, states)
    assert w(server.params[KEY]) == pytest.approx(-0.838, abs=1e-6)


@pytest.fixture(scope="module")
def toy():
    data_ = federation([30, 20, 40, 25], [10, 10, 10, 10])
    return data_, classification_task(data_)


RUN = dict(rounds=3, clients_per_round=4, eval_every=1, seed=3)  # full participation


@pytest.fixture(scope="module")
def runs(toy):
    """Runs shared by several tests (computed once, on demand)."""
    data_, task = toy
    cache = {}

    def get(name, **hyper):
        key = (name, tuple(sorted(hyper.items())))
        if key not in cache:
            cache[key] = run_loop(REGISTRY[name](**hyper), task, data_, **RUN)
        return cache[key]

    return get


def same_run(a, b, a_params=None):
    a_params = a.server.params if a_params is None else a_params
    assert all(torch.equal(a_params[k], b.server.params[k]) for k in b.server.params)
    assert [e.per_client_acc for e in a.evaluations] == [e.per_client_acc for e in b.evaluations]


def test_scaffold_without_control_variates_is_fedavg_bit_for_bit(runs):
    a, b = runs("scaffold", control_variates=False), runs("fedavg")
    same_run(a, b)
    assert a.ledger.up == b.ledger.up and a.ledger.down == b.ledger.down  # nothing extra is sent either
    c = runs("scaffold")
    assert any(not torch.equal(c.server.params[k], b.server.params[k]) for k in b.server.params)


@pytest.mark.parametrize("per_round", [4, 2])
def test_scaffold_c_is_the_weighted_mean_of_the_known_control_variates(toy, per_round):
    data_, task = toy
    algo = REGISTRY["scaffold"]()
    run = run_loop(algo, task, data_, rounds=4, clients_per_round=per_round, eval_every=4, seed=5)
    seen = sorted({c for chosen in run.sampled for c in chosen})
    assert run.server.extra["seen"].sort().values.tolist() == seen
    sizes = {c: data_.client(c).num_train for c in seen}
    c = algo.broadcast(run.server, 0).extra
    assert set(c) == {"c/" + k for k in task.parameter_names}  # trainable keys only
    for name, value in c.items():
        expected = sum(sizes[i] * run.states[i].extra[name].double() for i in seen) / sum(sizes.values())
        assert torch.allclose(value.double(), expected, atol=1e-6)


def test_scaffold_bytes_and_storage(toy, runs):
    _, task = toy
    s, f = runs("scaffold"), runs("fedavg")
    model_bytes = sum(v.numel() * v.element_size() for v in task.init_params(torch_rng(0, "init")).values())
    # one more model's tensor bytes, plus at most a few hundred header bytes naming its tensors
    # (this toy model is so small that headers are a large share: compare differences, not ratios)
    for c in range(4):
        assert s.ledger.down[(1, c)] == f.ledger.down[(1, c)]  # round 1: c = 0 is not sent
        assert model_bytes < s.ledger.down[(2, c)] - f.ledger.down[(2, c)] < model_bytes + 512  # then (x, c)
        for r in (1, 2):
            assert model_bytes < s.ledger.up[(r, c)] - f.ledger.up[(r, c)] < model_bytes + 512  # (y, Delta c_i)
    assert storage_bytes(s.states) == model_bytes  # c_i: one model (no buffers in this model)
    assert storage_bytes(f.states) == 0


def test_scaffold_rejects_bad_eta_g():
    with pytest.raises(FedarenaError, match="scaffold.eta_g"):
        REGISTRY["scaffold"](eta_g=0.0)


# ---------------------------------------------------------------- server optimizers (FedAvgM, FedAdam, FedYogi, FedAdagrad)


def test_fedadam_hand_checked():
    # Delta = -0.169 - 0.5 = -0.669 (FedAvg's mean minus x); m = 0.1 * Delta = -0.0669
    # Adam:    v = 0.99 * 1e-6 + 0.01 * 0.447561 = 0.0044766;  x = 0.5 + 0.01 * m / (sqrt(v) + 1e-3) = 0.490148
    # Yogi:    v = 1e-6 - 0.01 * 0.447561 * sign(1e-6 - 0.447561) = 0.00447661
    # Adagrad: v = 1e-6 + 0.447561 = 0.447562;  x = 0.5 + 0.01 * m / (0.669001 + 1e-3) = 0.499001
    task = linear_regression_task()
    expected = {("fedadam", ()): (0.0044766, 0.490148), ("fedyogi", ()): (0.00447661, 0.490148),
                ("fedadagrad", (("beta1", 0.9), ("eta", 0.01))): (0.447562, 0.499001)}
    for (name, hyper), (v, x) in expected.items():
        algo = REGISTRY[name](**dict(hyper))
        server, states = start(algo)
        assert w(server.extra["v/" + KEY]) == pytest.approx(1e-6)  # v_{-1} = tau^2
        server, _, _ = one_round(algo, task, server, states)
        assert w(server.extra["m/" + KEY]) == pytest.approx(-0.0669, abs=1e-7)
        assert w(server.extra["v/" + KEY]) == pytest.approx(v, abs=1e-9), name
        assert w(server.params[KEY]) == pytest.approx(x, abs=1e-6), name
        assert algo.broadcast(server, 0).extra == {}  # m, v stay on the server


def test_fedadagrad_defaults_hand_checked():
    # beta1 = 0, eta = 0.1: m = Delta = -0.669, v = 1e-6 + 0.447561 = 0.447562,
    # x = 0.5 + 0.1 * -0.669 / (0.669001 + 1e-3) = 0.400149
    algo, task = REGISTRY["fedadagrad"](), linear_regression_task()
    server, states = start(algo)
    server, _, _ = one_round(algo, task, server, states)
    assert w(server.extra["m/" + KEY]) == pytest.approx(-0.669, abs=1e-6)
    assert w(server.extra["v/" + KEY]) == pytest.approx(0.447562, abs=1e-6)
    assert w(server.params[KEY]) == pytest.approx(0.400149, abs=1e-6)


def test_fedavgm_hand_checked():
    # beta = 0.9, eta = 1 (the defaults). Round 1: m = Delta = -0.669, x = -0.169 (FedAvg's).
    # Round 2 FedAvg from -0.169: client 0 -> 0.2648, client 1 -> -0.4338, -0.48676, -0.497352;
    # mean -0.306814, Delta = -0.137814, m = 0.9 * -0.669 - 0.137814 = -0.739914, x = -0.908914
    algo, task = REGISTRY["fedavgm"](), linear_regression_task()
    assert (algo.eta, algo.beta) == (1.0, 0.9)
    server, states = start(algo)
    assert set(server.extra) == {"m/" + KEY}  # momentum only: no second moment
    server, _, states = one_round(algo, task, server, states)
    assert w(server.params[KEY]) == pytest.approx(-0.169, abs=1e-6)
    server, _, _ = one_round(algo, task, server, states)
    assert w(server.params[KEY]) == pytest.approx(-0.908914, abs=1e-5)
    assert w(server.extra["m/" + KEY]) == pytest.approx(-0.739914, abs=1e-5)


def test_fedavgm_without_momentum_at_server_lr_1_is_fedavg_bit_for_bit(runs):
    a, b = runs("fedavgm", eta=1.0, beta=0.0), runs("fedavg")
    assert a.server.params.keys() == b.server.params.keys()
    same_run(a, b)  # torch.equal on every key of the server state, and the same accuracies
    assert a.ledger.up == b.ledger.up and a.ledger.down == b.ledger.down  # m is never sent
    for c in (runs("fedavgm"), runs("fedadam")):
        assert any(not torch.equal(c.server.params[k], b.server.params[k]) for k in b.server.params)


@pytest.mark.parametrize("name,field,value", [
    ("fedadam", "eta", 0.0), ("fedadam", "beta1", 1.0), ("fedadam", "beta2", -0.1), ("fedadam", "tau", 0.0),
    ("fedyogi", "beta2", 1.0), ("fedyogi", "tau", -1.0), ("fedadagrad", "eta", -1.0), ("fedadagrad", "beta1", 1.0),
    ("fedavgm", "eta", 0.0), ("fedavgm", "beta", 1.0), ("fedavgm", "beta", float("nan")),
])
def test_server_optimizers_reject_bad_hyperparameters(name, field, value):
    with pytest.raises(FedarenaError, match=f"{name}.{field}"):
        REGISTRY[name](**{field: value})


def test_server_opt_is_no_longer_a_hyperparameter():
    with pytest.raises(TypeError):
        REGISTRY["fedadam"](server_opt="yogi")  # one algorithm per update rule: fedyogi


# ---------------------------------------------------------------- IFCA


def ifca_server(*ws):
    return ServerState(params=pack([{KEY: torch.tensor([[v]])} for v in ws]))


def test_ifca_hand_checked():
    # clusters w = 1.5 and 0.0. Client 0's losses (w - 2)^2: 0.25 and 4 -> cluster 0; SGD: 1.5 + 0.1 = 1.6.
    # Client 1's losses (2 w + 1)^2: 16 and 1 -> cluster 1; SGD w <- 0.2 w - 0.4: -0.4, -0.48, -0.496.
    algo, task = REGISTRY["ifca"](k=2), linear_regression_task()
    states = {c: algo.init_client({}) for c in range(2)}
    server, uploads, states = one_round(algo, task, ifca_server(1.5, 0.0), states)
    assert [int(states[c].extra["cluster"]) for c in range(2)] == [0, 1]
    assert [int(uploads[c].extra["cluster"]) for c in range(2)] == [0, 1]
    assert w(server.params["cluster0/" + KEY]) == pytest.approx(1.6, abs=1e-6)
    assert w(server.params["cluster1/" + KEY]) == pytest.approx(-0.496, abs=1e-6)
    # both pick cluster 0 (losses 2.25 vs 64 and 4 vs 441): cluster 0 is FedAvg's -0.169, cluster 1 keeps 10
    server, _, states = one_round(algo, task, ifca_server(0.5, 10.0), states)
    assert w(server.params["cluster0/" + KEY]) == pytest.approx(-0.169, abs=1e-6)
    assert w(server.params["cluster1/" + KEY]) == 10.0
    assert algo.global_model(server) is None


def test_ifca_personalize_uses_the_chosen_cluster_or_estimates_one():
    algo, task = REGISTRY["ifca"](k=2), linear_regression_task()
    b = algo.broadcast(ifca_server(1.5, 0.0), 0)
    chose1 = ClientState(extra={"cluster": torch.tensor(1)})
    assert w(algo.personalize(task, b, chose1, CLIENTS[0], None)[KEY]) == 0.0
    assert w(algo.personalize(task, b, algo.init_client({}), CLIENTS[0], None)[KEY]) == 1.5  # estimated
    onboarded = algo.onboard(task, b, algo.init_client({}), CLIENTS[1], None)
    assert w(onboarded.after[KEY]) == 0.0 and onboarded.steps == 0


def test_ifca_init_derives_distinct_clusters_deterministically(toy):
    data_, _ = toy
    task = classification_task(data_, norm="bn")
    shared = task.init_params(torch_rng(0, "init"))
    algo = REGISTRY["ifca"](k=3)
    models = algo.models(algo.init_server(shared).params)
    assert all(torch.equal(models[0][k], shared[k]) for k in shared)  # cluster 0 is the given model
    again = algo.models(algo.init_server(shared).params)
    seed1 = REGISTRY["ifca"](k=3, init_seed=1)
    other = seed1.models(seed1.init_server(shared).params)
    for k, v in shared.items():
        for j in (1, 2):
            assert torch.equal(models[j][k], again[j][k])  # deterministic
            assert torch.equal(models[j][k].flatten().sort().values, v.flatten().sort().values)  # same values
            if v.unique().numel() > 1:  # a randomly initialized tensor: shuffled
                assert not torch.equal(models[j][k], v)
                if v.numel() > 10:  # init_seed picks the shuffle
                    assert not torch.equal(models[j][k], other[j][k])
            else:  # BatchNorm constants and counters stay what they are
                assert torch.equal(models[j][k], v)
    assert not torch.equal(models[1]["body.fc1.weight"], models[2]["body.fc1.weight"])


def test_ifca_k1_is_fedavg_bit_for_bit(runs):
    a, b = runs("ifca", k=1), runs("fedavg")
    same_run(a, b, a_params=REGISTRY["ifca"](k=1).models(a.server.params)[0])


def test_ifca_bytes_and_storage(runs):
    f = runs("fedavg")
    for k in (1, 3):
        i = runs("ifca", k=k)
        for key, down in f.ledger.down.items():
            assert k - 0.1 < i.ledger.down[key] / down < k + 0.1  # k models down
            assert 1.0 < i.ledger.up[key] / f.ledger.up[key] < 1.2  # one model + the cluster id up
        assert storage_bytes(i.states) == 8  # the cluster id
        assert i.evaluations[-1].global_acc is None


def test_ifca_rejects_bad_k_and_bad_cluster_ids():
    with pytest.raises(FedarenaError, match="ifca.k"):
        REGISTRY["ifca"](k=0)
    algo = REGISTRY["ifca"](k=2)
    server = ifca_server(0.0, 1.0)
    up, _ = algo.client_update(linear_regression_task(), algo.broadcast(server, 0), algo.init_client({}),
                               CLIENTS[0], torch.Generator())
    with pytest.raises(FedarenaError, match="client 7 uploaded cluster 5"):
        algo.aggregate(server, {7: replace(up, extra={"cluster": torch.tensor(5)})})
