"""Membership inference on the personal and the global model (privacy/leakage.py), as runs report it."""

import dataclasses

import pytest
import torch
from running import run_loop
from toy import classification_task, federation

from fedarena.algorithms import REGISTRY
from fedarena.core.local_train import local_sgd
from fedarena.core.types import SGD
from fedarena.privacy import leakage


def test_a_model_that_memorized_its_client_is_detected_and_an_untrained_one_is_not():
    data = federation([12, 12], [40, 40], features=16, classes=3, seed=1)
    g = torch.Generator().manual_seed(1)  # labels unrelated to inputs: only memorizing fits the train split
    data = dataclasses.replace(data, y_train=torch.randint(0, 3, data.y_train.shape, generator=g),
                               y_test=torch.randint(0, 3, data.y_test.shape, generator=g))
    d = data.client(0)
    task = classification_task(data)
    start = task.init_params(torch.Generator().manual_seed(0))
    memorized, _, _ = local_sgd(lambda p, batch: task.loss(p, *batch), start, task.parameter_names,
                                d.x_train, d.y_train, SGD(400, 12, 0.5), torch.Generator().manual_seed(0))
    own, shared = leakage.client_membership(task, memorized, start, d)
    assert own > 0.8  # the personal model tells its training samples apart
    assert abs(shared - 0.5) < 0.2  # the untrained "global" model does not
    assert leakage.client_membership(task, memorized, None, d)[1] is None


def test_summary_skips_unmeasured_clients():
    s = leakage.summarize([0.6, None, 0.8], [0.5, None, None])
    assert s["clients"] == 2 and s["personal_auc_mean"] == pytest.approx(0.7) and s["personal_auc_max"] == 0.8
    assert s["global_auc_mean"] == 0.5
    assert leakage.summarize([], [])["personal_auc_mean"] is None


@pytest.mark.parametrize("name", ["fedavg", "fedper"])
def test_runs_report_membership_of_their_final_models(name):
    data = federation([30, 30, 30], [20, 20, 20], seed=2)
    run = run_loop(REGISTRY[name](), classification_task(data), data, rounds=2, clients_per_round=2,
                        eval_every=1, seed=0)
    m = run.membership
    assert m["clients"] == 3 and 0 <= m["personal_auc_mean"] <= 1
    if name == "fedavg":  # one model for everyone: its personal model is the global model
        assert m["global_auc_mean"] == m["personal_auc_mean"]
    else:
        assert m["global_auc_mean"] is None
