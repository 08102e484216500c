"""The client's side of one SecAgg round (Bonawitz et al., ACM CCS 2017, Fig. 4, honest-but-curious variant;
SecAgg+ neighbourhoods of Bell et al., ACM CCS 2020) and its round secrets.

Masked input of client u (Fig. 4, round 2), with ``U2`` the clients that sent shares and N(u) its
neighbours (everybody for SecAgg):
    y_u = x_u + PRG(b_u) + sum_{v in N(u) ∩ U2} Delta_{u,v} PRG(s_{u,v})   (mod 2^bits),
    Delta_{u,v} = +1 if u > v else -1,   s_{u,v} = HKDF(X25519(s_u^SK, s_v^PK)).
s_u^SK and b_u are Shamir-shared (threshold t) among u and its neighbours, u keeping its own share.

The client checks the server's unmask request: per client id it may ask for the self-mask share (id
survived round 2) OR the mask-key share (id dropped after round 1), never both, only about ids whose
shares the client holds, never the mask key of the client itself, and with at least t self-mask ids;
anything else raises ``UnmaskRefused``.

Round secrets: ``Client.export_secrets()`` returns a `ClientSecrets` (keys, b_u, own shares, the
neighbours' public keys, the received ciphertexts) and ``Client.restore_secrets()`` rebuilds the client
from one, so a process that restarts between stages (a Flower ClientApp runs once per message) carries
the round across stages. ``ClientSecrets.to_bytes``/``from_bytes`` is an explicit layout with a SHA-256
digest; a truncated, corrupted or inconsistent export is refused with ``FedarenaError``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fedarena.core.types import FedarenaError
from fedarena.privacy import shamir
from fedarena.privacy.fixedpoint import storage_dtype
from fedarena.privacy.secagg.config import (
    CIPHERTEXT_BYTES,
    KEY_BYTES,
    MAX_ID,
    SHARE_BYTES,
    STAGES,
    VERSION,
    SecAggConfig,
    UnmaskRefused,
    abort,
)
from fedarena.privacy.secagg.crypto import Randomness, aad, agree, derive, expand_mask, nonce, public
from fedarena.privacy.secagg.messages import (
    AdvertiseKeys,
    EncryptedShares,
    KeyList,
    MaskedInput,
    Reader,
    UnmaskRequest,
    UnmaskShares,
    pack_items,
)

SECRETS_MAGIC = VERSION + b"/client-secrets"
_SECRETS_META = ">IIIBIB"  # client, round id, threshold, bits, neighbours (0: complete graph), stage


def _refuse(problem: str) -> FedarenaError:
    return FedarenaError(f"secagg client secrets refused: {problem}")


@dataclass(frozen=True)
class ClientSecrets:
    """What a `Client` holds between two stages. ``stage``: the stages done (0-4). From stage 2 (after
    share_keys) it holds b_u, its own shares and its neighbours' keys; from stage 3 the received shares."""

    client: int
    config: SecAggConfig
    stage: int
    c_sk: bytes
    s_sk: bytes
    b: bytes = b""
    own_shares: tuple[bytes, bytes] = (b"", b"")
    peers: tuple[tuple[int, bytes], ...] = ()  # (id, c_pk + s_pk), sorted by id
    received: tuple[tuple[int, bytes], ...] = ()  # (sender id, ciphertext), sorted by id

    def validate(self) -> None:
        """Refuse (FedarenaError) secrets no honest client could hold: sizes, ids, stage consistency."""
        try:
            self.config.check_fields()
        except FedarenaError as exc:
            raise _refuse(str(exc)) from None
        t, stage = self.config.threshold, self.stage
        if not 0 <= self.client <= MAX_ID or not 0 <= stage <= len(STAGES) or t < 2:
            raise _refuse(f"client {self.client}, stage {stage} or threshold {t} out of range")
        if len(self.c_sk) != KEY_BYTES or len(self.s_sk) != KEY_BYTES:
            raise _refuse(f"private keys must be {KEY_BYTES} bytes")
        if stage < 2 and (self.b or any(self.own_shares) or self.peers or self.received):
            raise _refuse(f"stage {stage} (before share_keys) holds shares or neighbours")
        if stage >= 2:
            ids = [v for v, _ in self.peers]
            if len(self.b) != KEY_BYTES or any(len(s) != SHARE_BYTES for s in self.own_shares):
                raise _refuse("the self-mask seed or the client's own shares have the wrong size")
            if ids != sorted(set(ids)) or self.client in ids or not all(0 <= v <= MAX_ID for v in ids):
                raise _refuse("neighbour ids must be distinct, sorted, in range and not the client's own")
            keys = [k for _, blob in self.peers for k in (blob[:KEY_BYTES], blob[KEY_BYTES:])]
            if any(len(blob) != 2 * KEY_BYTES for _, blob in self.peers) or len(set(keys)) != len(keys):
                raise _refuse("neighbour public keys must be distinct pairs of 32-byte keys")
            if len(ids) + 1 < t:
                raise _refuse(f"{len(ids)} neighbours cannot reach the threshold {t}")
        if stage < 3 and self.received:
            raise _refuse(f"stage {stage} (before masked_input) holds received shares")
        if stage >= 3:
            senders = [v for v, _ in self.received]
            if senders != sorted(set(senders)) or not set(senders) <= {v for v, _ in self.peers}:
                raise _refuse("received shares must come from distinct neighbours, sorted")
            if any(len(ct) != CIPHERTEXT_BYTES for _, ct in self.received) or len(senders) + 1 < t:
                raise _refuse("received ciphertexts have the wrong size or are fewer than the threshold")

    def to_bytes(self) -> bytes:
        """Explicit layout (magic, fields, SHA-256 of all that); secrets held by stage only. Validated first."""
        self.validate()
        c = self.config
        body = SECRETS_MAGIC + struct.pack(_SECRETS_META, self.client, c.round_id, c.threshold, c.bits,
                                           c.neighbours or 0, self.stage) + self.c_sk + self.s_sk
        if self.stage >= 2:
            body += self.b + self.own_shares[0] + self.own_shares[1] + pack_items(self.peers)
        if self.stage >= 3:
            body += pack_items(self.received)
        return body + hashlib.sha256(body).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> ClientSecrets:
        """The inverse of `to_bytes`; a wrong digest (corruption, tampering), layout or content is refused."""
        body, digest = data[:-32], data[-32:]
        if len(data) < len(SECRETS_MAGIC) + 32 or not body.startswith(SECRETS_MAGIC):
            raise FedarenaError("unreadable secagg client secrets: not a fedarena-secagg/1 secrets export")
        if hashlib.sha256(body).digest() != digest:
            raise FedarenaError("unreadable secagg client secrets: the digest does not match (corrupted or altered)")
        r = Reader(body[len(SECRETS_MAGIC):], "client secrets", lambda text: FedarenaError(f"unreadable secagg {text}"))
        client, round_id, t, bits, k, stage = struct.unpack(_SECRETS_META, r.take(struct.calcsize(_SECRETS_META)))
        c_sk, s_sk = r.take(KEY_BYTES), r.take(KEY_BYTES)
        b, own = b"", (b"", b"")
        peers: tuple[tuple[int, bytes], ...] = ()
        received: tuple[tuple[int, bytes], ...] = ()
        if stage >= 2:
            b, own = r.take(KEY_BYTES), (r.take(SHARE_BYTES), r.take(SHARE_BYTES))
            peers = r.items(2 * KEY_BYTES)
        if stage >= 3:
            received = r.items(CIPHERTEXT_BYTES)
        r.done()
        secrets = cls(client, SecAggConfig(t, bits, k or None, round_id), stage, c_sk, s_sk, b, own, peers, received)
        secrets.validate()
        return secrets


class Client:
    """One client's side of one round; methods must be called in protocol order, each once."""

    def __init__(self, client_id: int, config: SecAggConfig, randomness: Randomness | None = None) -> None:
        if not 0 <= client_id <= MAX_ID:
            raise FedarenaError(f"secagg client id must be in [0, {MAX_ID}], got {client_id}")
        self.id, self.config = client_id, config
        self._rand = randomness or Randomness()
        self._c_sk, self._s_sk = self._rand.x25519(), self._rand.x25519()
        self._stage = 0
        self._peers: dict[int, tuple[bytes, bytes]] = {}
        self._own_shares = (b"", b"")
        self._received: dict[int, bytes] = {}
        self._b = b""

    # --- round secrets --------------------------------------------------------------------------

    def export_secrets(self) -> ClientSecrets:
        """This client's round secrets, validated: keep them private (they unmask its input)."""
        secrets = ClientSecrets(
            self.id, self.config, self._stage, self._c_sk.private_bytes_raw(), self._s_sk.private_bytes_raw(),
            self._b, self._own_shares, tuple(sorted((v, c + s) for v, (c, s) in self._peers.items())),
            tuple(sorted(self._received.items())))
        secrets.validate()
        return secrets

    @classmethod
    def restore_secrets(cls, secrets: ClientSecrets, randomness: Randomness | None = None) -> Client:
        """The client `export_secrets` saw, ready for its next stage (``randomness``: the OS's by default;
        it is drawn from only by share_keys)."""
        secrets.validate()
        client = cls.__new__(cls)
        client.id, client.config, client._rand = secrets.client, secrets.config, randomness or Randomness()
        client._c_sk = X25519PrivateKey.from_private_bytes(secrets.c_sk)
        client._s_sk = X25519PrivateKey.from_private_bytes(secrets.s_sk)
        client._stage, client._b, client._own_shares = secrets.stage, secrets.b, secrets.own_shares
        client._peers = {v: (k[:KEY_BYTES], k[KEY_BYTES:]) for v, k in secrets.peers}
        client._received = dict(secrets.received)
        return client

    # --- the stages -----------------------------------------------------------------------------

    def answer(self, stage: str, inbox: bytes, vector: np.ndarray | None = None) -> bytes:
        """The reply to the server's message of ``stage`` (one of ``STAGES``; masked_input needs ``vector``)."""
        if stage == "advertise_keys":
            return self.advertise_keys()
        if stage == "share_keys":
            return self.share_keys(inbox)
        if stage == "masked_input":
            if vector is None:
                raise FedarenaError(f"secagg client {self.id}: masked_input needs the encoded input")
            return self.masked_input(inbox, vector)
        if stage == "unmasking":
            return self.unmask(inbox)
        raise FedarenaError(f"unknown secagg stage {stage!r}, expected one of {STAGES}")

    def _advance(self, stage: int) -> None:
        if self._stage != stage:
            raise FedarenaError(f"secagg client {self.id}: {STAGES[stage]} called out of order")
        self._stage += 1

    def _check_round(self, round_id: int, name: str) -> None:
        if round_id != self.config.round_id:
            raise abort(f"client {self.id} got a {name} for round {round_id}, not {self.config.round_id}")

    def advertise_keys(self) -> bytes:
        """Round 0: the two public keys."""
        self._advance(0)
        return AdvertiseKeys(self.config.round_id, self.id, public(self._c_sk), public(self._s_sk)).to_bytes()

    def share_keys(self, key_list: bytes) -> bytes:
        """Round 1: check the neighbours' keys, Shamir-share s_u^SK and b_u, encrypt them per neighbour."""
        self._advance(1)
        msg = KeyList.from_bytes(key_list)
        self._check_round(msg.round_id, "KeyList")
        keys = {v: (blob[:KEY_BYTES], blob[KEY_BYTES:]) for v, blob in msg.keys}
        all_keys = [k for pair in keys.values() for k in pair] + [public(self._c_sk), public(self._s_sk)]
        if self.id in keys or len(set(all_keys)) != len(all_keys):
            raise abort(f"client {self.id} got a KeyList listing itself or repeating public keys")
        if len(keys) + 1 < self.config.threshold:
            t = self.config.threshold
            raise abort(f"client {self.id} has {len(keys)} neighbours, threshold {t} needs at least {t - 1}")
        self._peers = keys
        self._b = self._rand.bytes(KEY_BYTES)
        xs = [v + 1 for v in sorted([*keys, self.id])]
        t = self.config.threshold
        sk_shares = shamir.split_bytes(self._s_sk.private_bytes_raw(), t, xs, self._rand.bytes)
        b_shares = shamir.split_bytes(self._b, t, xs, self._rand.bytes)
        self._own_shares = (sk_shares[self.id + 1], b_shares[self.id + 1])
        ciphertexts = []
        for v, (c_pk, _) in sorted(keys.items()):
            aead = ChaCha20Poly1305(self._pair_key(c_pk, b"share-encryption", v))
            plain = sk_shares[v + 1] + b_shares[v + 1]
            ciphertexts.append((v, aead.encrypt(nonce(self.id, v), plain, aad(self.config.round_id, self.id, v))))
        return EncryptedShares(self.config.round_id, self.id, tuple(ciphertexts)).to_bytes()

    def _pair_key(self, peer_pk: bytes, purpose: bytes, v: int) -> bytes:
        own = self._c_sk if purpose == b"share-encryption" else self._s_sk
        shared = agree(own, peer_pk, f"client {self.id}")
        return derive(shared, purpose, self.config.round_id, self.id, v)

    def masked_input(self, shares: bytes, vector: np.ndarray) -> bytes:
        """Round 2: y_u = x_u + PRG(b_u) + sum_{v in U2} Delta_{u,v} PRG(s_{u,v}) mod 2^bits."""
        self._advance(2)
        msg = EncryptedShares.from_bytes(shares)
        self._check_round(msg.round_id, "share bundle")
        senders = {v for v, _ in msg.ciphertexts}
        if msg.party != self.id or not senders <= set(self._peers):
            raise abort(f"client {self.id} got shares addressed elsewhere or from non-neighbours")
        if len(senders) + 1 < self.config.threshold:
            t = self.config.threshold
            raise abort(f"client {self.id}: only {len(senders)} neighbours sent shares, threshold is {t}")
        self._received = dict(msg.ciphertexts)
        bits = self.config.bits
        y = check_input(vector, bits, self.id) + expand_mask(self._b, len(vector), bits)
        for v in sorted(senders):
            mask = expand_mask(self._pair_key(self._peers[v][1], b"pairwise-mask", v), len(vector), bits)
            if self.id > v:
                y += mask
            else:
                y -= mask
        y &= y.dtype.type((1 << bits) - 1)
        return MaskedInput(self.config.round_id, self.id, bits, y).to_bytes()

    def unmask(self, request: bytes) -> bytes:
        """Round 4: check the request, decrypt the neighbours' shares and send the ones asked for."""
        self._advance(3)
        msg = UnmaskRequest.from_bytes(request)
        self._check_round(msg.round_id, "UnmaskRequest")
        self._check_request(msg)
        shares = {v: self._share_pair(v) for v in (*msg.self_mask_ids, *msg.mask_key_ids)}
        return UnmaskShares(
            self.config.round_id,
            self.id,
            tuple((v, shares[v][1]) for v in msg.self_mask_ids),
            tuple((v, shares[v][0]) for v in msg.mask_key_ids),
        ).to_bytes()

    def _check_request(self, msg: UnmaskRequest) -> None:
        both = set(msg.self_mask_ids) & set(msg.mask_key_ids)
        held = {*self._received, self.id}
        unknown = set(msg.self_mask_ids + msg.mask_key_ids) - held
        reason = ""
        if both:
            reason = f"asks for both the self-mask and the mask-key share of clients {sorted(both)}"
        elif unknown:
            reason = f"asks about clients {sorted(unknown)} whose shares this client does not hold"
        elif self.id in msg.mask_key_ids:
            reason = "asks for this client's own mask-key share although it sent its masked input"
        elif len(msg.self_mask_ids) < self.config.threshold:
            reason = f"lists {len(msg.self_mask_ids)} survivors, fewer than the threshold {self.config.threshold}"
        if reason:
            raise abort(f"client {self.id} refuses the unmask request: it {reason}", UnmaskRefused)

    def _share_pair(self, v: int) -> tuple[bytes, bytes]:
        """(share of s_v^SK, share of b_v) that v sent to this client (or this client's own)."""
        if v == self.id:
            return self._own_shares
        aead = ChaCha20Poly1305(self._pair_key(self._peers[v][0], b"share-encryption", v))
        try:
            plain = aead.decrypt(nonce(v, self.id), self._received[v], aad(self.config.round_id, v, self.id))
        except InvalidTag:
            raise abort(f"client {self.id}: the shares from client {v} fail authentication") from None
        return plain[:SHARE_BYTES], plain[SHARE_BYTES:]


def check_input(vector: np.ndarray, bits: int, client: int) -> np.ndarray:
    """The client-side range check: a 1-D vector of residues in [0, 2^bits), copied to the wire dtype."""
    vector = np.asarray(vector)
    if vector.ndim != 1 or vector.size == 0 or vector.dtype.kind != "u":
        raise FedarenaError(
            f"secagg client {client}: input must be a non-empty 1-D unsigned integer vector "
            f"(fixed-point encoded), got shape {vector.shape} dtype {vector.dtype}"
        )
    if bits < 64 and vector.max() >= 1 << bits:
        raise FedarenaError(f"secagg client {client}: input entries must be < 2^{bits}, got {vector.max()}")
    return vector.astype(storage_dtype(bits))
