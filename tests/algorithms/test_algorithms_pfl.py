"""Ditto, APFL, Per-FedAvg, pFedMe: hand-checked numbers, reductions and the papers' update rules.

Hand-checked cases: y = w x, MSE, lr 0.1, batch 1, 1 epoch. Client 0 holds (x=1, y=2); client 1 three
copies of (x=2, y=-1); the global model starts at w0 = 0.5. The gradient of (w x - y)^2 is 2 x (w x - y):
-3 for client 0 at w = 0.5, and 8 w + 4 for client 1. FedAvg's round gives uploads 0.8 and -0.492 and
the global model (0.8 + 3 * -0.492) / 4 = -0.169 (tests/algorithms/test_algorithms.py).
"""

import pytest
import torch
from running import run_loop
from test_algorithms import CLIENTS, W0, data, w
from toy import classification_task, federation, linear_regression_task

from fedarena.algorithms import REGISTRY
from fedarena.core.algorithm import fedavg_aggregate
from fedarena.core.rng import torch_rng
from fedarena.core.types import ClientState, FedarenaError


def p(value):
    return {"head.weight": torch.tensor([[value]])}


def one_round(algo, task, own=W0, alpha=None):
    """One round of both clients from the global w0; `own` starts the client's own model (v, theta)."""
    server = algo.init_server(p(W0))
    uploads, states = {}, {}
    for c, d in enumerate(CLIENTS):
        state = algo.init_client(p(own))
        if alpha is not None:
            state = ClientState(params=state.params, extra={"alpha": torch.tensor(alpha)})
        rng = torch.Generator().manual_seed(c)
        uploads[c], states[c] = algo.client_update(task, algo.broadcast(server, c), state, d, rng)
    return algo.aggregate(server, uploads), uploads, states


@pytest.fixture(scope="module")
def toy():
    data_ = federation([16, 10, 20, 12], [6, 6, 6, 6])
    return data_, classification_task(data_)


def run(algo, toy, **kw):
    """Two rounds, full participation, evaluated at the end, seed 11."""
    data_, task = toy
    args = dict(rounds=2, clients_per_round=4, eval_every=2, seed=11) | kw
    return run_loop(algo, task, data_, **args)


@pytest.fixture(scope="module")
def fedavg(toy):
    return run(REGISTRY["fedavg"](), toy)


def same_params(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- Ditto


def test_ditto_hand_checked():
    # personal gradient 2 x (v x - y) + lam (v - w0), lam = 1, v0 = 1.0:
    # client 0: 1.0 - 0.1 * (2 * (1 - 2) + (1 - 0.5)) = 1.0 + 0.15 = 1.15
    # client 1: grad 8 v + 4 + (v - 0.5): 1.0 -> 1.0 - 1.25 = -0.25 -> -0.25 - 0.1 * (2 - 0.75) = -0.375
    #           -> -0.375 - 0.1 * (1 - 0.875) = -0.3875
    # the global model is FedAvg's: uploads 0.8, -0.492, aggregate -0.169
    algo = REGISTRY["ditto"](lam=1.0)
    task = linear_regression_task()
    server, uploads, states = one_round(algo, task, own=1.0)
    assert w(states[0].params) == pytest.approx(1.15, abs=1e-6)
    assert w(states[1].params) == pytest.approx(-0.3875, abs=1e-6)
    assert [w(uploads[0].params), w(uploads[1].params)] == pytest.approx([0.8, -0.492], abs=1e-6)
    assert w(server.params) == pytest.approx(-0.169, abs=1e-6)
    assert w(algo.personalize(task, algo.broadcast(server, 0), states[0], CLIENTS[0], None)) == pytest.approx(1.15)
    assert w(algo.global_model(server)) == pytest.approx(-0.169, abs=1e-6)


def test_ditto_lam0_personal_models_are_local(toy, fedavg):
    # Condition: same seed (so the same initial model, the same sampled clients and the same per-client
    # generators), same local SGD, full participation. Ditto's personal update draws its batches from the
    # client's generator first, exactly as `local` does, and lam = 0 makes its objective F_k: v_k is
    # local's model bit for bit. Its global update replays the same batches: w is FedAvg's model.
    ditto = run(REGISTRY["ditto"](lam=0.0), toy)
    local = run(REGISTRY["local"](), toy)
    assert all(same_params(ditto.states[c].params, local.states[c].params) for c in local.states)
    assert [e.per_client_acc for e in ditto.evaluations] == [e.per_client_acc for e in local.evaluations]
    assert same_params(ditto.server.params, fedavg.server.params)


def test_ditto_global_model_is_fedavg_for_any_lam(toy, fedavg):
    assert same_params(run(REGISTRY["ditto"](lam=1.0), toy).server.params, fedavg.server.params)


def test_ditto_lam_pulls_the_personal_model_to_the_global_one(toy):
    data_, task = toy
    full = task.init_params(torch.Generator().manual_seed(0))
    start = {k: v + 0.5 for k, v in full.items()}  # a personal model away from the global one
    distances = []
    for lam in (0.0, 1.0, 5.0):
        algo = REGISTRY["ditto"](lam=lam)
        _, state = algo.client_update(task, algo.broadcast(algo.init_server(full), 0), algo.init_client(start),
                                      data_.client(0), torch.Generator().manual_seed(0))
        distances.append(sum(float(((state.params[k] - full[k]) ** 2).sum()) for k in full))
    assert distances[0] > distances[1] > distances[2]


def test_ditto_rejects_negative_lam():
    with pytest.raises(FedarenaError, match="ditto.lam"):
        REGISTRY["ditto"](lam=-1.0)


# ---------------------------------------------------------------- APFL


def test_apfl_hand_checked():
    # w: FedAvg's steps (uploads 0.8, -0.492; global -0.169). v0 = 1.0, alpha0 = 0.5, mixture from w before the step.
    # client 0: v_bar = 0.5 * 1 + 0.5 * 0.5 = 0.75, grad f(v_bar) = 2 (0.75 - 2) = -2.5
    #   v = 1 - 0.1 * 0.5 * -2.5 = 1.125;  alpha = 0.5 - 0.1 * (1 - 0.5) * -2.5 = 0.625
    # client 1 (grad 8 p + 4): step 1: v_bar = 0.75, grad 10: v = 1 - 0.1 * 0.5 * 10 = 0.5,
    #   alpha = 0.5 - 0.1 * (1 - 0.5) * 10 = 0; step 2 (w = -0.3, v_bar = w): alpha = 0 - 0.1 * (0.5 + 0.3) * 1.6
    #   = -0.128 < 0: clamped to 0 in the mixture, so v no longer moves and alpha gets no gradient;
    #   step 3 likewise. Kept: v = 0.5, alpha = clamp(-0.128) = 0.
    # personal models with the new global -0.169: 0.625 * 1.125 + 0.375 * -0.169 = 0.63975; client 1: -0.169
    algo = REGISTRY["apfl"](alpha=0.5, adaptive=True)
    task = linear_regression_task()
    server, uploads, states = one_round(algo, task, own=1.0, alpha=0.5)
    assert [w(uploads[0].params), w(uploads[1].params)] == pytest.approx([0.8, -0.492], abs=1e-6)
    assert w(server.params) == pytest.approx(-0.169, abs=1e-6)
    assert [w(states[0].params), w(states[1].params)] == pytest.approx([1.125, 0.5], abs=1e-6)
    assert [states[0].extra["alpha"].item(), states[1].extra["alpha"].item()] == pytest.approx([0.625, 0.0], abs=1e-6)
    personal = [w(algo.personalize(task, algo.broadcast(server, c), states[c], CLIENTS[c], None)) for c in (0, 1)]
    assert personal == pytest.approx([0.63975, -0.169], abs=1e-6)


def test_apfl_fixed_alpha0_global_model_is_fedavg(toy, fedavg):
    # alpha = 0, adaptation off: the mixture is w, v never moves; w follows FedAvg's steps on the same batches
    apfl = run(REGISTRY["apfl"](alpha=0.0, adaptive=False), toy)
    assert same_params(apfl.server.params, fedavg.server.params)
    _, task = toy
    initial = task.init_params(torch_rng(11, "init"))
    assert all(same_params(s.params, initial) for s in apfl.states.values())


def test_apfl_global_model_is_fedavg_for_any_alpha(toy, fedavg):
    # the paper's w update uses grad f_i(w) only: personalization never changes the global model
    assert same_params(run(REGISTRY["apfl"](alpha=0.5, adaptive=True), toy).server.params, fedavg.server.params)


def test_apfl_alpha_fixed_or_adaptive_and_in_range(toy):
    fixed = run(REGISTRY["apfl"](alpha=0.25, adaptive=False), toy)
    assert all(s.extra["alpha"].item() == 0.25 for s in fixed.states.values())
    adaptive = run(REGISTRY["apfl"](alpha=0.25), toy)
    alphas = [s.extra["alpha"].item() for s in adaptive.states.values()]
    assert all(0 <= a <= 1 for a in alphas) and any(a != 0.25 for a in alphas)


def test_apfl_rejects_alpha_out_of_range():
    with pytest.raises(FedarenaError, match="apfl.alpha"):
        REGISTRY["apfl"](alpha=1.5)


# ---------------------------------------------------------------- Per-FedAvg


def meta_step(algo, client, seed=0):
    task = linear_regression_task()
    server = algo.init_server(p(W0))
    upload, state = algo.client_update(task, algo.broadcast(server, 0), algo.init_client(p(W0)), client,
                                       torch.Generator().manual_seed(seed))
    return upload, state


def test_per_fedavg_fo_hand_checked():
    # one step per epoch on a batch of 2B = 2 split into D, D'; alpha = the comparison's lr = 0.1, beta = 0.1
    # identical samples (1, 2): w_tilde = 0.5 - 0.1 * -3 = 0.8; grad f(0.8; D') = 2 (0.8 - 2) = -2.4
    #   w = 0.5 - 0.1 * -2.4 = 0.74
    algo = REGISTRY["per-fedavg"](beta=0.1, variant="fo")
    upload, state = meta_step(algo, data([1.0, 1.0], [2.0, 2.0]))
    assert w(upload.params) == pytest.approx(0.74, abs=1e-6)
    assert upload.metrics["steps"] == 1 and state.params == {}
    # distinct samples, D first in the client's shuffled order:
    # D = (1, 2), D' = (2, -1): w_tilde = 0.8, grad f(0.8; D') = 4 (1.6 + 1) = 10.4 -> 0.5 - 1.04 = -0.54
    # D = (2, -1), D' = (1, 2): w_tilde = 0.5 - 0.8 = -0.3, grad f(-0.3; D') = 2 (-0.3 - 2) = -4.6 -> 0.96
    for seed in (0, 1, 2, 3):
        first = int(torch.randperm(2, generator=torch.Generator().manual_seed(seed))[0])
        upload, _ = meta_step(algo, data([1.0, 2.0], [2.0, -1.0]), seed)
        assert w(upload.params) == pytest.approx(-0.54 if first == 0 else 0.96, abs=1e-6)


def test_per_fedavg_hf_hand_checked():
    # batch 3B = 3 identical samples (1, 2) -> D, D', D''; the Hessian of (w - 2)^2 is 2, so the finite
    # difference gives H g = 2 * -2.4 = -4.8 and w = 0.5 - 0.1 * (-2.4 - 0.1 * -4.8) = 0.692
    algo = REGISTRY["per-fedavg"](beta=0.1, variant="hf")
    upload, _ = meta_step(algo, data([1.0, 1.0, 1.0], [2.0, 2.0, 2.0]))
    assert w(upload.params) == pytest.approx(0.692, abs=1e-4)
    assert upload.metrics["steps"] == 1


@pytest.mark.parametrize("variant", ["fo", "hf"])
def test_per_fedavg_objective_gradient_is_the_papers_update(toy, variant):
    # on a small MLP: the objective's gradient is grad f(w_tilde; D') [- alpha H(w; D'') grad f(w_tilde; D')]
    data_, task = toy
    algo = REGISTRY["per-fedavg"](variant=variant, delta=1e-3)  # alpha = the toy task's lr, 0.1
    params = {k: v.double() for k, v in task.init_params(torch.Generator().manual_seed(0)).items()}
    x, y = data_.x_train[:12].double(), data_.y_train[:12]
    parts = 3 if variant == "hf" else 2
    (xa, ya), (xb, yb), (xc, yc) = [(x[i * 4 : i * 4 + 4], y[i * 4 : i * 4 + 4]) for i in range(3)]
    batch = (x[: 4 * parts], y[: 4 * parts])
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    objective = algo.meta_objective(task, leaves, broadcast=None, state=None, batch=batch)
    got = torch.autograd.grad(objective, list(leaves.values()))

    def loss(q, xs, ys):
        return task.loss(q, xs, ys)

    g = torch.func.grad(loss)(params, xa, ya)
    adapted = {k: params[k] - 0.1 * g[k] for k in params}
    g_out = torch.func.grad(loss)(adapted, xb, yb)
    want = dict(g_out)
    if variant == "hf":
        def directional(q):  # <grad f(q; D''), g_out>: its gradient is H(q; D'') g_out
            return sum((t * g_out[k]).sum() for k, t in torch.func.grad(loss)(q, xc, yc).items())

        hvp = torch.func.grad(directional)(params)
        want = {k: g_out[k] - 0.1 * hvp[k] for k in params}
    for k, got_k in zip(leaves, got):
        assert torch.allclose(got_k, want[k], atol=1e-7, rtol=1e-5), k


def test_per_fedavg_personalizes_by_adaptation_steps():
    # client 1, meta-model 0.5, alpha = 0.1, full-batch steps: 0.5 - 0.1 * 8 = -0.3; -0.3 - 0.1 * 1.6 = -0.46
    task = linear_regression_task()
    for steps, after in ((0, 0.5), (1, -0.3), (2, -0.46)):
        algo = REGISTRY["per-fedavg"](adapt_steps=steps)
        server = algo.init_server(p(W0))
        result = algo.onboard(task, algo.broadcast(server, 1), algo.init_client(p(W0)), CLIENTS[1], torch.Generator())
        assert (w(result.before), w(result.after), result.steps) == pytest.approx((0.5, after, steps), abs=1e-6)
        state = algo.init_client(p(W0))
        personal = algo.personalize(task, algo.broadcast(server, 1), state, CLIENTS[1], torch.Generator())
        assert w(personal) == pytest.approx(after, abs=1e-6)


def test_per_fedavg_alpha_is_the_comparison_lr():
    # lr 0.05: 0.5 - 0.05 * 8 = 0.1
    algo = REGISTRY["per-fedavg"]()
    server = algo.init_server(p(W0))
    result = algo.onboard(linear_regression_task(lr=0.05), algo.broadcast(server, 1), algo.init_client(p(W0)),
                          CLIENTS[1], torch.Generator())
    assert w(result.after) == pytest.approx(0.1, abs=1e-6)


def test_per_fedavg_rejects_bad_hyperparameters():
    with pytest.raises(FedarenaError, match="per-fedavg.variant"):
        REGISTRY["per-fedavg"](variant="so")
    with pytest.raises(FedarenaError, match="per-fedavg.beta"):
        REGISTRY["per-fedavg"](beta=0.0)


# ---------------------------------------------------------------- pFedMe


def test_pfedme_hand_checked():
    # lam = 1, K = 2, personal lr 0.1, eta = the comparison's lr = 0.1; theta starts at w each round and is
    # warm-started across local steps
    # client 0: inner grad 2 (theta - 2) + (theta - w): theta 0.5 -> 0.5 + 0.3 = 0.8 -> 0.8 - 0.1 * (-2.4 + 0.3) = 1.01
    #   w = 0.5 - 0.1 * 1 * (0.5 - 1.01) = 0.551
    # client 1: inner grad 8 theta + 4 + (theta - w) = 9 theta + 4 - w
    #   step 1 (w = 0.5):   theta 0.5 -> -0.3 -> -0.38;              w = 0.5 - 0.1 (0.5 + 0.38) = 0.412
    #   step 2 (w = 0.412): theta -> -0.3968 -> -0.39848;            w = 0.412 - 0.1 (0.412 + 0.39848) = 0.330952
    #   step 3:             theta -> -0.4067528 -> -0.40758008;      w = 0.330952 - 0.0738532 = 0.257098792
    # server, beta = 1: (0.551 + 3 * 0.257098792) / 4 = 0.330574094; beta = 2: -0.5 + 2 * 0.330574094 = 0.161148188
    task = linear_regression_task()
    for beta, expected in ((1.0, 0.330574094), (2.0, 0.161148188)):
        algo = REGISTRY["pfedme"](lam=1.0, K=2, personal_lr=0.1, beta=beta)
        server, uploads, states = one_round(algo, task)
        assert [w(uploads[0].params), w(uploads[1].params)] == pytest.approx([0.551, 0.257098792], abs=1e-6)
        assert [w(states[0].params), w(states[1].params)] == pytest.approx([1.01, -0.40758008], abs=1e-6)
        assert uploads[1].metrics["steps"] == 6  # 3 local steps x K inner steps
        assert w(server.params) == pytest.approx(expected, abs=1e-6)
        assert w(algo.personalize(task, algo.broadcast(server, 0), states[0], CLIENTS[0], None)) == pytest.approx(1.01)


def test_pfedme_inner_solve_is_the_proximal_point():
    # many inner steps solve min (theta - 2)^2 + lam/2 (theta - w)^2 exactly: theta* = (4 + lam w) / (2 + lam)
    # = 1.5 for lam = 1, w = 0.5; w then takes one step on the Moreau envelope, whose gradient is
    # lam (w - theta*) = -1 = grad f(theta*): w = 0.5 + 0.1 = 0.6
    algo = REGISTRY["pfedme"](lam=1.0, K=200, personal_lr=0.1)
    _, uploads, states = one_round(algo, linear_regression_task())
    assert w(states[0].params) == pytest.approx(1.5, abs=1e-5)
    assert w(uploads[0].params) == pytest.approx(0.6, abs=1e-6)


def test_pfedme_beta1_aggregates_like_fedavg(toy):
    data_, task = toy
    algo = REGISTRY["pfedme"]()
    full = task.init_params(torch.Generator().manual_seed(0))
    server = algo.init_server(full)
    uploads = {c: algo.client_update(task, algo.broadcast(server, c), algo.init_client(full), data_.client(c),
                                     torch.Generator().manual_seed(c))[0] for c in range(2)}
    assert same_params(algo.aggregate(server, uploads).params, fedavg_aggregate(algo, server, uploads).params)


def test_pfedme_keeps_theta_as_the_personal_model(toy):
    result = run(REGISTRY["pfedme"](K=2), toy)
    assert all(set(s.params) == set(result.server.params) for s in result.states.values())
    assert result.evaluations[-1].global_acc is not None


def test_pfedme_rejects_bad_hyperparameters():
    with pytest.raises(FedarenaError, match="pfedme.K"):
        REGISTRY["pfedme"](K=0)
    with pytest.raises(FedarenaError, match="pfedme.lam"):
        REGISTRY["pfedme"](lam=0.0)
