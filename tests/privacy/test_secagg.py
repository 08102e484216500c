"""Secure aggregation (Bonawitz et al. CCS 2017; SecAgg+ of Bell et al. CCS 2020): exact sums, dropouts,
refused unmask requests, fresh masks, byte counts."""

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedarena.core.types import FedarenaError
from fedarena.privacy.fixedpoint import FixedPoint, storage_dtype
from fedarena.privacy.secagg import (
    STAGES,
    Client,
    EncryptedShares,
    SecAggAbort,
    SecAggConfig,
    Server,
    UnmaskRefused,
    UnmaskRequest,
    message_bytes,
    run_secagg,
)


def _vectors(n, d, bits, seed=0):
    rng = np.random.default_rng(seed)
    return {u: rng.integers(0, 2**bits, d, dtype=np.uint64).astype(storage_dtype(bits)) for u in range(n)}


def _plain_sum(vectors, ids, bits):
    total = np.zeros(len(next(iter(vectors.values()))), dtype=np.uint64)
    for u in ids:
        total += vectors[u].astype(np.uint64)
    return total & np.uint64((1 << bits) - 1) if bits < 64 else total


def _assert_sum(result, vectors, ids):
    assert result.survivors == frozenset(ids)
    assert result.sum.dtype == storage_dtype(result.bits)
    np.testing.assert_array_equal(result.sum.astype(np.uint64), _plain_sum(vectors, ids, result.bits))


@pytest.mark.parametrize(
    "n, d, bits, t",
    [(3, 1, 32, 2), (3, 17, 8, 3), (7, 1000, 24, 4), (10, 5000, 64, 6), (20, 10_000, 32, 11), (50, 100_000, 32, 26)],
)
def test_sum_equals_plain_sum(n, d, bits, t):
    vectors = _vectors(n, d, bits)
    result = run_secagg(vectors, threshold=t, bits=bits)
    _assert_sum(result, vectors, range(n))
    assert not result.seeded and result.summary()["protocol"] == "SecAgg"


def test_float_round_trip_through_secagg():
    n, clip, bits = 12, 0.5, 32
    fp = FixedPoint.for_clients(n, clip, bits)
    rng = np.random.default_rng(1)
    floats = {u: rng.normal(0, 0.4, 3000).astype(np.float32) for u in range(n)}
    result = run_secagg({u: fp.encode(x) for u, x in floats.items()}, threshold=7, bits=bits)
    quantized = np.sum([fp.to_integers(x) for x in floats.values()], axis=0)
    np.testing.assert_array_equal(fp.to_signed(result.sum), quantized)
    np.testing.assert_array_equal(fp.decode(result.sum), quantized / fp.scale)
    clipped = np.sum([np.clip(x.astype(np.float64), -clip, clip) for x in floats.values()], axis=0)
    assert np.abs(fp.decode(result.sum) - clipped).max() <= n * 0.5 / fp.scale + 1e-12


@pytest.mark.parametrize("stage", STAGES)
def test_four_dropouts_of_ten_at_each_stage_give_the_survivors_sum(stage):
    vectors = _vectors(10, 2000, 32)
    dropped = {1, 4, 5, 8}
    result = run_secagg(vectors, threshold=6, bits=32, dropouts={stage: dropped})
    # clients dropping during unmasking already sent their masked input: it is in the sum
    expected = set(range(10)) - dropped if stage != "unmasking" else set(range(10))
    _assert_sum(result, vectors, expected)
    assert result.stage_clients["unmasking"] == frozenset(range(10)) - dropped


def test_dropouts_spread_over_all_stages():
    vectors = _vectors(10, 500, 32)
    dropouts = {"advertise_keys": {0}, "share_keys": {3}, "masked_input": {9}, "unmasking": {5}}
    result = run_secagg(vectors, threshold=6, bits=32, dropouts=dropouts)
    _assert_sum(result, vectors, {1, 2, 4, 5, 6, 7, 8})
    assert [len(result.stage_clients[s]) for s in STAGES] == [9, 8, 7, 6]


@pytest.mark.parametrize("stage", STAGES)
def test_five_dropouts_of_ten_abort_at_each_stage(stage, caplog):
    with pytest.raises(SecAggAbort, match=rf"only 5 clients answered {stage}, threshold is 6"):
        run_secagg(_vectors(10, 100, 32), threshold=6, bits=32, dropouts={stage: {0, 2, 3, 7, 9}})
    assert "secagg round aborted" in caplog.text


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_any_dropout_pattern_gives_the_exact_sum_or_aborts(data):
    n = data.draw(st.integers(min_value=3, max_value=8))
    t = data.draw(st.integers(min_value=2, max_value=n))
    stage_of = data.draw(st.lists(st.sampled_from((None, *STAGES)), min_size=n, max_size=n))
    dropouts = {s: {u for u in range(n) if stage_of[u] == s} for s in STAGES}
    vectors = _vectors(n, 7, 16, seed=n)
    alive = [n - sum(len(dropouts[s]) for s in STAGES[: i + 1]) for i in range(4)]
    if min(alive) < t:
        with pytest.raises(SecAggAbort):
            run_secagg(vectors, threshold=t, bits=16, dropouts=dropouts)
    else:
        result = run_secagg(vectors, threshold=t, bits=16, dropouts=dropouts)
        in_sum = {u for u in range(n) if stage_of[u] in (None, "unmasking")}
        _assert_sum(result, vectors, in_sum)


# --- SecAgg+ ------------------------------------------------------------------------------------


def test_secagg_plus_gives_the_exact_sum_on_a_k_regular_graph():
    vectors = _vectors(30, 20_000, 32)
    result = run_secagg(vectors, threshold=5, bits=32, neighbours=8)
    _assert_sum(result, vectors, range(30))
    assert {len(vs) for vs in result.neighbours.values()} == {8}
    assert all(u in result.neighbours[v] for u, vs in result.neighbours.items() for v in vs)
    assert result.summary()["protocol"] == "SecAgg+"


@pytest.mark.parametrize("stage", STAGES)
def test_secagg_plus_survives_dropouts_below_its_threshold(stage):
    # groups of k + 1 = 9 with t = 5: any 4 dropouts leave every group >= 5 members
    vectors = _vectors(24, 3000, 32, seed=2)
    dropped = {2, 3, 11, 19}
    result = run_secagg(vectors, threshold=5, bits=32, neighbours=8, dropouts={stage: dropped})
    expected = set(range(24)) - dropped if stage != "unmasking" else set(range(24))
    _assert_sum(result, vectors, expected)


def test_secagg_plus_aborts_when_a_neighbourhood_falls_below_t():
    # k = 4, t = 5: every group is exactly t, so one dropout leaves its neighbours with t - 1
    with pytest.raises(SecAggAbort, match="live neighbours"):
        run_secagg(_vectors(20, 10, 32), threshold=5, bits=32, neighbours=4, dropouts={"masked_input": {7}})


def test_secagg_plus_costs_scale_with_k_not_n():
    small = run_secagg(_vectors(40, 10, 32), threshold=4, bits=32, neighbours=6)
    full = run_secagg(_vectors(40, 10, 32), threshold=4, bits=32)
    assert small.bytes_per_client[0] == message_bytes(dim=10, bits=32, neighbours=6)
    assert full.bytes_per_client[0] == message_bytes(dim=10, bits=32, neighbours=39)
    assert small.bytes_per_client[0].overhead_up * 5 < full.bytes_per_client[0].overhead_up


# --- the unmask request check -------------------------------------------------------------------


def _to_unmasking(n=6, t=4, dropped_after_shares=(5,)):
    """Drive Clients and a Server through rounds 0-2; return clients, server and the honest requests."""
    config = SecAggConfig(threshold=t, bits=32)
    server, clients = Server(config), {u: Client(u, config) for u in range(n)}
    keys = server.receive_keys([c.advertise_keys() for c in clients.values()])
    bundles = server.receive_shares([clients[u].share_keys(keys[u]) for u in clients])
    alive = [u for u in clients if u not in dropped_after_shares]
    vectors = _vectors(n, 50, 32)
    requests = server.receive_masked([clients[u].masked_input(bundles[u], vectors[u]) for u in alive])
    return clients, server, requests, vectors, alive


def test_honest_unmask_requests_are_answered_and_give_the_sum():
    clients, server, requests, vectors, alive = _to_unmasking()
    assert UnmaskRequest.from_bytes(requests[0]).mask_key_ids == (5,)
    total = server.receive_unmask([clients[u].unmask(requests[u]) for u in alive])
    np.testing.assert_array_equal(total.astype(np.uint64), _plain_sum(vectors, alive, 32))


@pytest.mark.parametrize(
    "self_mask, mask_key, reason",
    [
        ((0, 1, 2, 3, 4), (4, 5), "both the self-mask and the mask-key share of clients \\[4\\]"),
        ((0, 1, 2, 3, 4), (5, 17), "does not hold"),
        ((0, 1, 2, 3, 4, 5), (), None),  # asking client 5's self-mask share is allowed (not both)
        ((1, 2, 3, 4), (0, 5), "own mask-key share"),
        ((0, 1, 2), (5,), "fewer than the threshold 4"),
    ],
)
def test_malicious_unmask_requests_are_refused(self_mask, mask_key, reason):
    clients, *_ = _to_unmasking()
    request = UnmaskRequest(0, self_mask, mask_key).to_bytes()
    if reason is None:
        assert clients[0].unmask(request)
    else:
        with pytest.raises(UnmaskRefused, match=reason):
            clients[0].unmask(request)


def test_request_about_a_client_that_never_shared_is_refused():
    clients, *_ = _to_unmasking(dropped_after_shares=())
    with pytest.raises(UnmaskRefused, match="does not hold"):
        clients[0].unmask(UnmaskRequest(0, (0, 1, 2, 3, 4, 5, 6), ()).to_bytes())


def test_tampered_shares_fail_authentication():
    config = SecAggConfig(threshold=3, bits=32)
    server, clients = Server(config), {u: Client(u, config) for u in range(4)}
    keys = server.receive_keys([c.advertise_keys() for c in clients.values()])
    bundles = server.receive_shares([clients[u].share_keys(keys[u]) for u in clients])
    msg = EncryptedShares.from_bytes(bundles[0])
    sender, ct = msg.ciphertexts[0]
    forged = EncryptedShares(0, 0, ((sender, bytes([ct[0] ^ 1]) + ct[1:]),) + msg.ciphertexts[1:])
    clients[0].masked_input(forged.to_bytes(), np.zeros(3, np.uint32))
    with pytest.raises(SecAggAbort, match=f"shares from client {sender} fail authentication"):
        clients[0].unmask(UnmaskRequest(0, (0, 1, 2, 3), ()).to_bytes())


def test_protocol_order_round_ids_and_duplicates_are_enforced():
    config = SecAggConfig(threshold=2, bits=32)
    client = Client(0, config)
    with pytest.raises(FedarenaError, match="out of order"):
        client.masked_input(b"", np.zeros(2, np.uint32))
    advert = client.advertise_keys()
    with pytest.raises(SecAggAbort, match="repeated"):
        Server(config).receive_keys([advert, advert])
    with pytest.raises(SecAggAbort, match="round 0"):
        Server(SecAggConfig(threshold=2, bits=32, round_id=1)).receive_keys([advert, Client(1, config).advertise_keys()])
    with pytest.raises(SecAggAbort, match="malformed"):
        Server(config).receive_keys([advert[:-1]])


# --- randomness ---------------------------------------------------------------------------------


def _masked_after_global_seeding(vectors, **kw):
    random.seed(0)
    np.random.seed(0)
    return run_secagg(vectors, threshold=3, bits=32, keep_masked=True, **kw)


def test_masks_are_fresh_each_round_and_ignore_global_seeds():
    vectors = _vectors(5, 1000, 32)
    a, b = _masked_after_global_seeding(vectors), _masked_after_global_seeding(vectors)
    for u in vectors:
        assert not np.array_equal(a.masked[u], vectors[u])
        assert (a.masked[u] == b.masked[u]).mean() < 0.01
    np.testing.assert_array_equal(a.sum, b.sum)


def test_seeded_test_mode_is_deterministic_per_round_and_labelled():
    vectors = _vectors(5, 1000, 32)
    a = run_secagg(vectors, threshold=3, bits=32, seed=7, keep_masked=True)
    b = run_secagg(vectors, threshold=3, bits=32, seed=7, keep_masked=True)
    c = run_secagg(vectors, threshold=3, bits=32, seed=7, round_id=1, keep_masked=True)
    assert a.seeded and a.summary()["seeded_test_mode"]
    for u in vectors:
        np.testing.assert_array_equal(a.masked[u], b.masked[u])
        assert (a.masked[u] == c.masked[u]).mean() < 0.01
    np.testing.assert_array_equal(a.sum, c.sum)


def test_seeded_graph_is_reproducible_and_random_relabelling():
    graphs = [run_secagg(_vectors(20, 4, 32), threshold=3, bits=32, neighbours=4, seed=s).neighbours for s in (1, 1, 2)]
    assert graphs[0] == graphs[1] and graphs[0] != graphs[2]


# --- sizes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [16, 32, 64])
def test_masked_vector_is_at_most_twice_the_float32_upload(bits):
    d, n = 10_000, 8
    result = run_secagg(_vectors(n, d, bits), threshold=5, bits=bits)
    plain = 4 * d
    expected = message_bytes(dim=d, bits=bits, neighbours=n - 1)
    for sizes in result.bytes_per_client.values():
        assert sizes == expected
        payload = d * storage_dtype(bits).itemsize
        assert sizes.masked_up - payload == 14 and payload <= 2 * plain
        assert sizes.overhead_up == sizes.advertise_up + sizes.shares_up + sizes.unmask_up > 0
        assert sizes.overhead_down > 0
    assert result.summary()["masked_up_bytes"] == n * expected.masked_up


def test_byte_counts_follow_dropouts():
    result = run_secagg(_vectors(6, 10, 32), threshold=3, bits=32, dropouts={"share_keys": {2}, "unmasking": {4}})
    assert result.bytes_per_client[2].shares_up == 0 and result.bytes_per_client[2].advertise_up > 0
    assert result.bytes_per_client[4].unmask_up == 0 and result.bytes_per_client[4].masked_up > 0
    assert result.bytes_per_client[0].shares_down == message_bytes(dim=10, bits=32, neighbours=4).shares_down


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(threshold=1), "threshold"),
        (dict(threshold=11), "threshold"),
        (dict(threshold=3, neighbours=3), "even"),
        (dict(threshold=6, neighbours=4), "threshold"),
        (dict(threshold=3, bits=4), "bits"),
        (dict(threshold=3, dropouts={"later": {1}}), "unknown stages"),
        (dict(threshold=3, dropouts={"share_keys": {99}}), "no vector"),
    ],
)
def test_bad_configuration_is_refused(kwargs, match):
    kwargs = {"bits": 32, **kwargs}
    with pytest.raises(FedarenaError, match=match):
        run_secagg(_vectors(10, 5, 32), **kwargs)


def test_bad_inputs_are_refused_by_the_client():
    vectors = _vectors(3, 5, 16)
    with pytest.raises(FedarenaError, match="< 2\\^8"):
        run_secagg(vectors, threshold=2, bits=8)
    with pytest.raises(FedarenaError, match="unsigned"):
        run_secagg({u: v.astype(np.int32) for u, v in vectors.items()}, threshold=2, bits=16)
    with pytest.raises(FedarenaError, match="same shape"):
        run_secagg({**vectors, 3: np.zeros(4, np.uint16)}, threshold=2, bits=16)


def test_an_invalid_public_key_aborts():
    config = SecAggConfig(threshold=2, bits=32)
    server, clients = Server(config), {u: Client(u, config) for u in range(3)}
    adverts = [c.advertise_keys() for c in clients.values()]
    adverts[2] = adverts[2][:9] + bytes(32) + adverts[2][41:]  # client 2's c_pk := the zero (low-order) point
    keys = server.receive_keys(adverts)
    with pytest.raises(SecAggAbort, match="invalid for X25519"):
        clients[0].share_keys(keys[0])
