"""The Flower runtime's replies it validates itself: onboarding of new clients and the final states a flower-sim
run fetches from its virtual nodes (a fake link stands in for the Grid; the messages are real Flower records)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from flwr.app import Message

from fedarena.algorithms import REGISTRY
from fedarena.core.codec import encode
from fedarena.core.types import Broadcast, ClientState, FedarenaError, Upload
from fedarena.flower import common, records
from fedarena.flower import messages as m
from fedarena.flower.server_app import FlowerClients

MODEL = {"body.weight": torch.ones(2, 3), "head.weight": torch.zeros(4, 2)}


@dataclass(frozen=True)
class _Node:
    client_id: str
    num_test: int = 5
    num_train: int = 10


@dataclass(frozen=True)
class _Settings:
    round_timeout: float = 1.0
    eval_timeout: float = 1.0


@dataclass
class _Link:
    """Answers each message with `answer(key, message type, record)`; records what was sent."""

    answer: object
    settings: _Settings = field(default_factory=_Settings)
    clients: dict = field(default_factory=lambda: {c: _Node(f"c{c}") for c in range(4)})
    sent: list = field(default_factory=list)
    deployment: str = ""

    def exchange(self, msgs, timeout, follow_reconnects=False):
        replies = {}
        for key, (kind, content) in msgs.items():
            self.sent.append((key, kind))
            reply = self.answer(key, kind, dict(content.config_records[m.RECORD]))
            if reply is not None:
                replies[key] = Message(records.content(*reply), dst_node_id=key, message_type=kind)
        return replies, 0.01

    def refresh(self):
        return set()


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower stamps messages with the process's task identity (set by its runtimes); set one here."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 7), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value, raising=False)


def _runtime(answer, name="fedper", fetch=False):
    algo = REGISTRY[name]()
    return FlowerClients(_Link(answer), algo, None, [0, 1], MODEL, seed=3, num_classes=4, fetch_states=fetch)


def test_onboarding_runs_on_the_new_clients_nodes_and_counts_the_download():
    runtime = _runtime(lambda key, kind, r: ({m.CLIENT: key, m.BEFORE: 0.25, m.AFTER: 0.75, m.STEPS: 4,
                                              m.COMPUTE_S: 0.1},))
    broadcasts = {2: Broadcast(params={"body.weight": torch.ones(2, 3)}), 3: Broadcast(params={})}
    got = runtime.onboard(broadcasts, MODEL)
    assert {c: (e.before, e.after, e.steps) for c, e in got.items()} == {2: (0.25, 0.75, 4), 3: (0.25, 0.75, 4)}
    assert runtime.onboard_bytes == sum(len(encode(b)) for b in broadcasts.values())
    assert runtime.link.sent == [(2, m.ONBOARD), (3, m.ONBOARD)]


@pytest.mark.parametrize("reply, match", [
    ({m.CLIENT: 2, m.BEFORE: 1.5, m.AFTER: 0.5, m.STEPS: 1, m.COMPUTE_S: 0.1}, "inconsistent onboarding"),
    ({m.CLIENT: 2, m.BEFORE: 0.5, m.AFTER: 0.5, m.STEPS: -1, m.COMPUTE_S: 0.1}, "inconsistent onboarding"),
    ({m.CLIENT: 2, m.BEFORE: 0.5, m.STEPS: 1, m.COMPUTE_S: 0.1}, "after"),
])
def test_a_bad_onboarding_reply_is_refused_by_name(reply, match):
    runtime = _runtime(lambda key, kind, r: (reply,))
    with pytest.raises(FedarenaError, match=match):
        runtime.onboard({2: Broadcast(params={})}, MODEL)


def test_a_new_client_that_does_not_answer_is_named():
    runtime = _runtime(lambda key, kind, r: None)
    with pytest.raises(FedarenaError, match=r"new clients \['c2'\] did not reply"):
        runtime.onboard({2: Broadcast(params={})}, MODEL)


def _head(value: float) -> ClientState:
    return ClientState(params={"head.weight": torch.full((4, 2), value)})


def test_flower_sim_fetches_every_training_clients_final_state():
    runtime = _runtime(lambda key, kind, r: ({m.CLIENT: key}, common.state_to_bytes(_head(float(key)))), fetch=True)
    runtime.exchanges.append({"kind": "train"})  # it trained
    runtime.close()
    assert sorted(runtime.states) == [0, 1] and all(
        torch.equal(runtime.states[c].params["head.weight"], torch.full((4, 2), float(c))) for c in (0, 1))
    assert [kind for _, kind in runtime.link.sent] == [m.FETCH_STATE, m.FETCH_STATE]


def test_a_deployment_never_asks_for_its_clients_states():
    runtime = _runtime(lambda key, kind, r: pytest.fail("no message expected"), fetch=False)
    runtime.exchanges.append({"kind": "train"})
    runtime.close()
    assert runtime.states == {}


@pytest.mark.parametrize("payload, match", [
    (b"not safetensors", "malformed final state"),
    (common.state_to_bytes(ClientState(params={"body.weight": torch.ones(2, 3)})), "personal keys or shapes"),
    (common.state_to_bytes(ClientState(params={"head.weight": torch.ones(2, 2)})), "personal keys or shapes"),
])
def test_a_bad_final_state_is_refused_by_name(payload, match):
    runtime = _runtime(lambda key, kind, r: ({m.CLIENT: key}, payload), fetch=True)
    runtime.exchanges.append({"kind": "train"})
    with pytest.raises(FedarenaError, match=match):
        runtime.close()


def test_a_train_reply_with_a_negative_count_is_refused():
    """Found by fuzzing (tests/fuzz): a negative state-bytes or compute-s was recorded as the node's storage and
    compute time; such replies are now refused like any malformed reply, and the round goes on without them."""
    upload = encode(Upload(params={"body.weight": torch.ones(2, 3)}, num_samples=4))
    facts = {0: {m.STATE_BYTES: -1}, 1: {m.COMPUTE_S: -0.5}, 2: {}}
    runtime = _runtime(lambda key, kind, r: ({m.ROUND: 1, m.CLIENT: key, m.COMPUTE_S: 0.1, m.STATE_BYTES: 48,
                                              **facts[key]}, upload))
    got = runtime.train(1, {c: Broadcast(params={}) for c in facts})
    assert sorted(got) == [2] and torch.equal(got[2].params["body.weight"], torch.ones(2, 3))
    assert [(r["client"], r["reason"]) for r in runtime.rejected] == [
        ("c0", "record entry 'state-bytes' must be >= 0, got -1"), ("c1", "record entry 'compute-s' must be >= 0, got -0.5")]


DESCRIBE = {m.CLIENT_ID: "c1", m.INDEX: 0, m.NUM_TRAIN: 6, m.NUM_TEST: 2, m.NUM_CLASSES: 3, m.LABEL_COUNTS: [1, 2, 3],
            m.INPUT_SHAPE: [4]}


@pytest.mark.parametrize("change, match", [
    ({m.LABEL_COUNTS: [-1, 4, 3]}, r"node 5: record entry 'label-counts' must be a list of integers in \[0, "),
    ({m.LABEL_COUNTS: [1, 1, 1, 3]}, r"node 5 describes inconsistent sizes for client c1: 4 label counts"),
    ({m.INPUT_SHAPE: [4, 0]}, r"node 5: record entry 'input-shape' must be a list of integers in \[1, "),
    ({m.INPUT_SHAPE: []}, r"input shape \[\]"),
    ({m.NUM_TRAIN: 2**40, m.LABEL_COUNTS: [2**40]}, r"'num-train' is 1099511627776, beyond 2147483647"),
    ({m.NUM_CLASSES: 0}, r"node 5: record entry 'num-classes' must be >= 1, got 0"),
    ({m.CLIENT_ID: "../c1"}, r"node 5: record entry 'client-id' must be a client name usable as a file name"),
    ({m.CLIENT_ID: 7}, r"'client-id' must be a client name"),
    ({m.CLIENT_ID: None}, r"'client-id' must be a client name"),
    ({m.LABEL_COUNTS: b"\x03\x03"}, r"'label-counts' must be a list of integers"),
])
def test_a_bad_describe_reply_is_refused_by_node_and_entry(change, match):
    """Found by fuzzing (tests/fuzz): negative label counts and more label counts than classes passed
    `Described.parse`, then the server's stand-in data raised a torch RuntimeError; a zero or empty input shape,
    bytes as label counts and a missing client id (read as 'None') were accepted; a missing entry raised
    KeyError and a scalar where a list belongs TypeError."""
    from fedarena.flower.described import Described

    assert Described.parse(5, DESCRIBE).label_counts == (1, 2, 3)
    with pytest.raises(FedarenaError, match=match):
        Described.parse(5, {**DESCRIBE, **change})
    with pytest.raises(FedarenaError, match=r"node 5: record entry 'input-shape' must be a list"):
        Described.parse(5, {k: v for k, v in DESCRIBE.items() if k != m.INPUT_SHAPE})
