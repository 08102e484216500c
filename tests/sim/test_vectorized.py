"""The vectorized engine equals the reference engine on every registered algorithm.

Tolerance: parameters after 5 rounds within atol 1e-5 (float32; batched matmuls may sum in another
order than the reference, so bit equality is not expected), and per-client accuracies differ by at
most one test sample.
"""

import logging

import pytest
import torch
from running import assert_engines_agree, run_loop
from toy import classification_task, federation

from fedarena.algorithms import REGISTRY

ATOL = 1e-5


@pytest.fixture(scope="module")
def toy():
    # unequal sizes: different step counts and last-batch sizes per client
    data = federation([30, 23, 41, 25, 7, 12], [10, 9, 10, 11, 5, 6], seed=2)
    return data, classification_task(data, batch_size=4)



@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_parity_with_reference(name, toy):
    data, task = toy
    kw = dict(rounds=5, clients_per_round=4, eval_every=1, seed=11, new_clients=[5])
    ref = run_loop(REGISTRY[name](), task, data, engine="reference", **kw)
    vec = run_loop(REGISTRY[name](), task, data, engine="vectorized", **kw)
    assert_engines_agree(ref, vec, ATOL)


def test_sgd_based_algorithms_are_actually_batched(toy):
    data, task = toy
    run = run_loop(REGISTRY["fedprox"](mu=0.1), task, data, rounds=2, clients_per_round=4, eval_every=2,
                        seed=0, engine="vectorized")
    assert run.engine["batched_sgd_calls"] == 8 and run.engine["single_sgd_calls"] == 0


def test_batchnorm_falls_back_with_a_logged_reason(toy, caplog):
    data, _ = toy
    task = classification_task(data, batch_size=4, norm="bn")
    kw = dict(rounds=2, clients_per_round=3, eval_every=2, seed=0)
    with caplog.at_level(logging.WARNING):
        vec = run_loop(REGISTRY["fedavg"](), task, data, engine="vectorized", **kw)
    ref = run_loop(REGISTRY["fedavg"](), task, data, engine="reference", **kw)
    assert "BatchNorm" in caplog.text and vec.engine["notes"]
    assert all(torch.equal(ref.server.params[k], vec.server.params[k]) for k in ref.server.params)


def test_errors_inside_a_client_reach_the_caller(toy):
    data, task = toy

    class Boom(Exception):
        pass

    algo = REGISTRY["fedavg"]()

    def exploding(task, params, *, broadcast, state, batch):
        raise Boom("client failed")

    object.__setattr__(algo, "local_objective", exploding)
    with pytest.raises(Boom):
        run_loop(algo, task, data, rounds=1, clients_per_round=3, eval_every=1, seed=0, engine="vectorized")


def _sum_objective(scale, params, *, batch):
    x, _ = batch
    return params["w"].sum() * scale + 0 * x.sum()  # its gradient is an expanded (stride-0) tensor


def test_expanded_gradients_and_float64_weights_step_like_the_reference():
    from functools import partial

    from fedarena.core.batched import SGDRequest, batched_local_sgd
    from fedarena.core.local_train import local_sgd
    from fedarena.core.types import SGD

    sgd, objective = SGD(1, 2, 0.1), partial(_sum_objective, 1.0)
    reqs = [SGDRequest(objective, {"w": torch.full((3, 2), float(i), dtype=torch.float64)}, frozenset({"w"}),
                       torch.zeros(4, 1), torch.zeros(4), sgd, torch.Generator().manual_seed(i), 1) for i in range(2)]
    for req, (params, _, steps) in zip(reqs, batched_local_sgd(reqs)):
        want, _, _ = local_sgd(objective, req.params, {"w"}, req.x, req.y, sgd, torch.Generator().manual_seed(0))
        assert params["w"].dtype == torch.float64 and steps == 2
        assert torch.equal(params["w"], want["w"])


def test_chunks_are_balanced_and_in_order():
    from fedarena.sim.vectorized import chunks

    assert [len(c) for c in chunks(list(range(1001)), 100)] == [91] * 11  # not ten of 100 and one of 1
    assert [len(c) for c in chunks(list(range(1005)), 100)] == [92] * 4 + [91] * 7
    assert [len(c) for c in chunks(list(range(200)), 100)] == [100, 100]
    assert [len(c) for c in chunks(list(range(10)), 3)] == [3, 3, 2, 2]
    assert chunks(list(range(7)), 100) == [list(range(7))] and chunks([], 100) == []
    assert sum(chunks(list(range(1001)), 100), []) == list(range(1001))


def test_a_round_runs_in_chunks_of_at_most_chunk_threads_results_in_order(toy):
    import threading

    from fedarena.core.types import FedarenaError
    from fedarena.sim.vectorized import VectorizedExecutor

    data, task = toy
    executor = VectorizedExecutor(task, "fedavg", chunk=3)
    try:
        out = executor.map([lambda i=i: (i, threading.current_thread().name) for i in range(10)])
    finally:
        executor.close()
    assert [i for i, _ in out] == list(range(10))
    assert len({name for _, name in out}) <= 3  # one pool of 3 workers, reused by the chunks (3, 3, 2, 2)
    with pytest.raises(FedarenaError, match="chunk must be >= 1"):
        VectorizedExecutor(task, "fedavg", chunk=0)


@pytest.mark.parametrize("name", ["fedavg", "fedper", "ditto"])
def test_chunked_lockstep_gives_the_unchunked_numbers_bit_for_bit(name, toy, monkeypatch):
    # 4 clients a round of unequal sizes: chunks of 2 batch other clients together at each step (and other
    # last-batch groups) than one lockstep of 4; ditto calls local_sgd twice per client
    import fedarena.sim.vectorized as vectorized

    data, task = toy
    kw = dict(rounds=3, clients_per_round=4, eval_every=3, seed=5, engine="vectorized")
    whole = run_loop(REGISTRY[name](), task, data, **kw)
    monkeypatch.setattr(vectorized, "LOCKSTEP_CHUNK", 2)
    chunked = run_loop(REGISTRY[name](), task, data, **kw)
    assert chunked.engine["batched_sgd_calls"] == whole.engine["batched_sgd_calls"] > 0
    assert chunked.engine["single_sgd_calls"] == whole.engine["single_sgd_calls"]
    assert all(torch.equal(whole.server.params[k], chunked.server.params[k]) for k in whole.server.params)
    for c in whole.states:
        a, b = whole.states[c].params, chunked.states[c].params
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert whole.evaluations[-1].per_client_acc == chunked.evaluations[-1].per_client_acc
    assert whole.evaluations[-1].per_client_loss == chunked.evaluations[-1].per_client_loss
