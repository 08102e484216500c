"""MOCHA (Smith et al., NeurIPS 2017): hand-checked SDCA numbers, the Omega step, relatedness, dual
ascent / primal descent, and the lam1 = 0 reduction to independent per-client training.

Hand-checked setting (as in test_algorithms.py): y = w x, loss (w x - y)^2 (2-smooth, so gamma = 1/2),
client 0 holds (x=1, y=2), client 1 three copies of (x=2, y=-1); lam1 = 1/4, lam2 = 0.
"""

from fractions import Fraction

import pytest
import torch
from toy import classification_task, federation, linear_regression_task

from fedarena.algorithms import REGISTRY
from fedarena.algorithms.mocha import _kernel, relationships
from fedarena.core.types import ClientData, FedarenaError


def data(x, y):
    x = torch.tensor(x).reshape(-1, 1)
    y = torch.tensor(y).reshape(-1, 1)
    return ClientData(x, y, x, y)


CLIENTS = [data([1.0], [2.0]), data([2.0, 2.0, 2.0], [-1.0, -1.0, -1.0])]


def mocha(**kw):
    return REGISTRY["mocha"](**{"lam1": 0.25, "lam2": 0.0, "gamma": 0.5, "inner_iters": 1000, **kw})


def train(algo, task, clients, rounds, record=None):
    """Full participation, each client's rng from (round, client)."""
    server = algo.init_server({})
    full = task.init_params(torch.Generator().manual_seed(0))
    states = {c: algo.init_client(full) for c in range(len(clients))}
    for r in range(rounds):
        uploads = {}
        for c, d in enumerate(clients):
            b = algo.broadcast(server, c)
            rng = torch.Generator().manual_seed(100 * r + c)
            uploads[c], states[c] = algo.client_update(task, b, states[c], d, rng)
        server = algo.aggregate(server, uploads)
        if record is not None:
            record.append((server, dict(states)))
    return server, states


def models(algo, task, server, states, clients):
    return [algo.personalize(task, algo.broadcast(server, c), states[c], d, None) for c, d in enumerate(clients)]


def flat(params):
    return torch.cat([params[k].double().reshape(-1) for k in ("head.weight", "head.bias") if k in params])


def test_hand_checked_first_round():
    # A task seen for the first time has Sigma_tt = 1 (trace-m normalization), so K_tt = 1 / (2 lam1) = 2
    # and sigma' K_tt = 2. SDCA step: dalpha = s (u - alpha), u = -2 (z - y), s = gamma / (gamma + 2 x^2 / n).
    # Client 0: s = 0.5 / (0.5 + 2) = 0.2, u = 4 -> alpha = 0.8, dv = 0.8, w = K_tt v = 1.6, which is the
    #   exact minimizer of (w - 2)^2 + lam1 * Omega_tt * w^2 = (w - 2)^2 + 0.25 w^2 (one sample: one exact step).
    # Client 1: s = 0.5 / (0.5 + 2 * 4 / 3) = 3/19; local view w~ = 2 * dv:
    #   step 1: z = 0,            u = -2,       dalpha = -6/19,    dv = -4/19
    #   step 2: z = -16/19,       u = -6/19,    dalpha = -18/361,  dv = -88/361
    #   step 3: z = -352/361,     u = -18/361,  dalpha = -54/6859, dv = -1708/6859
    algo, task = mocha(), linear_regression_task()
    server = algo.init_server({})
    b = algo.broadcast(server, 0)
    assert float(b.extra["k_tt"]) == 2.0 and float(b.extra["k_row"]) == 2.0 and not b.params
    server, states = train(algo, task, CLIENTS, rounds=1)
    dv1 = Fraction(-1708, 6859)
    assert server.extra["tasks"].tolist() == [0, 1]
    assert torch.equal(server.extra["sigma"], torch.eye(2, dtype=torch.float64))  # no Omega step yet: Sigma = I
    assert server.extra["v/head.weight"].reshape(-1).tolist() == pytest.approx([0.8, float(dv1)], abs=1e-7)  # float32
    assert states[0].extra["alpha"].item() == pytest.approx(0.8, abs=1e-12)
    alpha1 = sorted(states[1].extra["alpha"].reshape(-1).tolist())  # stored in data order, visited in a random one
    assert alpha1 == pytest.approx([-6 / 19, -18 / 361, -54 / 6859], abs=1e-12)
    w = models(algo, task, server, states, CLIENTS)
    assert w[0]["head.weight"].item() == pytest.approx(1.6, abs=1e-6)
    assert w[1]["head.weight"].item() == pytest.approx(float(2 * dv1), abs=1e-6)
    # what client 0 downloads next: K_tt, |K_t.| and the others' part K_01 v_1, never w_0; with Sigma = I
    # that part is zero and not sent
    b = algo.broadcast(server, 0)
    assert set(b.extra) == {"k_tt", "k_row"} and float(b.extra["k_tt"]) == 2.0


def test_upload_is_the_dual_image_update_under_the_head_keys():
    algo, task = mocha(), linear_regression_task()
    assert algo.uploads_personal and algo.personal("head.weight") and algo.global_model(None) is None
    b = algo.broadcast(algo.init_server({}), 0)
    up, _ = algo.client_update(task, b, algo.init_client({}), CLIENTS[0], torch.Generator())
    assert set(up.params) == {"head.weight"} and up.params["head.weight"].item() == pytest.approx(0.8)
    assert up.num_samples == 1 and up.metrics["steps"] == 1


def test_omega_step_closed_form_by_hand():
    # after round 1, W = (1.6, -3416/6859): W^T W is rank one, so Sigma / m = a a^T / |a|^2 up to the 1e-7
    # eigenvalue floor (sqrt(1e-7) / |a| ~ 2e-4 relative).
    algo, task = mocha(inner_iters=1), linear_regression_task()
    server, _ = train(algo, task, CLIENTS, rounds=1)
    tasks, sigma = relationships(server)
    a = torch.tensor([1.6, 2 * -1708 / 6859], dtype=torch.float64)
    assert tasks == [0, 1]
    assert torch.allclose(sigma, torch.outer(a, a) / a.dot(a), atol=1e-3)
    assert torch.allclose(sigma, sigma.T) and torch.linalg.eigvalsh(sigma).min() > 0
    assert torch.trace(sigma).item() == pytest.approx(1.0, abs=1e-12)


def test_omega_step_minimizes_the_regularizer_for_fixed_w():
    data_ = federation([20, 30, 25], [5, 5, 5], seed=1)
    task = classification_task(data_, model="mlr")
    clients = [data_.client(i) for i in range(3)]
    algo = REGISTRY["mocha"](lam1=0.01, inner_iters=3)
    record = []
    train(algo, task, clients, rounds=3, record=record)
    before, after = record[1][0], record[2][0]  # Sigma changes at the end of round 3
    # W after round 3 (the one the Omega step saw, under the old Sigma), regularized by the old and the new Sigma
    kern = _kernel(before.extra["sigma"], algo.lam1, algo.lam2)
    v3 = torch.cat([after.extra[k].reshape(3, -1) for k in ("v/head.bias", "v/head.weight")], 1)
    w = kern @ v3
    reg = [torch.trace(w.T @ torch.linalg.solve(s, w)).item() for s in (before.extra["sigma"], after.extra["sigma"])]
    assert reg[1] < reg[0]
    for s in (before.extra["sigma"], after.extra["sigma"]):  # any other trace-m PSD Sigma does no better
        assert torch.trace(s).item() == pytest.approx(3.0)
    rand = torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    other = rand @ rand.T + 0.1 * torch.eye(3, dtype=torch.float64)
    other = 3 * other / torch.trace(other)
    assert torch.trace(w.T @ torch.linalg.solve(other, w)).item() > reg[1]


def test_sigma_reflects_relatedness():
    # clients 0 and 1 hold the same data; client 2 the same inputs with other labels
    base = federation([40], [5], seed=3).client(0)
    other = ClientData(base.x_train, (base.y_train + 1) % 3, base.x_test, (base.y_test + 1) % 3)
    clients = [base, base, other]
    task = classification_task(federation([40], [5], seed=3), model="mlr")
    algo = REGISTRY["mocha"](lam1=0.01, inner_iters=2)
    server, _ = train(algo, task, clients, rounds=6)
    _, sigma = relationships(server)
    corr = sigma / torch.outer(sigma.diagonal().sqrt(), sigma.diagonal().sqrt())
    assert torch.allclose(sigma, sigma.T) and torch.linalg.eigvalsh(sigma).min() >= 0
    assert torch.trace(sigma).item() == pytest.approx(1.0)
    assert corr[0, 1] > 0.99 and corr[0, 2] < 0.5 and corr[1, 2] < 0.5


def _dual_ce(algo, server, states, clients, task):
    """D(alpha) = -sum_t mean_i sum_k p log p - 1/2 sum_ts K_ts <v_t, v_s>, p = onehot(y) - alpha."""
    value = 0.0
    for c, d in enumerate(clients):
        p = torch.nn.functional.one_hot(d.y_train, 3).double() - states[c].extra["alpha"]
        assert p.min() >= -1e-12 and torch.allclose(p.sum(1), torch.ones(len(p), dtype=torch.float64))
        value -= (p * p.clamp(min=1e-300).log()).sum(1).mean().item()
    kern = _kernel(server.extra["sigma"], algo.lam1, algo.lam2)
    v = torch.cat([server.extra[k].reshape(len(clients), -1) for k in ("v/head.bias", "v/head.weight")], 1)
    return value - 0.5 * torch.trace(v.T @ kern @ v).item()


def _primal(algo, task, server, states, clients):
    ws = models(algo, task, server, states, clients)
    loss = sum(task.loss(w, d.x_train, d.y_train).item() for w, d in zip(ws, clients))
    w = torch.stack([flat(p) for p in ws])
    reg = algo.lam1 * torch.trace(w.T @ torch.linalg.solve(server.extra["sigma"], w)) + algo.lam2 * (w**2).sum()
    return loss + reg.item()


def test_dual_ascends_primal_descends_and_gap_closes():
    data_ = federation([20, 30, 25], [5, 5, 5], seed=1)
    task = classification_task(data_, model="mlr")
    clients = [data_.client(i) for i in range(3)]
    algo = REGISTRY["mocha"](lam1=0.05, lam2=0.01, inner_iters=1000)  # Omega fixed: one convex problem
    record = []
    train(algo, task, clients, rounds=15, record=record)
    duals = [_dual_ce(algo, s, st, clients, task) for s, st in record]
    primals = [_primal(algo, task, s, st, clients) for s, st in record]
    assert all(b > a for a, b in zip(duals, duals[1:]))  # SDCA steps never decrease the dual
    assert primals[-1] < primals[0]
    assert all(p >= d for p, d in zip(primals, duals))  # weak duality
    assert primals[-1] - duals[-1] < 0.1 * (primals[0] - duals[0])


def test_objective_decreases_over_rounds_with_omega_updates():
    data_ = federation([20, 30, 25, 15], [5, 5, 5, 5], seed=4)
    task = classification_task(data_, model="mlr")
    clients = [data_.client(i) for i in range(4)]
    algo = REGISTRY["mocha"](lam1=0.01, inner_iters=3)
    record = []
    train(algo, task, clients, rounds=12, record=record)
    primals = [_primal(algo, task, s, st, clients) for s, st in record]
    assert primals[-1] < 0.5 * primals[0]


def test_lam1_zero_makes_every_client_independent():
    # K = I / (2 lam2): nothing couples the tasks, whatever Sigma the Omega steps learn; client 0's
    # trajectory is bit-identical whatever client 1 holds, and tends to its own ridge solution
    # argmin (w - 2)^2 + lam2 w^2 = 2 / (1 + lam2) = 1.6 for lam2 = 0.25.
    task = linear_regression_task()
    algo = mocha(lam1=0.0, lam2=0.25, inner_iters=2)
    runs = [train(algo, task, [CLIENTS[0], d], rounds=30) for d in (CLIENTS[1], data([5.0, -1.0], [3.0, 0.5]))]
    (s1, st1), (s2, st2) = runs
    assert torch.equal(st1[0].extra["alpha"], st2[0].extra["alpha"])
    assert not torch.equal(s1.extra["sigma"], torch.eye(2, dtype=torch.float64))  # Omega steps did run
    b = algo.broadcast(s1, 0)
    assert set(b.extra) == {"k_tt", "k_row"}  # nothing from the other client
    w = algo.personalize(task, b, st1[0], CLIENTS[0], None)["head.weight"].item()
    assert w == pytest.approx(1.6, abs=1e-6)
    # client 1: argmin mean (2w + 1)^2 + 0.25 w^2 -> 4 (2w + 1) + 0.5 w = 0 -> w = -8/17 (SDCA on three
    # identical samples equalizes their dual variables slowly: 30 passes)
    w1 = algo.personalize(task, algo.broadcast(s1, 1), st1[1], CLIENTS[1], None)["head.weight"].item()
    assert w1 == pytest.approx(-8 / 17, abs=1e-3)


def test_both_lambdas_zero_is_refused():
    with pytest.raises(FedarenaError, match="mocha.lam1"):
        REGISTRY["mocha"](lam1=0.0, lam2=0.0)
    with pytest.raises(FedarenaError, match="mocha.inner_iters"):
        REGISTRY["mocha"](inner_iters=0)


def test_body_stays_frozen_for_models_with_a_body():
    data_ = federation([20, 30], [5, 5], seed=1)
    task = classification_task(data_, model="mlp")
    clients = [data_.client(i) for i in range(2)]
    algo = REGISTRY["mocha"]()
    server, states = train(algo, task, clients, rounds=2)
    init = task.init_params(torch.Generator().manual_seed(0))
    personal = models(algo, task, server, states, clients)[0]
    assert all(torch.equal(personal[k], init[k]) for k in init if k.startswith("body."))
    assert set(personal) == set(init)


def test_onboarding_starts_from_the_mean_task_and_adapts():
    data_ = federation([20, 30, 25], [5, 5, 5], seed=1)
    task = classification_task(data_, model="mlr")
    clients = [data_.client(i) for i in range(3)]
    algo = REGISTRY["mocha"](inner_iters=2)
    server, states = train(algo, task, clients[:2], rounds=4)
    b = algo.broadcast(server, 2)
    mean = sum(flat(m) for m in models(algo, task, server, states, clients[:2])) / 2
    result = algo.onboard(task, b, algo.init_client({}), clients[2], torch.Generator().manual_seed(0))
    assert torch.allclose(flat(result.before), mean, atol=1e-5)
    d = clients[2]
    assert task.loss(result.after, d.x_train, d.y_train) < task.loss(result.before, d.x_train, d.y_train)
    assert result.steps == d.num_train


def test_closed_form_softmax_gradient_matches_autograd():
    from fedarena.algorithms.mocha import _autograd_grad, _ce_grad
    from fedarena.tasks import cross_entropy

    z = torch.randn(10, generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy() * 30
    for label in (0, 7):
        (g1, l1), (g2, l2) = _ce_grad(z.copy(), label), _autograd_grad(cross_entropy, z.copy(), torch.tensor(label))
        assert abs(l1 - l2) < 1e-9 and abs(g1 - g2).max() < 1e-12
