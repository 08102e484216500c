"""Fuzzing the Flower reply path (issue #18, item 4): what a SuperNode sends the ServerApp.

Targets: the upload codec and its validation (`records.decode_upload`: random bytes, mutated encodings,
safetensors files built tensor by tensor with wrong names, dtypes, shapes, NaN/Inf and metadata), the record
accessors (`records.fields`, `payload`, `number`), a node's describe reply (`Described.parse`, then the
server's stand-in data built from it), the evaluate reply, and the one function that filters a round's train
replies (`FlowerClients.train`, behind a fake link as in tests/flower/test_runtime.py): with valid and fuzzed
replies mixed, exactly the valid ones come back and FedPer's server step averages exactly them.

Property everywhere: a malformed input raises FedarenaError whose message names what is wrong (the entry,
tensor, key or client: checked against an oracle of the defects each input carries), nothing else escapes,
and every accepted input is well-formed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from fuzzing import fuzz, sizes
from hypothesis import strategies as st
from uploads import (
    MAX_SAMPLES,
    MODEL,
    SHARED,
    assert_well_formed,
    decode,
    decode_or_reason,
    encoded,
    honest,
    mutated,
    reasons,
    structured,
)

from fedarena import config as cfg
from fedarena.algorithms import REGISTRY
from fedarena.core.codec import encode
from fedarena.core.types import FedarenaError, ServerState, Upload
from fedarena.flower import messages as m
from fedarena.flower import records
from fedarena.flower.described import Described, stand_in
from fedarena.flower.server_app import FlowerClients


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower stamps messages with the process's task identity (set by its runtimes); set one here."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 7), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value, raising=False)


# ------------------------------------------------------------------------- the codec and its validation


@sizes(200, 1500)
def test_built_uploads_are_accepted_exactly_when_valid_and_refused_naming_a_defect(n):
    def check(case):
        tensors, meta = case
        expected = reasons(tensors, meta)
        try:
            up = decode(encoded(tensors, meta))
        except FedarenaError as exc:
            assert expected, f"a valid upload was refused: {exc}"
            assert any(r in str(exc) for r in expected), f"{exc!s} names none of {expected}"
            return "refused"
        assert not expected, f"accepted an upload with defects {expected}"
        assert_well_formed(up)
        return "accepted"

    fuzz("messages.upload-built", n, structured(), check)


@sizes(200, 1500)
def test_mutated_encodings_are_refused_or_well_formed(n):
    fuzz("messages.upload-mutated", n, mutated(), decode_or_reason)


@sizes(100, 500)
def test_random_bytes_are_refused(n):
    header = st.builds(lambda text, rest: len(text).to_bytes(8, "little") + text + rest,
                       st.text(max_size=40).map(str.encode), st.binary(max_size=40))
    fuzz("messages.upload-bytes", n, st.one_of(st.binary(max_size=300), header), decode_or_reason)


# ------------------------------------------------------------------------- record entries

SCALARS = st.one_of(st.integers(-2**70, 2**70), st.floats(), st.text(max_size=5), st.binary(max_size=5), st.booleans(),
                    st.lists(st.integers(-5, 5), max_size=3), st.lists(st.floats(), max_size=2),
                    st.lists(st.text(max_size=2), max_size=2), st.lists(st.booleans(), max_size=2),
                    st.lists(st.binary(max_size=2), max_size=2))
KEYS = st.sampled_from([m.ROUND, m.CLIENT, m.COMPUTE_S, m.STATE_BYTES, m.PAYLOAD, f"{m.PAYLOAD}-{m.GLOBAL}", m.ACC,
                        "other"])


@sizes(150, 1000)
def test_record_entries_are_typed_or_refused_by_name(n):
    def check(record):
        went = "accepted"
        for key in (m.ROUND, m.COMPUTE_S):
            for kind in (int, float):
                try:
                    value = records.number(record, key, kind)
                except FedarenaError as exc:
                    assert repr(key) in str(exc) and kind.__name__ in str(exc)
                    went = "refused"
                    continue
                assert type(value) is kind and math.isfinite(value)
                assert value == kind(record[key]) and not isinstance(record[key], bool)  # an int read as a float rounds
        for name in ("", m.GLOBAL):
            try:
                assert isinstance(records.payload(record, name), bytes)
            except FedarenaError as exc:
                assert m.payload_entry(name) in str(exc)
        msg = _Received(records.content(record))
        assert records.fields(msg) == record
        with pytest.raises(FedarenaError, match="no content"):
            records.fields(_Received(None))
        return went

    fuzz("messages.record-entries", n, st.dictionaries(KEYS, SCALARS, max_size=6), check)


class _Received:
    """A received message as `records.fields` sees it."""

    def __init__(self, content):
        self.content, self.error = content, "lost"

    def has_content(self) -> bool:
        return self.content is not None


# ------------------------------------------------------------------------- describe replies

DESCRIBE_VALID = {m.CLIENT_ID: "c1", m.INDEX: 0, m.NUM_TRAIN: 6, m.NUM_TEST: 2, m.NUM_CLASSES: 3,
                  m.LABEL_COUNTS: [1, 2, 3], m.INPUT_SHAPE: [4]}
DESCRIBE_BAD = {
    m.CLIENT_ID: st.one_of(st.text(max_size=6), st.integers(), st.sampled_from(["", "..", "a/b", "a\\b", "x\x00"])),
    m.INDEX: st.one_of(st.integers(-3, 3), st.integers(-2**70, 2**70), SCALARS),
    m.NUM_TRAIN: st.one_of(st.integers(-3, 8), st.integers(-2**70, 2**70), SCALARS),
    m.NUM_TEST: st.one_of(st.integers(-3, 3), SCALARS),
    m.NUM_CLASSES: st.one_of(st.integers(-3, 5), st.integers(2**40, 2**70), SCALARS),
    m.LABEL_COUNTS: st.one_of(st.lists(st.integers(-3, 6), max_size=5), st.lists(st.integers(-2**70, 2**70), max_size=3),
                              SCALARS),
    m.INPUT_SHAPE: st.one_of(st.lists(st.integers(-2, 5), max_size=4), SCALARS),
}


@st.composite
def describe_reply(draw) -> dict[str, Any]:
    record = dict(DESCRIBE_VALID)
    for key in draw(st.lists(st.sampled_from(sorted(DESCRIBE_BAD)), max_size=3, unique=True)):
        if draw(st.integers(0, 5)):
            record[key] = draw(DESCRIBE_BAD[key])
        else:
            del record[key]
    if draw(st.integers(0, 5)) == 0:
        record[draw(st.text(max_size=4))] = draw(SCALARS)
    return record


@sizes(150, 1000)
def test_describe_replies_are_parsed_or_refused_naming_the_node(n):
    config = cfg.Config()

    def check(record):
        try:
            d = Described.parse(7, record)
        except FedarenaError as exc:
            assert "node 7" in str(exc), exc
            return "refused"
        assert d.num_train >= 1 and d.num_test >= 1 and d.num_classes >= 1 and d.client_id
        assert all(c >= 0 for c in d.label_counts) and sum(d.label_counts) == d.num_train
        assert len(d.label_counts) <= d.num_classes and d.input_shape and min(d.input_shape) >= 1
        assert "/" not in d.client_id and d.client_id not in (".", "..")
        data = stand_in(config, [d], {})  # what the server builds from it
        assert data.num_clients == 1 and data.num_classes == d.num_classes and len(data.y_train) == d.num_train
        return "accepted"

    fuzz("messages.describe", n, describe_reply(), check)


# ------------------------------------------------------------------------- a round's train replies


@dataclass(frozen=True)
class _Node:
    client_id: str
    num_train: int = MAX_SAMPLES
    num_test: int = 5


@dataclass(frozen=True)
class _Settings:
    round_timeout: float = 1.0
    eval_timeout: float = 1.0


@dataclass
class _Link:
    """Answers each client with its scripted reply (None: no reply); the messages are real Flower records."""

    replies: dict
    settings: _Settings = field(default_factory=_Settings)
    clients: dict = field(default_factory=dict)
    deployment: str = ""

    def exchange(self, msgs, timeout, follow_reconnects=False):
        from flwr.app import Message

        out = {}
        for key, (kind, _) in msgs.items():
            reply = self.replies.get(key)
            if reply is not None:
                out[key] = Message(reply, dst_node_id=key, message_type=kind)
        return out, 0.01

    def refresh(self):
        return set()


def train_fields(rnd: int, c: int) -> dict[str, Any]:
    return {m.ROUND: rnd, m.CLIENT: c, m.COMPUTE_S: 0.25, m.STATE_BYTES: 48}


BAD_FIELDS = {m.COMPUTE_S: st.one_of(st.sampled_from([-1.0, float("nan"), float("inf"), True]), SCALARS),
              m.STATE_BYTES: st.one_of(st.sampled_from([-1, 2.5, False, "48"]), st.integers(-2**70, -1), SCALARS)}


@st.composite
def train_reply(draw, rnd: int, c: int) -> tuple[Any, Upload | None]:
    """(the reply's content, the upload when the reply is valid); kinds: honest, a fuzzed payload, fuzzed fields,
    a payload that is not bytes, no fedarena record."""
    kind = draw(st.sampled_from(["honest", "honest", "built", "mutated", "fields", "not-bytes", "no-record"]))
    up = draw(honest())
    fields_ = train_fields(rnd, c)
    if kind == "honest":
        return records.content(fields_, encode(up)), up
    if kind == "built":
        tensors, meta = draw(structured())
        data = encoded(tensors, meta)
        return records.content(fields_, data), (decode(data) if not reasons(tensors, meta) else None)
    if kind == "mutated":
        data = draw(mutated())
        try:
            ok = decode(data)
        except FedarenaError:
            ok = None
        return records.content(fields_, data), ok
    if kind == "fields":
        key = draw(st.sampled_from(sorted(BAD_FIELDS)))
        if draw(st.booleans()):
            del fields_[key]
        else:
            fields_[key] = draw(BAD_FIELDS[key])
        valid = (key in fields_ and not isinstance(fields_[key], bool) and isinstance(fields_[key], (int, float))
                 and math.isfinite(fields_[key]) and fields_[key] >= 0 and (key == m.COMPUTE_S or isinstance(fields_[key], int)))
        return records.content(fields_, encode(up)), up if valid else None
    if kind == "not-bytes":
        return records.content({**fields_, m.PAYLOAD: draw(st.one_of(st.text(max_size=4), st.integers()))}), None
    from flwr.app import ConfigRecord, RecordDict

    return RecordDict({"other": ConfigRecord({m.PAYLOAD: encode(up)})}), None


@st.composite
def round_replies(draw) -> dict[int, tuple[Any, Upload | None]]:
    clients = draw(st.integers(1, 6))
    return {c: draw(train_reply(3, c)) for c in range(clients)}


@sizes(100, 600)
def test_a_round_aggregates_exactly_its_valid_replies(n):
    algo = REGISTRY["fedper"]()
    server = ServerState(params={k: MODEL[k].clone() for k in SHARED})

    def check(replies):
        link = _Link({c: content for c, (content, _) in replies.items()}, clients={c: _Node(f"c{c}") for c in replies})
        runtime = FlowerClients(link, algo, None, list(replies), MODEL, seed=3, num_classes=3)
        valid = {c: up for c, (_, up) in replies.items() if up is not None}
        try:
            got = runtime.train(3, {c: algo.broadcast(server, c) for c in replies})
        except FedarenaError as exc:
            assert not valid and "no client sent a valid reply" in str(exc)
        else:
            assert sorted(got) == sorted(valid)
            for c, up in got.items():
                assert up.num_samples == valid[c].num_samples
                assert all(torch.equal(up.params[k], valid[c].params[k]) for k in SHARED)
            after = algo.aggregate(server, got)  # the round goes on over the valid replies
            total = sum(up.num_samples for up in valid.values())
            mean = sum(up.params["body.w"].double() * up.num_samples for up in valid.values()) / total
            assert torch.allclose(after.params["body.w"].double(), mean, atol=1e-5, rtol=1e-6)
        rejected = {r["client"]: r["reason"] for r in runtime.rejected}
        assert sorted(rejected) == sorted(f"c{c}" for c in replies if c not in valid)
        assert all(reason for reason in rejected.values())
        assert {e["kind"]: e["replied"] for e in runtime.exchanges}.get("train", 0) == len(valid)
        return {"valid replies": len(valid), "rejected replies": len(replies) - len(valid)}

    fuzz("messages.train-round", n, round_replies(), check)


# ------------------------------------------------------------------------- evaluate replies

EVAL_BAD = {m.ACC: st.one_of(st.floats(-1, 2), SCALARS), m.LOSS: st.one_of(st.floats(), SCALARS),
            m.NUM_TEST: st.one_of(st.integers(-2, 7), SCALARS), m.NUM_VAL: st.one_of(st.integers(-2, 3), SCALARS),
            m.VAL_ACC: st.one_of(st.floats(-1, 2), SCALARS), m.GLOBAL_ACC: st.one_of(st.floats(-1, 2), SCALARS),
            m.COMPUTE_S: st.one_of(st.floats(-1, 1), SCALARS)}


@st.composite
def evaluate_reply(draw) -> dict[str, Any]:
    record = {m.ROUND: 2, m.CLIENT: 0, m.ACC: 0.5, m.LOSS: 1.25, m.NUM_TEST: 5, m.NUM_VAL: 0, m.COMPUTE_S: 0.1}
    for key in draw(st.lists(st.sampled_from(sorted(EVAL_BAD)), max_size=3, unique=True)):
        if draw(st.integers(0, 4)):
            record[key] = draw(EVAL_BAD[key])
        else:
            record.pop(key, None)
    return record


@sizes(100, 800)
def test_evaluate_replies_are_consistent_or_refused(n):
    algo = REGISTRY["fedper"]()

    def check(record):
        link = _Link({0: records.content(record)}, clients={0: _Node("c0")})
        runtime = FlowerClients(link, algo, None, [0], MODEL, seed=3, num_classes=3)
        try:
            got = runtime.evaluate(2, {0: algo.broadcast(ServerState(params={}), 0)}, None)
        except FedarenaError as exc:
            assert "c0" in str(exc) or "record entry" in str(exc), exc
            return "refused"
        e = got[0]
        assert 0 <= e.acc <= 1 and math.isfinite(e.loss) and e.num_test == 5 and e.global_acc is None
        assert e.num_val >= 0 and (e.val_acc is None) == (e.num_val == 0)
        return "accepted"

    fuzz("messages.evaluate", n, evaluate_reply(), check)
