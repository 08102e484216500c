"""Secure aggregation and local DP on a Flower deployment: the SecAgg stages as Flower messages.

Protocol: Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning", ACM CCS
2017 (eprint 2017/281), Fig. 4 rounds 0 AdvertiseKeys, 1 ShareKeys, 2 MaskedInputCollection, 4 Unmasking,
with the SecAgg+ neighbourhood graph of Bell et al., ACM CCS 2020 (eprint 2020/704); the cryptography is
:mod:`fedarena.privacy.secagg` (`Client`/`Server` exchange only bytes). This module carries those bytes:

    message type                 server -> client                 client -> server
    train.private                Broadcast + ClientPrivacy        AdvertiseKeys (SecAgg) or a noised Upload
    query.secagg_share_keys      KeyList                          EncryptedShares
    query.secagg_masked_input    EncryptedShares (forwarded)      MaskedInput (y_u)
    query.secagg_unmask          UnmaskRequest                    UnmaskShares

The first message trains: the node computes its update against the broadcast (upload params minus the
broadcast's shared params), clips and noises it for local DP (noise from the OS), and under SecAgg encodes
(n_k/W * update, n_k/W) with the fixed point of the round (`privacy.round.encode_update`, the simulator's own
function). Only the masked vector and the protocol's keys and shares ever reach the server; personal keys are
never part of an upload, so they are neither masked nor sent.

Client secrets between stages: Flower 1.42 starts a fresh ClientApp process per message. Its
``context.state`` does persist between messages of a run (the SuperNode keeps the run's context in its
in-memory NodeState and takes the updated one back after each message: flwr/supernode/start_client_internal.py,
``set_run_series_context``), but it crosses the SuperNode's ClientAppIo API with every message and is lost when
the SuperNode restarts. The secrets (X25519 keys, the self-mask seed b_u, the shares, and until masking the
plain encoding) are instead kept in one file per round under the node's ``state-dir`` (`SecretStore`:
directory mode 0700, file mode 0600, written atomically), rewritten after each stage, deleted after unmasking;
files of earlier rounds that aborted are deleted when the next secure round starts on the node.
`secagg.Client` has no export API, so `snapshot`/`restore` read and set its private fields here.

Dropouts: each stage waits `round-timeout` seconds; a node that does not answer is a dropout for the rest of
the round. The `secagg.Server` aborts (``SecAggAbort``) when fewer than t clients remain at any stage; the
engine then keeps the previous server state (privacy/round.py). A reply whose embedded sender id is not the
client the node serves is dropped.

Bytes: the per-stage byte counts of the summary (`StageBytes`) are the lengths of the protocol blobs the
Flower records actually carried (measured on the server as sent and received); the ledger's upload is the
masked vector (what was carried instead of the plain upload).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from fedarena.core.types import Broadcast, FedarenaError, Upload
from fedarena.privacy import secagg

if TYPE_CHECKING:  # privacy.round (scipy, dp-accounting) is imported only by the messages that need it: a
    from fedarena.privacy.round import ClientPrivacy  # ClientApp process starts per message

log = logging.getLogger(__name__)

PRIVATE_ACTION = "private"
TRAIN_PRIVATE = f"train.{PRIVATE_ACTION}"
# Flower's action names must be Python identifiers
SHARE_KEYS, MASKED_INPUT, UNMASK = "secagg_share_keys", "secagg_masked_input", "secagg_unmask"
STAGE_TYPES = {name: f"query.{name}" for name in (SHARE_KEYS, MASKED_INPUT, UNMASK)}
BLOB = "secagg"  # records.content(..., secagg=bytes): the record entry carrying a stage's protocol bytes
PREFIX = "privacy-"


# --- ClientPrivacy <-> record fields ------------------------------------------------------------


def privacy_fields(cp: ClientPrivacy) -> dict[str, int | float | bool]:
    """The round's ClientPrivacy as ConfigRecord scalars (``privacy-<field>``)."""
    return {PREFIX + k: v for k, v in dataclasses.asdict(cp).items()}


def privacy_from_fields(record: Mapping[str, Any]) -> ClientPrivacy:
    """The inverse of `privacy_fields`, type-checked; FedarenaError names the first bad entry."""
    from fedarena.privacy.round import ClientPrivacy

    values = {}
    for f in dataclasses.fields(ClientPrivacy):
        name, kind = f.name, getattr(f.type, "__name__", f.type)  # annotations are strings under `from __future__ import annotations`
        value = record.get(PREFIX + name)
        ok = {"bool": isinstance(value, bool), "int": isinstance(value, int) and not isinstance(value, bool),
              "float": isinstance(value, (int, float)) and not isinstance(value, bool)}[kind]
        if not ok:
            raise FedarenaError(f"record entry {PREFIX + name!r} must be a {kind}, got {value!r}")
        values[name] = float(value) if kind == "float" else value
    cp = ClientPrivacy(**values)
    if cp.dp_clip < 0 or cp.dp_noise < 0 or cp.clients < 1 or cp.max_weight < 1:
        raise FedarenaError(f"inconsistent client privacy settings: {cp}")
    if cp.skellam_clip < 0 or cp.skellam_scale < 0 or cp.skellam_variance < 0 or (cp.skellam_clip > 0) != (
            cp.skellam_scale > 0):
        raise FedarenaError(f"inconsistent client privacy settings: {cp}")
    if cp.secagg:
        cp.secagg_config().validate(cp.clients)
        if not cp.skellam_clip:
            cp.fixed_point()  # refuses a capacity overflow
    return cp


# --- the node's update, protected before it leaves ------------------------------------------------


def protect(cp: ClientPrivacy, broadcast: Broadcast, upload: Upload, client: int,
            store: "SecretStore | None") -> tuple[bytes, bytes]:
    """(Upload payload, SecAgg blob) of a node's reply: local DP noises the update (OS noise); under SecAgg
    the update is encoded, stage 0 runs and only AdvertiseKeys leaves (the payload is empty)."""
    from fedarena.core.codec import encode
    from fedarena.privacy import dp
    from fedarena.privacy.round import client_delta, encode_update

    missing = sorted(set(upload.params) - set(broadcast.params))
    if missing:
        raise FedarenaError(f"upload keys {missing} are not in the broadcast: no reference for the update")
    ref = {k: broadcast.params[k] for k in upload.params}
    delta = client_delta(ref, upload.params, cp, dp.SecureNoise())
    if not cp.secagg:
        # no metrics: the training loss depends on the data and is not covered by the DP noise
        noised = Upload(params={k: ref[k] + delta[k] for k in delta}, num_samples=upload.num_samples)
        return encode(noised), b""
    if store is None:
        raise FedarenaError("secure aggregation needs the node config state-dir=PATH (where the round's secrets are kept)")
    # fixed point clips (the client-side range check); central DP clips to C and adds the client's Skellam share
    vector = encode_update(delta, upload.num_samples, cp, dp.SecureNoise())
    return b"", client_start(store, cp, client, vector)


# --- client secrets between stages --------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ClientSecrets:
    """Everything a `secagg.Client` holds between two stages, plus the plain encoding until it is masked."""

    client: int
    config: secagg.SecAggConfig
    stage: int
    c_sk: bytes
    s_sk: bytes
    b: bytes
    own_shares: tuple[bytes, bytes]
    peers: tuple[tuple[int, bytes], ...]  # (id, c_pk + s_pk)
    received: tuple[tuple[int, bytes], ...]  # (id, ciphertext)
    vector: np.ndarray | None

    def to_bytes(self) -> bytes:
        c = self.config
        arrays = {
            "meta": np.array([self.client, c.round_id, c.threshold, c.bits, c.neighbours or 0, self.stage], np.int64),
            "c_sk": _u8(self.c_sk), "s_sk": _u8(self.s_sk), "b": _u8(self.b),
            "own_sk": _u8(self.own_shares[0]), "own_b": _u8(self.own_shares[1]),
            "peer_ids": np.array([i for i, _ in self.peers], np.int64),
            "peer_keys": _u8(b"".join(k for _, k in self.peers)).reshape(-1, 2 * secagg.KEY_BYTES),
            "recv_ids": np.array([i for i, _ in self.received], np.int64),
            "recv_ct": _u8(b"".join(ct for _, ct in self.received)).reshape(-1, secagg.CIPHERTEXT_BYTES),
        }
        if self.vector is not None:
            arrays["vector"] = np.ascontiguousarray(self.vector)
        return save_arrays(arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> "ClientSecrets":
        from safetensors import SafetensorError

        try:
            a = load_arrays(data)
            client, round_id, threshold, bits, k, stage = (int(x) for x in a["meta"])
            peers = tuple((int(i), bytes(row)) for i, row in zip(a["peer_ids"], a["peer_keys"]))
            received = tuple((int(i), bytes(row)) for i, row in zip(a["recv_ids"], a["recv_ct"]))
            return cls(client, secagg.SecAggConfig(threshold, bits, k or None, round_id), stage,
                       bytes(a["c_sk"]), bytes(a["s_sk"]), bytes(a["b"]), (bytes(a["own_sk"]), bytes(a["own_b"])),
                       peers, received, a.get("vector"))
        except (SafetensorError, KeyError, ValueError, TypeError) as exc:
            raise FedarenaError(f"unreadable secagg secrets file: {exc}") from None


def _u8(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).copy()


def snapshot(client: secagg.Client, vector: np.ndarray | None) -> ClientSecrets:
    return ClientSecrets(client.id, client.config, client._stage, client._c_sk.private_bytes_raw(),
                         client._s_sk.private_bytes_raw(), client._b, client._own_shares,
                         tuple(sorted((v, c + s) for v, (c, s) in client._peers.items())),
                         tuple(sorted(client._received.items())), vector)


def restore(secrets: ClientSecrets) -> secagg.Client:
    """A `secagg.Client` in the state `snapshot` saw (its randomness is the OS's, as in a fresh one)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    client = secagg.Client(secrets.client, secrets.config)
    client._c_sk = X25519PrivateKey.from_private_bytes(secrets.c_sk)
    client._s_sk = X25519PrivateKey.from_private_bytes(secrets.s_sk)
    client._stage, client._b, client._own_shares = secrets.stage, secrets.b, secrets.own_shares
    n = secagg.KEY_BYTES
    client._peers = {v: (k[:n], k[n:]) for v, k in secrets.peers}
    client._received = dict(secrets.received)
    return client


class SecretStore:
    """One node's secagg secrets for (run, seed, algorithm): a 0600 file per round under a 0700 directory."""

    def __init__(self, state_dir: Path, run_id: int, seed: int, algorithm: str) -> None:
        self.dir = Path(state_dir) / "secagg" / f"run-{run_id}" / f"seed-{seed}" / algorithm

    def path(self, rnd: int) -> Path:
        return self.dir / f"round-{rnd}.secrets"

    def save(self, rnd: int, secrets: ClientSecrets) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        tmp = self.dir / f".round-{rnd}.tmp-{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.to_bytes())
        os.replace(tmp, self.path(rnd))

    def load(self, rnd: int) -> ClientSecrets:
        path = self.path(rnd)
        if not path.exists():
            raise secagg.SecAggAbort(f"secagg abort: this node holds no secrets for round {rnd} (restarted, or "
                                     "a stage arrived out of order)")
        return ClientSecrets.from_bytes(path.read_bytes())

    def delete(self, rnd: int) -> None:
        self.path(rnd).unlink(missing_ok=True)

    def purge_before(self, rnd: int) -> None:
        """Delete the secrets of earlier rounds (an aborted round never reaches unmasking)."""
        for path in self.dir.glob("round-*.secrets") if self.dir.exists() else ():
            if int(path.stem.removeprefix("round-")) < rnd:
                path.unlink(missing_ok=True)


def client_start(store: SecretStore, cp: ClientPrivacy, client: int, vector: np.ndarray) -> bytes:
    """Stage 0 on the node: fresh OS keys, AdvertiseKeys out, the secrets and the encoding kept."""
    store.purge_before(cp.round)
    c = secagg.Client(client, cp.secagg_config())
    message = c.advertise_keys()
    store.save(cp.round, snapshot(c, vector))
    return message


def client_step(store: SecretStore, rnd: int, stage: str, inbox: bytes) -> bytes:
    """Stages 1, 2 and 4 on the node: restore the client, answer, keep (or, after unmasking, delete) its secrets."""
    secrets = store.load(rnd)
    client = restore(secrets)
    if stage == SHARE_KEYS:
        out = client.share_keys(inbox)
        store.save(rnd, snapshot(client, secrets.vector))
    elif stage == MASKED_INPUT:
        if secrets.vector is None:
            raise FedarenaError(f"round {rnd}: no encoded update kept for the masked input")
        out = client.masked_input(inbox, secrets.vector)
        store.save(rnd, snapshot(client, None))  # the plain encoding is no longer needed: not kept
    elif stage == UNMASK:
        try:
            out = client.unmask(inbox)
        finally:
            store.delete(rnd)
    else:
        raise FedarenaError(f"unknown secagg stage {stage!r}")
    return out


# --- the server's side ---------------------------------------------------------------------------

Exchange = Callable[[str, dict[int, bytes]], dict[int, bytes]]  # (stage, blob per client) -> replies' blobs
_STAGES = (  # (server step, message stage, StageBytes field down, StageBytes field up)
    ("receive_keys", SHARE_KEYS, "keys_down", "shares_up"),
    ("receive_shares", MASKED_INPUT, "shares_down", "masked_up"),
    ("receive_masked", UNMASK, "request_down", "unmask_up"),
)


def sender_matches(blob: bytes, client: int) -> bool:
    """Every client -> server message has its sender (or party) id as a u32 right after the 5-byte header."""
    return len(blob) >= 9 and struct.unpack(">I", blob[5:9])[0] == client


def run_server(cp: ClientPrivacy, advertised: dict[int, bytes], exchange: Exchange) -> secagg.SecAggResult:
    """Drive a `secagg.Server` through stages 1-4 given the AdvertiseKeys each client sent with its training
    reply; ``exchange`` delivers one stage's messages and returns the blobs of the clients that answered.
    Raises ``SecAggAbort`` when too few clients remain."""
    server = secagg.Server(cp.secagg_config())
    counts: dict[int, dict[str, int]] = {c: dict.fromkeys(secagg.StageBytes.__dataclass_fields__, 0) for c in advertised}
    seconds = dict.fromkeys(secagg.STAGES, 0.0)
    replies = _checked(advertised, counts, "advertise_up")
    for (step, stage, down, up), name in zip(_STAGES, secagg.STAGES):
        start = time.perf_counter()
        outgoing = getattr(server, step)(list(replies.values()))
        for c, blob in outgoing.items():
            counts[c][down] += len(blob)
        replies = _checked(exchange(stage, outgoing), counts, up)
        seconds[name] = time.perf_counter() - start
    start = time.perf_counter()
    total = server.receive_unmask(list(replies.values()))
    seconds["unmasking"] += time.perf_counter() - start
    return secagg.SecAggResult(
        sum=total, bits=cp.bits, survivors=server.alive["masked_input"], stage_clients=dict(server.alive),
        neighbours=dict(server.graph), bytes_per_client={c: secagg.StageBytes(**n) for c, n in counts.items()},
        client_seconds={}, server_seconds=seconds, seeded=False)


def _checked(replies: Mapping[int, bytes], counts: dict[int, dict[str, int]], field: str) -> dict[int, bytes]:
    out = {}
    for c, blob in sorted(replies.items()):
        if c not in counts or not sender_matches(blob, c):
            log.warning("secagg: dropped a %s reply from client %s that names another sender", field, c)
            continue
        counts[c][field] += len(blob)
        out[c] = blob
    return out


__all__ = ["ClientSecrets", "SecretStore", "TRAIN_PRIVATE", "STAGE_TYPES", "client_start", "client_step",
           "privacy_fields", "privacy_from_fields", "protect", "restore", "run_server", "snapshot"]
