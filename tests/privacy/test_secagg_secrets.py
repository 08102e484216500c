"""The SecAgg client's round secrets (`Client.export_secrets` / `Client.restore_secrets`): a client that is
rebuilt from its export before every stage (as a Flower ClientApp process that restarts per message) gives
the exact sum; malformed, altered or inconsistent exports are refused with FedarenaError."""

import hashlib
import struct

import numpy as np
import pytest

from fedarena.core.types import FedarenaError
from fedarena.privacy.fixedpoint import storage_dtype
from fedarena.privacy.secagg import STAGES, Client, ClientSecrets, SecAggConfig, run_stages
from fedarena.privacy.secagg.client import SECRETS_MAGIC


def _vectors(n, d=40, bits=32):
    rng = np.random.default_rng(3)
    return {u: rng.integers(0, 2**bits, d, dtype=np.uint64).astype(storage_dtype(bits)) for u in range(n)}


def _plain_sum(vectors, ids, bits=32):
    return sum(vectors[u].astype(np.uint64) for u in ids) % np.uint64(1 << bits)


def _stateless_exchange(config, vectors, dropped=None):
    """Clients that exist only as exported bytes between stages; returns the exchange and the exports seen."""
    dropped = dropped or {}
    kept = {u: Client(u, config).export_secrets().to_bytes() for u in vectors}
    seen: dict[str, dict[int, ClientSecrets]] = {}

    def exchange(stage, outgoing):
        replies = {}
        for u, inbox in outgoing.items():
            if u in dropped.get(stage, ()):
                continue
            client = Client.restore_secrets(ClientSecrets.from_bytes(kept[u]))
            replies[u] = client.answer(stage, inbox, vectors[u])
            secrets = client.export_secrets()
            seen.setdefault(stage, {})[u] = secrets
            kept[u] = secrets.to_bytes()
        return replies

    return exchange, seen


@pytest.mark.parametrize("neighbours, dropped", [(None, {}), (None, {"masked_input": {2}}), (4, {"share_keys": {5}})])
def test_a_client_restored_before_every_stage_gives_the_exact_sum(neighbours, dropped):
    vectors = _vectors(7)
    config = SecAggConfig(threshold=3, bits=32, neighbours=neighbours, round_id=5)
    exchange, seen = _stateless_exchange(config, vectors, dropped)
    result = run_stages(config, vectors, exchange)
    survivors = set(vectors) - set().union(*dropped.values()) if dropped else set(vectors)
    assert result.survivors == frozenset(survivors)
    np.testing.assert_array_equal(result.sum.astype(np.uint64), _plain_sum(vectors, survivors))
    assert [seen[s][0].stage for s in STAGES] == [1, 2, 3, 4]
    after_masking = seen["masked_input"][0]
    assert after_masking.b and after_masking.received and after_masking.peers


def test_export_round_trips_at_every_stage():
    config = SecAggConfig(threshold=2, bits=16)
    exchange, seen = _stateless_exchange(config, _vectors(3, bits=16))
    run_stages(config, range(3), exchange)
    for stage in STAGES:
        secrets = seen[stage][1]
        assert ClientSecrets.from_bytes(secrets.to_bytes()) == secrets
        assert Client.restore_secrets(secrets).export_secrets() == secrets


def test_a_restored_client_keeps_the_protocol_order():
    client = Client.restore_secrets(Client(0, SecAggConfig(threshold=2)).export_secrets())
    with pytest.raises(FedarenaError, match="out of order"):
        client.masked_input(b"", np.zeros(2, np.uint32))
    assert client.advertise_keys()


def _after_masking():
    config = SecAggConfig(threshold=3, bits=32)
    exchange, seen = _stateless_exchange(config, _vectors(4))
    run_stages(config, range(4), exchange)
    return seen["masked_input"][0]


def _redigest(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def test_malformed_or_altered_exports_are_refused():
    data = _after_masking().to_bytes()
    flipped = data[:100] + bytes([data[100] ^ 1]) + data[101:]
    with pytest.raises(FedarenaError, match="digest does not match"):
        ClientSecrets.from_bytes(flipped)
    with pytest.raises(FedarenaError, match="unreadable"):
        ClientSecrets.from_bytes(data[:-40])
    with pytest.raises(FedarenaError, match="not a fedarena-secagg/1 secrets export"):
        ClientSecrets.from_bytes(b"x" + data[1:])
    with pytest.raises(FedarenaError, match="trailing bytes"):
        ClientSecrets.from_bytes(_redigest(data[:-32] + b"\x00"))
    # a consistent digest over an inconsistent body: the stage byte says 1 (keys only) but the shares follow
    meta = len(SECRETS_MAGIC) + struct.calcsize(">IIIBI")
    with pytest.raises(FedarenaError, match="trailing bytes"):
        ClientSecrets.from_bytes(_redigest(data[:meta] + b"\x01" + data[meta + 1:-32]))


@pytest.mark.parametrize("change, match", [
    (dict(stage=1), "before share_keys"),
    (dict(stage=9), "out of range"),
    (dict(c_sk=b"short"), "32 bytes"),
    (dict(received=()), "fewer than the threshold"),
    (dict(peers=((0, bytes(64)),)), "not the client's own"),
    (dict(received=((77, bytes(10)),)), "distinct neighbours"),
    (dict(config=SecAggConfig(threshold=3, bits=4)), "bits"),
    (dict(own_shares=(b"", b"")), "wrong size"),
])
def test_inconsistent_secrets_are_refused(change, match):
    import dataclasses

    bad = dataclasses.replace(_after_masking(), **change)
    with pytest.raises(FedarenaError, match=match):
        Client.restore_secrets(bad)
    with pytest.raises(FedarenaError, match=match):
        bad.to_bytes()  # never written either
