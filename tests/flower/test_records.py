"""The Flower payload codec and the validation of replies (fast: no process is started)."""

from __future__ import annotations

import pytest
import torch

from fedarena.core.codec import Ledger, encode
from fedarena.core.types import Broadcast, FedarenaError, KeyFilter, Upload
from fedarena.flower import records

MODEL = {"body.w": torch.zeros(3, 2), "head.w": torch.zeros(2, 3), "head.b": torch.zeros(2)}
PERSONAL = KeyFilter(("head.*",))


class _Received:
    """A received Flower message as `fields` sees it (flwr's Message needs a live run to be built)."""

    def __init__(self, content):
        self.content, self.error = content, None

    def has_content(self) -> bool:
        return self.content is not None


def _upload(**kw) -> Upload:
    base = dict(params={"body.w": torch.ones(3, 2)}, num_samples=5, metrics={"train_loss": 0.5})
    return Upload(**{**base, **kw})


def _decode(upload: Upload, uploads_personal: bool = False) -> Upload:
    return records.decode_upload(encode(upload), MODEL, PERSONAL, uploads_personal, max_samples=10)


def test_payload_travels_as_the_exact_codec_bytes():
    b = Broadcast(params={"body.w": torch.arange(6.0).reshape(3, 2)}, extra={"c/body.w": torch.ones(3, 2)})
    data = records.encode_broadcast(b)
    msg = _Received(records.content({"round": 3, "client": 1}, data, glob=records.encode_params(MODEL)))
    got = records.fields(msg)
    assert records.payload(got) == data == encode(b)
    assert records.number(got, "round") == 3
    back = records.decode_broadcast(records.payload(got))
    assert torch.equal(back.params["body.w"], b.params["body.w"]) and set(back.extra) == {"c/body.w"}
    assert set(records.decode_params(records.payload(got, "glob"))) == set(MODEL)
    empty = _Received(records.content({"round": 1}))
    assert records.payload(records.fields(empty)) == b"" and records.decode_params(b"") is None
    with pytest.raises(FedarenaError, match="no content"):
        records.fields(_Received(None))


def test_valid_uploads_pass():
    assert _decode(_upload()).num_samples == 5
    scaffold = _upload(extra={"c/body.w": torch.zeros(3, 2)})
    assert set(_decode(scaffold).extra) == {"c/body.w"}
    ifca = _upload(extra={"cluster": torch.tensor(1)})
    assert int(_decode(ifca).extra["cluster"]) == 1
    mocha = _upload(params={"head.w": torch.ones(2, 3), "head.b": torch.ones(2)})
    assert set(_decode(mocha, uploads_personal=True).params) == {"head.w", "head.b"}


@pytest.mark.parametrize(("upload", "reason"), [
    (_upload(params={"body.v": torch.ones(3, 2)}), "unknown key params/body.v"),
    (_upload(params={"head.b": torch.ones(2)}), "personal key params/head.b"),
    (_upload(params={"body.w": torch.ones(2, 3)}), "shape"),
    (_upload(params={"body.w": torch.ones(3, 2, dtype=torch.float64)}), "dtype"),
    (_upload(params={"body.w": torch.full((3, 2), float("nan"))}), "NaN or Inf"),
    (_upload(params={"body.w": torch.full((3, 2), float("inf"))}), "NaN or Inf"),
    (_upload(num_samples=10**9), "num_samples"),
    (_upload(num_samples=0), "num_samples"),
    (_upload(extra={"junk": torch.zeros(4)}), "unknown key extra/junk"),
    (_upload(extra={"c/body.w": torch.zeros(2)}), "shape"),
    (_upload(metrics={"train_loss": float("nan")}), "metrics finite"),
])
def test_bad_uploads_are_rejected_with_a_reason(upload, reason):
    with pytest.raises(FedarenaError, match=reason):
        _decode(upload)


def test_an_upload_missing_a_key_is_refused():
    """Found by fuzzing (tests/fuzz): an upload without one of the shared keys passed validation, and FedAvg's
    weighted mean then raised KeyError, or dropped the key from the global model when that upload came first."""
    with pytest.raises(FedarenaError, match=r"upload lacks params/body.w \(1 of the model's shared keys missing\)"):
        _decode(_upload(params={}))
    with pytest.raises(FedarenaError, match=r"upload lacks params/head.w"):  # MOCHA uploads every personal key
        _decode(_upload(params={"head.b": torch.ones(2)}), uploads_personal=True)
    with pytest.raises(FedarenaError, match=r"shared key params/body.w"):
        _decode(_upload(params={"body.w": torch.ones(3, 2), "head.w": torch.ones(2, 3), "head.b": torch.ones(2)}),
                uploads_personal=True)


def test_garbage_and_pickles_are_refused():
    import pickle

    for data in (b"\x00" * 3, pickle.dumps({"body.w": [1.0]}), encode(Broadcast(params={"body.w": torch.ones(3, 2)}))):
        with pytest.raises(FedarenaError):
            records.decode_upload(data, MODEL, PERSONAL, False, 10)
    with pytest.raises(FedarenaError, match="must be bytes"):
        records.payload({"payload": "text"})
    with pytest.raises(FedarenaError, match="finite int"):
        records.number({"round": True}, "round")
    with pytest.raises(FedarenaError, match=r"'state-bytes' must be >= 0, got -1"):
        records.number({"state-bytes": -1}, "state-bytes", least=0)


def test_ledger_record_counts_by_direction():
    ledger = Ledger()
    ledger.record(1, 0, "down", 100)
    ledger.record(1, 0, "down", 20)
    ledger.record(1, 0, "up", 7)
    assert ledger.down == {(1, 0): 120} and ledger.up == {(1, 0): 7} and ledger.cumulative(1) == [127]
    with pytest.raises(ValueError):
        ledger.record(1, 0, "sideways", 1)
