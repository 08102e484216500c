"""Hand-checkable cases with exact numbers (2 clients, y = w x, MSE, lr 0.1, batch 1, 1 epoch).

Client 0 holds one sample (x=1, y=2); client 1 holds three copies of (x=2, y=-1); w0 = 0.5.
The gradient of (w x - y)^2 is 2 x (w x - y).
"""

import pytest
import torch
from toy import linear_regression_task

from fedarena.algorithms import REGISTRY
from fedarena.core.types import ClientData, Upload

W0 = 0.5


def data(x, y):
    x = torch.tensor(x).reshape(-1, 1)
    y = torch.tensor(y).reshape(-1, 1)
    return ClientData(x, y, x, y)


CLIENTS = [data([1.0], [2.0]), data([2.0, 2.0, 2.0], [-1.0, -1.0, -1.0])]


def one_round(algo, task):
    server = algo.init_server({"head.weight": torch.tensor([[W0]])})
    uploads, states = {}, {}
    for c, d in enumerate(CLIENTS):
        state = algo.init_client({"head.weight": torch.tensor([[W0]])})
        uploads[c], states[c] = algo.client_update(task, algo.broadcast(server, c), state, d, torch.Generator().manual_seed(c))
    return algo.aggregate(server, uploads), uploads, states


def w(params):
    return params["head.weight"].item()


def test_fedavg_hand_checked():
    # client 0: 0.5 - 0.1 * 2*1*(0.5-2) = 0.8
    # client 1: 0.5 -> -0.3 -> -0.46 -> -0.492 (grad 4(2w+1) each step)
    # aggregate: (1 * 0.8 + 3 * -0.492) / 4 = -0.169
    server, uploads, _ = one_round(REGISTRY["fedavg"](), linear_regression_task())
    assert w(uploads[0].params) == pytest.approx(0.8, abs=1e-6)
    assert w(uploads[1].params) == pytest.approx(-0.492, abs=1e-6)
    assert [uploads[0].num_samples, uploads[1].num_samples] == [1, 3]
    assert w(server.params) == pytest.approx(-0.169, abs=1e-6)


def test_fedprox_hand_checked():
    # gradient adds mu (w - w0) with mu = 1; client 1: 0.5 -> -0.3 -> -0.38 -> -0.388
    # aggregate: (0.8 + 3 * -0.388) / 4 = -0.091
    server, uploads, _ = one_round(REGISTRY["fedprox"](mu=1.0), linear_regression_task())
    assert w(uploads[0].params) == pytest.approx(0.8, abs=1e-6)
    assert w(uploads[1].params) == pytest.approx(-0.388, abs=1e-6)
    assert w(server.params) == pytest.approx(-0.091, abs=1e-6)


def test_local_hand_checked():
    # each client keeps its own model; nothing is uploaded and the server has no model
    algo = REGISTRY["local"]()
    server, uploads, states = one_round(algo, linear_regression_task())
    assert all(u.params == {} for u in uploads.values())
    assert w(states[0].params) == pytest.approx(0.8, abs=1e-6)
    assert w(states[1].params) == pytest.approx(-0.492, abs=1e-6)
    assert algo.global_model(server) is None


def test_fedavg_ft_hand_checked():
    # training is FedAvg's (global -0.169); client 0 then fine-tunes one epoch:
    # -0.169 - 0.1 * 2*1*(-0.169-2) = 0.2648
    algo = REGISTRY["fedavg-ft"](epochs=1)
    task = linear_regression_task()
    server, _, states = one_round(algo, task)
    assert w(server.params) == pytest.approx(-0.169, abs=1e-6)
    tuned = algo.personalize(task, algo.broadcast(server, 0), states[0], CLIENTS[0], torch.Generator())
    assert w(tuned) == pytest.approx(0.2648, abs=1e-6)
    zero = REGISTRY["fedavg-ft"](epochs=0).personalize(task, algo.broadcast(server, 0), states[0], CLIENTS[0], None)
    assert w(zero) == pytest.approx(-0.169, abs=1e-6)


def test_centralized_hand_checked():
    # one full batch of the pooled 4 samples: mean grad = (-3 + 3 * 8) / 4 = 5.25 -> 0.5 - 0.525
    algo = REGISTRY["centralized"]()
    task = linear_regression_task(batch_size=4)
    pooled = ClientData(*(torch.cat([getattr(d, f) for d in CLIENTS]) for f in ("x_train", "y_train", "x_test", "y_test")))
    server = algo.init_server({"head.weight": torch.tensor([[W0]])})
    up, _ = algo.client_update(task, algo.broadcast(server, 0), algo.init_client({}), pooled, torch.Generator())
    server = algo.aggregate(server, {0: up})
    assert w(server.params) == pytest.approx(-0.025, abs=1e-6)
    assert algo.federated is False


def test_aggregate_ignores_empty_uploads():
    algo = REGISTRY["fedavg"]()
    server = algo.init_server({"head.weight": torch.tensor([[W0]])})
    assert w(algo.aggregate(server, {0: Upload()}).params) == W0
