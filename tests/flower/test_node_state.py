"""A node's kept state (flower/common.NodeState) as of the server's checkpoint: a ServerApp restarted from its
checkpoint of round c retrains round c+1, which the node may already have trained for the ServerApp that died; the
node then answers with its state of round <= c, never with the stale one."""

from __future__ import annotations

import pytest
import torch

from fedarena.core.types import ClientState, FedarenaError
from fedarena.flower import common


def state(value: float) -> ClientState:
    return ClientState(params={"head.weight": torch.full((2,), value)})


def value(kept: ClientState | None) -> float | None:
    return None if kept is None else float(kept.params["head.weight"][0])


def test_a_fresh_run_keeps_the_latest_and_the_one_before(tmp_path):
    path = tmp_path / "run-d" / "seed-0" / "fedper" / "client-a.safetensors"
    node = common.NodeState(path, run="A")
    assert node.load(0) is None  # never trained: the initial state
    for rnd in (1, 2, 3):
        assert value(node.load(rnd - 1)) == (None if rnd == 1 else rnd - 1)
        node.save(state(rnd), rnd)
    assert value(node.load(3)) == 3 and value(common.NodeState(node.previous, run="A").load(3)) == 2
    assert sorted(p.relative_to(path.parent).as_posix() for p in path.parent.rglob("*") if p.is_file()) == [
        "client-a.safetensors", "previous/client-a.safetensors"]  # nothing else: no temporary file left


def test_a_restarted_server_gets_the_state_of_its_checkpoint_not_the_stale_one(tmp_path):
    path = tmp_path / "client-a.safetensors"
    dead = common.NodeState(path, run="A")
    for rnd in (1, 2, 3):
        dead.save(state(rnd), rnd)  # the server committed round 2, sent round 3, and died
    again = common.NodeState(path, run="B", from_round=2)
    assert value(again.load(2)) == 2  # training round 3 again starts from round 2's state, not the stale round 3
    again.save(state(30), 3)
    assert value(again.load(3)) == 30  # the redone round 3
    assert value(common.NodeState(again.previous, run="B", from_round=2).load(9)) == 2  # the checkpoint's kept
    again.save(state(40), 4)
    assert value(again.load(4)) == 40 and value(common.NodeState(again.previous, run="B").load(9)) == 30


def test_a_client_not_sampled_again_after_the_restart_never_sees_its_stale_round(tmp_path):
    path = tmp_path / "client-a.safetensors"
    dead = common.NodeState(path, run="A")
    dead.save(state(1), 1)
    dead.save(state(3), 3)  # trained in round 3 for the dead server, whose checkpoint was round 2
    again = common.NodeState(path, run="B", from_round=2)
    assert value(again.load(3)) == 1  # evaluated at round 3 (the redo did not sample it): its round-1 state
    assert value(again.load(4)) == 1  # trained in round 5
    again.save(state(5), 5)
    assert value(again.load(5)) == 5 and value(common.NodeState(again.previous, run="B", from_round=2).load(9)) == 1


def test_a_client_first_trained_in_the_cut_off_round_starts_from_its_initial_state(tmp_path):
    path = tmp_path / "client-a.safetensors"
    common.NodeState(path, run="A").save(state(3), 3)
    assert common.NodeState(path, run="B", from_round=2).load(2) is None


def test_an_unstamped_state_is_used_as_it_is(tmp_path):
    path = tmp_path / "client-a.safetensors"
    path.write_bytes(common.state_to_bytes(state(7)))  # written before states carried their round
    node = common.NodeState(path, run="B", from_round=0)
    assert value(node.load(4)) == 7
    node.save(state(5), 5)
    assert value(node.load(5)) == 5 and value(common.NodeState(node.previous, run="B").load(9)) == 7


def test_a_state_ahead_of_the_server_is_refused_by_name(tmp_path):
    path = tmp_path / "client-a.safetensors"
    node = common.NodeState(path, run="B", from_round=0)
    node.save(state(4), 4)
    with pytest.raises(FedarenaError, match="state is of round 4, after round 2 of the server"):
        node.load(2)
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(FedarenaError, match="not a safetensors file"):
        node.load(9)
