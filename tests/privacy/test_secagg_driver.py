"""The one SecAgg stage driver (`run_stages`) over an exchange function: clients that drop out, replies that
were not asked for or name another sender, byte counts taken from the exchanged blobs."""

import numpy as np
import pytest

from fedarena.privacy.fixedpoint import storage_dtype
from fedarena.privacy.secagg import STAGES, Client, SecAggAbort, SecAggConfig, run_stages


def _vectors(n, d=30, bits=32):
    rng = np.random.default_rng(7)
    return {u: rng.integers(0, 2**bits, d, dtype=np.uint64).astype(storage_dtype(bits)) for u in range(n)}


def _plain_sum(vectors, ids, bits=32):
    return sum(vectors[u].astype(np.uint64) for u in ids) % np.uint64(1 << bits)


class Transport:
    """In-process clients behind an exchange that can drop clients or tamper with replies; records the blobs."""

    def __init__(self, config, vectors, drop=None, tamper=None):
        self.clients = {u: Client(u, config) for u in vectors}
        self.vectors, self.drop, self.tamper = vectors, drop or {}, tamper or (lambda stage, replies: replies)
        self.sent: dict[str, dict[int, bytes]] = {}
        self.received: dict[str, dict[int, bytes]] = {}

    def __call__(self, stage, outgoing):
        self.sent[stage] = dict(outgoing)
        replies = {u: self.clients[u].answer(stage, blob, self.vectors[u]) for u, blob in outgoing.items()
                   if u not in self.drop.get(stage, ())}
        self.received[stage] = self.tamper(stage, replies)
        return self.received[stage]


@pytest.mark.parametrize("stage", STAGES)
def test_an_exchange_that_drops_a_client_gives_the_survivors_sum(stage):
    vectors, config = _vectors(6), SecAggConfig(threshold=4, bits=32)
    transport = Transport(config, vectors, drop={stage: {3}})
    result = run_stages(config, vectors, transport)
    in_sum = set(vectors) - ({3} if stage != "unmasking" else set())  # an unmasking dropout's input is in the sum
    assert result.survivors == frozenset(in_sum)
    np.testing.assert_array_equal(result.sum.astype(np.uint64), _plain_sum(vectors, in_sum))
    assert 3 not in result.stage_clients[stage] and 3 in transport.sent[stage]
    later = STAGES[STAGES.index(stage) + 1:]
    assert all(3 not in transport.sent[s] for s in later)  # a dropout is not asked again


def test_an_exchange_that_drops_below_the_threshold_aborts(caplog):
    vectors, config = _vectors(5), SecAggConfig(threshold=4, bits=32)
    with pytest.raises(SecAggAbort, match="only 3 clients answered masked_input, threshold is 4"):
        run_stages(config, vectors, Transport(config, vectors, drop={"masked_input": {0, 4}}))
    assert "secagg round aborted" in caplog.text


def test_replies_not_asked_for_or_naming_another_sender_are_dropped(caplog):
    vectors, config = _vectors(5), SecAggConfig(threshold=3, bits=32)

    def tamper(stage, replies):
        if stage == "share_keys":
            replies = {**replies, 0: replies[1]}  # client 0's node replays client 1's shares
        if stage == "masked_input":
            replies = {**replies, 99: replies[2]}  # a reply from a client that was never asked
        return replies

    result = run_stages(config, vectors, Transport(config, vectors, tamper=tamper))
    assert result.stage_clients["share_keys"] == frozenset({1, 2, 3, 4}) and 99 not in result.bytes_per_client
    np.testing.assert_array_equal(result.sum.astype(np.uint64), _plain_sum(vectors, {1, 2, 3, 4}))
    assert caplog.text.count("secagg: dropped a") == 2


def test_byte_counts_are_the_exchanged_blobs():
    vectors, config = _vectors(4), SecAggConfig(threshold=3, bits=32, round_id=2)
    transport = Transport(config, vectors, drop={"unmasking": {1}})
    result = run_stages(config, vectors, transport)
    for u, b in result.bytes_per_client.items():
        assert b.advertise_up == len(transport.received["advertise_keys"][u])
        assert b.keys_down == len(transport.sent["share_keys"][u])
        assert b.shares_up == len(transport.received["share_keys"][u])
        assert b.masked_up == len(transport.received["masked_input"][u])
        assert b.request_down == len(transport.sent["unmasking"][u])
        assert b.unmask_up == len(transport.received["unmasking"].get(u, b""))
    assert result.bytes_per_client[1].unmask_up == 0 and not result.seeded
    assert set(result.client_seconds) == set(result.server_seconds) == set(STAGES) and result.seconds > 0
