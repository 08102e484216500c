"""The round loop: client sampling, the byte ledger, evaluation summaries."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from running import run_loop
from toy import classification_task, federation

from fedarena.algorithms import REGISTRY
from fedarena.core.codec import Ledger, decode, encode
from fedarena.core.types import Broadcast, FedarenaError, Upload
from fedarena.sim.engine import Evaluation, sample_clients


def test_sampling_is_seeded_sized_and_sorted():
    ids = range(50)
    a = sample_clients(1, 5, ids, 10)
    assert a == sample_clients(1, 5, ids, 10) and a == sorted(a) and len(set(a)) == 10
    assert a != sample_clients(2, 5, ids, 10) and a != sample_clients(1, 6, ids, 10)
    assert sample_clients(1, 5, range(7), 7) == list(range(7))
    # a client's priority is its own: dropping others from the population keeps its rank order
    evens = sample_clients(1, 5, range(0, 50, 2), 5)
    assert set(evens) <= set(range(0, 50, 2)) and len(evens) == 5


def test_removing_a_client_never_changes_who_else_is_sampled():
    for rnd in range(1, 30):
        full = sample_clients(3, rnd, range(40), 8)
        without = sample_clients(3, rnd, range(40), 8, exclude=[17])
        assert without == [c for c in full if c != 17]


def test_ledger_counts_exact_encoded_bytes():
    ledger = Ledger()
    msg = Broadcast(params={"w": torch.zeros(10, 3)})
    got = ledger.send_down(1, 4, msg)
    assert ledger.down[(1, 4)] == len(encode(msg)) > 120  # 120 bytes of float32 plus the header
    assert torch.equal(got.params["w"], msg.params["w"])
    assert ledger.send_up(1, 4, Upload()) == Upload() and ledger.up[(1, 4)] == 0  # nothing sent


@pytest.mark.parametrize("payload", [b"\x05", b"\xff" * 16, encode(Broadcast(params={"w": torch.ones(2)}))])
def test_decode_rejects_malformed_or_wrong_kind(payload):
    with pytest.raises(FedarenaError):
        decode(payload, Upload)


def test_decode_rejects_non_finite():
    with pytest.raises(FedarenaError, match="NaN or Inf"):
        decode(encode(Upload(params={"w": torch.tensor([1.0, float("nan")])}, num_samples=1)), Upload)


def test_evaluation_summaries():
    e = Evaluation(1, None, list(range(11)), [1.0, 0.5, 0.0, 0.25] + [1.0] * 7, [0.0] * 11, [10, 2, 4, 4] + [1] * 7, None)
    assert e.personal_acc_mean == pytest.approx((10 + 1 + 0 + 1 + 7) / 27)
    assert e.personal_acc_worst10 == pytest.approx((0.0 + 0.25) / 2)  # ceil(1.1) = 2 clients
    assert e.personal_acc_std == pytest.approx(torch.tensor(e.per_client_acc).std(unbiased=False).item())


def test_fedavg_bytes_per_round_match_model_size():
    data = federation([20, 20, 20], [5, 5, 5])
    task = classification_task(data)
    run = run_loop(REGISTRY["fedavg"](), task, data, rounds=2, clients_per_round=2, eval_every=2, seed=0)
    model_bytes = sum(v.numel() * 4 for v in task.init_params(torch.Generator()).values())
    assert len(run.ledger.down) == 4 and len(run.ledger.up) == 4
    for v in [*run.ledger.down.values(), *run.ledger.up.values()]:
        assert model_bytes < v < model_bytes + 1024
    assert [e.round for e in run.evaluations] == [2]
    assert all(math.isfinite(x) for x in run.train_seconds)


def test_upload_size_does_not_depend_on_reported_values():
    params = {"w": torch.zeros(3)}
    sizes = {len(encode(Upload(params=params, num_samples=5, metrics={"train_loss": v, "steps": 7.0})))
             for v in (0.1, 1 / 3, 12345.678, 2.0**-20, 0.0)}
    assert len(sizes) == 1
    back = decode(encode(Upload(params=params, num_samples=5, metrics={"train_loss": 1 / 3})), Upload)
    assert back.metrics["train_loss"] == 1 / 3  # 17 significant digits: exact round trip


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 12), min_size=0, max_size=3), min_size=0, max_size=4),
    num_samples=st.integers(0, 10**7),
    loss=st.floats(allow_nan=False, allow_infinity=False),
    extra=st.booleans(),
)
def test_unverified_ledger_counts_what_encoding_would(shapes, num_samples, loss, extra):
    """The vectorized engine's ledger encodes an upload once per structure; every later upload of that
    structure must be counted at exactly its own encoded length."""
    params = {f"layer{i}.w": torch.rand(tuple(s)) for i, s in enumerate(shapes)}
    extras = {"c": torch.arange(3)} if extra else {}
    ledger = Ledger(verify=False)
    for rnd, metrics in enumerate([{"train_loss": 0.0}, {"train_loss": loss, "steps": 3.0}, {"train_loss": -loss}], 1):
        other_n = (num_samples + 1) % 10 if num_samples < 10 else 10 ** (len(str(num_samples)) - 1)  # same digits
        first = Upload(params={k: torch.zeros_like(v) for k, v in params.items()}, num_samples=other_n, extra=extras,
                       metrics={k: -v for k, v in metrics.items()})  # other values, the same printed widths
        ledger.send_up(rnd, 0, first)  # primes the size cache
        cached = len(ledger._sizes)
        msg = Upload(params=params, num_samples=num_samples, extra=extras, metrics=metrics)
        assert ledger.send_up(rnd, 1, msg) is msg
        assert len(ledger._sizes) == cached  # counted from the cache, not encoded again
        assert ledger.up[(rnd, 1)] == len(encode(msg))
