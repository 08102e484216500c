"""Secure aggregation and local DP on `fedarena deploy`.

Fast: the stage messages' record fields, the node's secrets file (round trip, mode 0600, deleted after
unmasking, purged after an aborted round), and the whole protocol through `SecretStore` + `client_step` +
`run_server` without Flower (the exact sum, dropouts, an abort).
Slow (real SuperLink and SuperNodes): `deploy --local 4 --secagg` for fedavg equals the simulator with
`--secagg`; the server receives only masked vectors; a SuperNode killed during the protocol leaves the
survivors' exact sum.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import stat
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from running import run_loop
from safetensors.torch import load_file

from fedarena import config as cfg
from fedarena.core.codec import decode
from fedarena.core.rng import torch_rng
from fedarena.core.types import Broadcast, FedarenaError, Upload
from fedarena.experiments.compare import prepare, run_compare
from fedarena.experiments.deploy import Timeouts
from fedarena.flower import messages
from fedarena.flower import secagg_stages as st
from fedarena.privacy import secagg
from fedarena.privacy.encoding import ClientPrivacy, encode_update, mean_from_sum
from fedarena.privacy.fixedpoint import wrap
from fedarena.privacy.round import Privacy
from fedarena.sim.local import LocalClients, ReferenceExecutor
from fedarena.sim.runtime import train_client
from flower.deploying import deploy_and_reap


def _cp(n: int = 4, rnd: int = 3, threshold: int = 3, **kw) -> ClientPrivacy:
    base = dict(round=rnd, dp_clip=0.0, dp_noise=0.0, secagg=True, clients=n, max_weight=10, fp_clip=10.0,
                bits=32, threshold=threshold, neighbours=0)
    return ClientPrivacy(**{**base, **kw})


def test_client_privacy_travels_as_record_fields():
    cp = _cp(neighbours=2, dp_clip=1.5, dp_noise=0.3)
    fields = st.privacy_fields(cp)
    assert all(k.startswith("privacy-") for k in fields)
    assert st.privacy_from_fields(fields) == cp
    with pytest.raises(FedarenaError, match="privacy-threshold"):
        st.privacy_from_fields({**fields, "privacy-threshold": 2.5})
    with pytest.raises(FedarenaError, match="threshold"):
        st.privacy_from_fields({**fields, "privacy-threshold": 9})  # t > n
    with pytest.raises(FedarenaError, match="privacy-secagg"):
        st.privacy_from_fields({k: v for k, v in fields.items() if k != "privacy-secagg"})


def test_the_client_app_serves_every_stage():
    from fedarena.flower.client_app import app

    registered = set(app._registered_funcs)
    assert {messages.TRAIN_PRIVATE, *messages.SECAGG_TYPES.values()} <= registered, registered


def _vectors(n: int, dim: int = 50) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(0)
    return {c: wrap(rng.integers(-1000, 1000, dim), 32) for c in range(n)}


def _run(tmp: Path, cp: ClientPrivacy, vectors: dict[int, np.ndarray], gone: dict[str, set[int]] | None = None):
    """The protocol over bytes and secrets files, one store per client (its node), no Flower."""
    gone = gone or {}
    stores = {c: st.SecretStore(tmp / f"node-{c}", 7, 0, "fedavg") for c in vectors}
    advertised = {c: st.client_start(stores[c], cp, c, v) for c, v in vectors.items()}
    seen: dict[str, dict[int, bytes]] = {}

    def exchange(stage: str, outgoing: dict[int, bytes]) -> dict[int, bytes]:
        replies = {c: st.client_step(stores[c], cp.round, stage, blob) for c, blob in outgoing.items()
                   if c not in gone.get(stage, set())}
        seen[stage] = replies
        return replies

    return st.run_server(cp, advertised, exchange), stores, seen


def test_secrets_file_round_trip_mode_and_deletion(tmp_path):
    cp = _cp()
    vectors = _vectors(4)
    store = st.SecretStore(tmp_path, 1, 0, "fedavg")
    st.client_start(store, cp, 2, vectors[2])
    path = store.path(cp.round)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(store.dir.stat().st_mode) == 0o700
    kept = st.NodeSecrets.from_bytes(path.read_bytes())
    assert kept.secrets.client == 2 and kept.secrets.stage == 1 and np.array_equal(kept.vector, vectors[2])
    assert secagg.Client.restore_secrets(kept.secrets).export_secrets() == kept.secrets
    assert st.NodeSecrets.from_bytes(kept.to_bytes()).secrets == kept.secrets
    with pytest.raises(FedarenaError, match="unreadable"):
        st.NodeSecrets.from_bytes(b"not a secrets file")
    # a later round purges this aborted one's secrets
    st.client_start(store, _cp(rnd=cp.round + 1), 2, vectors[2])
    assert not path.exists() and store.path(cp.round + 1).exists()
    with pytest.raises(secagg.SecAggAbort, match="no secrets for round"):
        st.client_step(store, cp.round, "share_keys", b"")


def test_protocol_through_secrets_files_gives_the_exact_sum(tmp_path):
    vectors = _vectors(4)
    result, stores, seen = _run(tmp_path, _cp(), vectors)
    want = sum(v.astype(np.uint64) for v in vectors.values()) % (1 << 32)
    assert np.array_equal(result.sum.astype(np.uint64), want) and result.survivors == frozenset(range(4))
    assert not any(s.path(3).exists() for s in stores.values())  # deleted after unmasking
    masked = {c: secagg.MaskedInput.from_bytes(b).vector for c, b in seen["masked_input"].items()}
    assert all(np.mean(masked[c] == vectors[c]) < 0.05 for c in vectors)  # only masked vectors reach the server
    b = result.bytes_per_client[0]
    assert b.masked_up == len(seen["masked_input"][0]) and b.overhead_up > 0 and b.overhead_down > 0


def test_dropout_during_the_protocol_keeps_the_survivors_sum_or_aborts(tmp_path):
    vectors = _vectors(5)
    result, stores, _ = _run(tmp_path / "a", _cp(n=5), vectors, {"masked_input": {4}})
    want = sum(vectors[c].astype(np.uint64) for c in range(4)) % (1 << 32)
    assert np.array_equal(result.sum.astype(np.uint64), want) and result.survivors == frozenset(range(4))
    with pytest.raises(secagg.SecAggAbort, match="threshold"):
        _run(tmp_path / "b", _cp(n=5, threshold=4), vectors, {"share_keys": {0, 1}})


def test_a_reply_naming_another_sender_is_dropped(tmp_path):
    vectors = _vectors(4)
    stores = {c: st.SecretStore(tmp_path / f"node-{c}", 7, 0, "fedavg") for c in vectors}
    advertised = {c: st.client_start(stores[c], _cp(), c, v) for c, v in vectors.items()}
    advertised[0] = advertised[1]  # client 0's node replays client 1's keys
    with pytest.raises(secagg.SecAggAbort, match="only 3 clients answered advertise_keys"):  # client 0's dropped
        st.run_server(_cp(threshold=4), advertised, lambda stage, out: {})


def test_node_protects_its_update_as_the_simulator_encodes_it(tmp_path):
    cp = _cp()
    ref = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.5]])}
    upload = Upload(params={"b": torch.tensor([[0.25]]), "a": torch.tensor([1.5, 1.0])}, num_samples=5)
    store = st.SecretStore(tmp_path, 1, 0, "fedavg")
    payload, blob = st.protect(cp, Broadcast(params=ref), upload, 1, store)
    assert payload == b"" and secagg.sender_matches(blob, 1) and not secagg.sender_matches(blob, 2)
    kept = st.NodeSecrets.from_bytes(store.path(cp.round).read_bytes()).vector
    delta = {k: upload.params[k] - ref[k] for k in ref}
    assert np.array_equal(kept, encode_update(delta, 5, cp))
    mean = mean_from_sum(ref, cp.fixed_point().decode(kept))  # one client: its own update, to fixed-point
    assert all(torch.allclose(mean[k], upload.params[k], atol=1e-6) for k in ref)
    with pytest.raises(FedarenaError, match="state-dir"):
        st.protect(cp, Broadcast(params=ref), upload, 1, None)


def test_local_dp_noises_the_update_on_the_node():
    cp = _cp(secagg=False, dp_clip=1.0, dp_noise=1.0)
    ref = {"a": torch.zeros(1000)}
    upload = Upload(params={"a": torch.full((1000,), 0.01)}, num_samples=3, metrics={"train_loss": 1.0})
    payload, blob = st.protect(cp, Broadcast(params=ref), upload, 0, None)
    sent = decode(payload, Upload)
    assert blob == b"" and sent.num_samples == 3
    noise = sent.params["a"] - ref["a"]
    assert 0.9 < float(noise.std()) < 1.1  # N(0, (zC)^2) with z C = 1 (the update itself has norm 0.32)


# --- slow: real deployments -------------------------------------------------------------------------

NODES = 4


def _config(**train) -> cfg.Config:
    return cfg.build(None, {"data": {"num_clients": NODES},
                            "train": {"rounds": 2, "clients_per_round": NODES, **train},
                            "run": {"algorithms": "fedavg", "engine": "reference", "target": 0.5},
                            "privacy": {"secagg": True, "secagg_threshold": 3}}, [])


def _wire(tmp: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((tmp / "work" / "nodes").glob("*/wire.jsonl"))
            for line in f.read_text().splitlines()]


@pytest.fixture(scope="module")
def secure_deployed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secure")
    config = _config()
    summary = deploy_and_reap(tmp, config, Timeouts(round=120, evaluate=120, start=120))
    return tmp, config, summary, run_compare(config, tmp / "sim")


@pytest.mark.slow
def test_secure_deploy_matches_the_simulator_with_secagg(secure_deployed):
    tmp, _, summary, sim = secure_deployed
    got, want = summary["runs"][0], sim["runs"][0]
    for key in ("global_acc", "personal_acc_mean"):
        assert got["final"][key] == pytest.approx(want["final"][key], abs=1e-9), key
    for a, b in zip(got["final"]["personal_acc_per_client"].values(), want["final"]["personal_acc_per_client"].values()):
        assert a == pytest.approx(b, abs=1e-9)
    g, w = (load_file(tmp / d / "models" / "fedavg" / "global.safetensors") for d in ("run", "sim"))
    assert all(torch.allclose(g[k], w[k], atol=1e-6) for k in w)  # fixed point: 2^31 / 4 levels over +-10
    p = got["privacy"]["secagg"]
    assert p["survivors"] == NODES and p["aborted_rounds"] == 0 and p["seeded_test_mode"] is False
    assert p["transport"] == "flower messages" and got["privacy"]["noise_source"] == "os-secure"
    # the overhead is what the Flower records carried: the wire log's secagg blobs, both directions
    lines = [x for x in _wire(tmp) if x["type"].startswith("query.secagg") or x["type"] == messages.TRAIN_PRIVATE]
    carried = sum(x["payload_bytes"] for x in lines)
    masked = sum(x["payload_bytes"] for x in lines if x["type"] == "query.secagg_masked_input" and x["direction"] == "up")
    broadcast = got["bytes"]["down_total"]
    assert carried == broadcast + masked + p["overhead_bytes_per_round"] * 2
    assert got["bytes"]["up_total"] == masked
    print(f"secagg on Flower: {p['overhead_bytes_per_round']:.0f} B overhead per round "
          f"({NODES} clients), masked uploads {masked} B, {p['seconds_per_round']:.2f} s per round")


@pytest.mark.slow
def test_the_server_receives_only_masked_vectors(secure_deployed):
    tmp, config, _, _ = secure_deployed

    p = prepare(config)
    algo = cfg.hyperparameters(config, "fedavg")
    full = p.task.init_params(torch_rng(0, "init"))
    cp = ClientPrivacy(round=1, dp_clip=0.0, dp_noise=0.0, secagg=True, clients=NODES,
                       max_weight=max(p.data.client(c).num_train for c in range(NODES)), fp_clip=10.0, bits=32,
                       threshold=3, neighbours=0)
    plain = {}
    for c in range(NODES):  # round 1's plain encodings, as each node computed them
        upload, _ = train_client(algo, p.task, Broadcast(params=full), algo.init_client(full), p.data.client(c), 0, 1, c)
        plain[c] = encode_update({k: upload.params[k] - full[k] for k in sorted(upload.params)}, upload.num_samples, cp)
    capture = [f for f in (tmp / "work" / "nodes").glob("*/capture/*-up-*.bin")]
    blobs = [f.read_bytes() for f in capture]
    assert blobs and not any(b"params/" in b for b in blobs if b"train" in b)  # no Upload went up
    masked = []
    for f in (tmp / "work" / "nodes").glob("*/capture/fedavg-query.secagg_masked_input-up-*.bin"):
        data = f.read_bytes()
        start = data.find(bytes([secagg.MaskedInput.TAG]) + (1).to_bytes(4, "big"))
        if start >= 0:
            dim = len(plain[0])
            masked.append(np.frombuffer(data[start + 14: start + 14 + 4 * dim], dtype="<u4"))
    assert len(masked) == NODES  # round 1's masked vector of every node
    for m in masked:
        assert all(np.mean(m == plain[c]) < 0.01 for c in plain)
    up = [x for x in _wire(tmp) if x["direction"] == "up" and x["type"] == messages.TRAIN_PRIVATE]
    assert up and all(x["payload_bytes"] < 200 for x in up)  # AdvertiseKeys only, no model


@pytest.mark.slow
def test_supernode_killed_during_the_protocol_leaves_the_survivors_sum(tmp_path):
    config = _config(eval_every=2)
    timeouts = Timeouts(round=60, evaluate=240, start=120)  # 4 ClientApp processes start at once per stage

    def kill_node_3(fed):
        wire = fed.root / "nodes" / "3" / "wire.jsonl"

        def shared_keys_round_1() -> bool:
            lines = [json.loads(x) for x in wire.read_text().splitlines()] if wire.exists() else []
            return any(x["type"] == "query.secagg_share_keys" and x["round"] == 1 and x["direction"] == "up"
                       for x in lines)

        while not shared_keys_round_1():
            time.sleep(0.05)
        fed.processes["supernode-3"].signal(signal.SIGSTOP)  # gone before the masked input
        time.sleep(timeouts.round * 2)  # through the masked-input stage and round 2's training
        fed.kill_node(3)
        fed.start_node(3)

    summary = deploy_and_reap(tmp_path, config, timeouts, during=kill_node_3)
    table = pq.read_table(tmp_path / "run" / "metrics.parquet").to_pylist()
    sampled = {r: {int(x["client"]) for x in table if x["round"] == r and x["sampled"]} for r in (1, 2)}
    assert sampled[1] == {0, 1, 2}, sampled
    # the reference: the simulator's secure aggregate over the same survivors in each round
    p = prepare(config)
    algo = cfg.hyperparameters(config, "fedavg")

    class Survivors(LocalClients):
        def train(self, rnd, broadcasts, protect=None):
            return super().train(rnd, {c: b for c, b in broadcasts.items() if c in sampled[rnd]}, protect)

    def runtime(algo, task, data, training, full, seed, dpsgd):
        return Survivors(algo, task, data, training, full, seed, ReferenceExecutor(task, algo.name), dpsgd)

    max_weight = max(p.data.client(c).num_train for c in range(NODES))
    privacy = Privacy.build(config.privacy, algo, NODES, NODES, 0, max_weight)
    # the fixed point's capacity n is the round's sampled clients (4), not its survivors
    privacy.client_privacy = lambda rnd, n, f=privacy.client_privacy: f(rnd, NODES)
    ref = run_loop(algo, p.task, p.data, rounds=2, clients_per_round=NODES, eval_every=2, seed=0,
                        runtime=runtime, privacy=privacy)
    got = load_file(tmp_path / "run" / "models" / "fedavg" / "global.safetensors")
    want = algo.global_model(ref.server)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert summary["runs"][0]["privacy"]["secagg"]["aborted_rounds"] == 0
    assert not list((tmp_path / "work" / "nodes").glob("[012]/state/secagg/**/*.secrets"))  # deleted after unmasking


def test_deploy_refuses_what_central_dp_under_secagg_cannot_account_before_starting_anything(tmp_path):
    from typer.testing import CliRunner

    from fedarena.cli import app as cli_app

    res = CliRunner().invoke(cli_app, ["deploy", "--local", "3", "--secagg", "--dp-clip", "1", "--dp-noise", "1",
                                       "--set", "privacy.accountant=pld", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "central DP with secure aggregation adds Skellam noise" in res.output, res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_central_dp_under_secagg_on_deploy_is_accounted_as_in_simulation(tmp_path):
    """The nodes add their Skellam shares (OS noise) before masking; the server only unmasks the noised sum."""
    config = _config(rounds=2)
    config = dataclasses.replace(config, privacy=dataclasses.replace(config.privacy, dp_clip=1.0, dp_noise=1.0))
    summary = deploy_and_reap(tmp_path, config, Timeouts(round=120, evaluate=120, start=120))
    sim = run_compare(config, tmp_path / "sim")
    got, want = summary["runs"][0]["privacy"], sim["runs"][0]["privacy"]
    assert got["accountant"].startswith("rdp (Skellam") and got["epsilon"] == pytest.approx(want["epsilon"], rel=1e-12)
    assert got["noise_source"] == "os-secure" and got["secagg"]["transport"] == "flower messages"
