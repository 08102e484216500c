"""The lstm (integer inputs, a recurrence) trains batched on the vectorized engine and equals the reference.

Same tolerance as test_vectorized.py: parameters after a few rounds within atol 1e-5, per-client accuracies
within one test sample, identical bytes and sampling.
"""

import logging

import pytest
import torch
from running import assert_engines_agree, run_loop

from fedarena.algorithms import REGISTRY
from fedarena.core.types import SGD, FederatedData
from fedarena.tasks import make_task

ATOL = 1e-5
VOCAB, SEQ = 12, 10


def char_federation(sizes_train, sizes_test, seed=0) -> FederatedData:
    """Each client's text comes from its own Markov chain over VOCAB characters (a little non-IID); samples
    are SEQ-character windows (int64) labelled with the next character."""
    g = torch.Generator().manual_seed(seed)
    parts = {"xs": [], "ys": [], "xt": [], "yt": []}
    for n, m in zip(sizes_train, sizes_test):
        chain = torch.softmax(3 * torch.randn(VOCAB, VOCAB, generator=g), dim=1)
        text = [int(torch.randint(0, VOCAB, (1,), generator=g))]
        for _ in range(n + m + SEQ):
            text.append(int(torch.multinomial(chain[text[-1]], 1, generator=g)))
        windows = torch.tensor([text[i : i + SEQ] for i in range(n + m)], dtype=torch.int64)
        labels = torch.tensor([text[i + SEQ] for i in range(n + m)], dtype=torch.int64)
        parts["xs"].append(windows[:n])
        parts["ys"].append(labels[:n])
        parts["xt"].append(windows[n:])
        parts["yt"].append(labels[n:])

    def offsets(sizes):
        return tuple(torch.tensor([0, *sizes]).cumsum(0).tolist())

    return FederatedData(
        name="chars", client_ids=tuple(str(i) for i in range(len(sizes_train))),
        x_train=torch.cat(parts["xs"]), y_train=torch.cat(parts["ys"]), train_offsets=offsets(sizes_train),
        x_test=torch.cat(parts["xt"]), y_test=torch.cat(parts["yt"]), test_offsets=offsets(sizes_test),
        num_classes=VOCAB, partition="toy",
    )


@pytest.fixture(scope="module")
def chars():
    # unequal sizes: different step counts and last-batch sizes per client
    data = char_federation([30, 23, 41, 25, 7, 12], [10, 9, 10, 11, 5, 6], seed=2)
    return data, make_task("lstm", (SEQ,), VOCAB, SGD(1, 4, 0.5), hidden=16)



@pytest.mark.parametrize("name", ["fedavg", "fedper", "fedrep", "ditto", "fedprox"])
def test_lstm_parity_and_no_fallback(name, chars, caplog, one_torch_thread):
    data, task = chars
    kw = dict(rounds=3, clients_per_round=4, eval_every=1, seed=11, new_clients=[5])
    ref = run_loop(REGISTRY[name](), task, data, engine="reference", **kw)
    with caplog.at_level(logging.WARNING, logger="fedarena"):
        vec = run_loop(REGISTRY[name](), task, data, engine="vectorized", **kw)
    assert "vectorized engine" not in caplog.text
    assert vec.engine["name"] == "vectorized" and vec.engine["notes"] == [] and vec.engine["fallback"] is None
    assert vec.engine["batched_sgd_calls"] > 0 and vec.engine["single_sgd_calls"] == 0
    assert_engines_agree(ref, vec, ATOL)


def test_summary_engine_entry_names_the_engine_that_trained(chars, one_torch_thread):
    """runs[].engine: vectorized when batched; DP-SGD (Opacus, int64 inputs) runs client by client, so that run
    is named reference with the logged reason, and equals the reference engine's."""
    from fedarena.experiments.summary import engine_entry
    from fedarena.privacy.dpsgd import DPSGD, SampleLevel

    data, task = chars
    kw = dict(rounds=1, clients_per_round=3, eval_every=1, seed=4)
    vec = run_loop(REGISTRY["fedavg"](), task, data, engine="vectorized", **kw)
    assert engine_entry(vec.engine, "vectorized") == {"name": "vectorized", "fallback": None, "device": "cpu"}
    ref = run_loop(REGISTRY["fedavg"](), task, data, engine="reference", **kw)
    assert engine_entry(ref.engine, "vectorized") == {"name": "reference", "fallback": None, "device": "cpu"}
    private = run_loop(REGISTRY["fedavg"](), task, data, engine="vectorized", dpsgd=SampleLevel(DPSGD(1.0, 1.0)), **kw)
    entry = engine_entry(private.engine, "vectorized")
    assert entry["name"] == "reference" and "DP-SGD" in entry["fallback"]
    private_ref = run_loop(REGISTRY["fedavg"](), task, data, engine="reference", dpsgd=SampleLevel(DPSGD(1.0, 1.0)),
                           **kw)
    assert all(torch.equal(private.server.params[k], private_ref.server.params[k]) for k in private.server.params)
    assert engine_entry({"runtime": "flower"}, "flower-sim") == {"name": "flower-sim", "fallback": None, "device": None}
