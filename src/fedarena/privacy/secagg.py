"""Secure aggregation: SecAgg (Bonawitz et al. 2017) with the SecAgg+ sparse graph (Bell et al. 2020).

Papers:
- K. Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
  ACM CCS 2017 (eprint 2017/281). Fig. 4, the honest-but-curious variant: rounds 0 AdvertiseKeys,
  1 ShareKeys, 2 MaskedInputCollection, 4 Unmasking. Round 3 (ConsistencyCheck) and the
  signatures exist only for an actively malicious server and are NOT implemented here.
- J. Bell, K. Bonawitz, A. Gascon, T. Lepoint, M. Raykova, "Secure Single-Server Aggregation with
  (Poly)Logarithmic Overhead", ACM CCS 2020 (eprint 2020/704): each client shares secrets with and
  masks against only its k neighbours in a graph the server chooses (SecAgg+).

Masked input of client u (Fig. 4, round 2), with ``U2`` the clients that sent shares and N(u) its
neighbours (everybody for SecAgg):
    y_u = x_u + PRG(b_u) + sum_{v in N(u) ∩ U2} Delta_{u,v} PRG(s_{u,v})   (mod 2^bits),
    Delta_{u,v} = +1 if u > v else -1,   s_{u,v} = HKDF(X25519(s_u^SK, s_v^PK)).
The server (round 4) sums y_u over the survivors U3, subtracts PRG(b_u) for u in U3 (b_u rebuilt
from t Shamir shares) and, for each v in U2 \\ U3, rebuilds s_v^SK from t shares and removes the
orphaned pairwise masks Delta_{u,v} PRG(s_{u,v}) of its neighbours u in U3. Pairwise masks between
two survivors cancel. The result is sum_{u in U3} x_u mod 2^bits, exactly.

Choices (all primitives from ``cryptography``):
- key agreement X25519; HKDF-SHA256 derives the pairwise mask seed and the share-encryption key
  (distinct ``info`` labels, bound to the round id and the pair);
- shares are encrypted with ChaCha20-Poly1305; the nonce is (sender, receiver) — unique because keys
  are fresh every round and each direction carries one message — and the AAD binds the protocol
  version, round, sender and receiver;
- PRG(seed) is the ChaCha20 keystream under the 32-byte seed, read as little-endian uint32 (bits <= 32)
  or uint64 words and reduced mod 2^bits; vectorised with numpy, no per-entry Python loop;
- Shamir sharing (threshold t, ``shamir.py``) of the 32-byte b_u and the raw X25519 s_u^SK among
  u and its neighbours (u keeps its own share, as in Fig. 4);
- SecAgg+ graph: a Harary graph H_{k,n} (each client linked to the k/2 nearest on each side of a
  ring; k even; k-connected, every degree exactly k) over a uniformly random relabelling of the
  clients alive after AdvertiseKeys, drawn from the server's secure randomness — the graph used by
  Flower's SecAgg+ and by the reference simulations of Bell et al.; their analysis uses random
  graphs of degree O(log n). ``neighbours=None`` (or k >= n - 1) is the complete graph: SecAgg.
- randomness: keys, b_u, Shamir coefficients and the graph come from the OS (``os.urandom`` and
  ``X25519PrivateKey.generate``), fresh per round. ``seed=`` switches to a deterministic ChaCha20
  stream per (seed, round, party) for tests only; results carry ``seeded=True`` to be labelled.
- dropouts: every stage needs at least t live clients (and, for each client, t live members of its
  neighbourhood, itself included); otherwise ``SecAggAbort`` and no aggregate at all.
- clients check the server's unmask request: per client id it may ask for the self-mask share
  (id survived round 2) OR the mask-key share (id dropped after round 1), never both, only about ids
  whose shares the client holds, never the mask key of the client itself, and with at least t
  self-mask ids; anything else raises ``UnmaskRefused``.
Messages are frozen dataclasses with explicit big-endian byte layouts (never pickle); their sizes
are what ``StageBytes`` counts.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedarena.core.types import FedarenaError
from fedarena.privacy import shamir
from fedarena.privacy.fixedpoint import _check_bits, storage_dtype

log = logging.getLogger(__name__)

STAGES = ("advertise_keys", "share_keys", "masked_input", "unmasking")
VERSION = b"fedarena-secagg/1"
KEY_BYTES = 32
SHARE_BYTES = shamir.share_size(KEY_BYTES)
CIPHERTEXT_BYTES = 2 * SHARE_BYTES + 16  # two shares + Poly1305 tag
MAX_ID = (1 << 32) - 2  # ids travel as uint32 and Shamir points are id + 1


class SecAggAbort(FedarenaError):
    """The secure-aggregation round cannot finish (too few clients, bad message): no aggregate."""


class UnmaskRefused(SecAggAbort):
    """A client refused the server's unmask request because it could reveal an input."""


def _abort(message: str, cls: type[SecAggAbort] = SecAggAbort) -> SecAggAbort:
    log.warning("secagg round aborted: %s", message)
    return cls(f"secagg abort: {message}")


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecAggConfig:
    """Threshold t, modulus 2^bits, SecAgg+ degree k (None: complete graph) and the round id."""

    threshold: int
    bits: int = 32
    neighbours: int | None = None
    round_id: int = 0

    def group_size(self, n_clients: int) -> int:
        """Holders of each client's shares (the client and its neighbours) among n clients."""
        if self.neighbours is None or self.neighbours >= n_clients - 1:
            return n_clients
        return self.neighbours + 1

    def validate(self, n_clients: int) -> None:
        """Refuse, naming the value, any setting that cannot run with ``n_clients`` clients."""
        _check_bits(self.bits)
        if not 0 <= self.round_id < 1 << 32:
            raise FedarenaError(f"secagg round_id must be in [0, 2^32), got {self.round_id}")
        if self.neighbours is not None and (self.neighbours < 2 or self.neighbours % 2):
            raise FedarenaError(
                f"secagg neighbours must be an even number >= 2 (Harary graph degree), got {self.neighbours}"
            )
        group = self.group_size(n_clients)
        if not 2 <= self.threshold <= group:
            raise FedarenaError(
                f"secagg threshold must be in [2, {group}] for {n_clients} clients "
                f"(neighbourhood of {group} incl. the client), got {self.threshold}"
            )


# --- randomness ---------------------------------------------------------------------------------


class Randomness:
    """OS randomness, or (tests only) a deterministic ChaCha20 stream from (seed, label)."""

    def __init__(self, stream_key: bytes | None = None) -> None:
        self.seeded = stream_key is not None
        self._stream = None
        if stream_key is not None:
            self._stream = Cipher(algorithms.ChaCha20(stream_key, bytes(16)), mode=None).encryptor()

    @classmethod
    def for_party(cls, seed: int | None, label: str) -> Randomness:
        if seed is None:
            return cls()
        key = HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=VERSION + b"/test-seed/" + label.encode())
        return cls(key.derive(str(seed).encode()))

    def bytes(self, n: int) -> bytes:
        return os.urandom(n) if self._stream is None else self._stream.update(bytes(n))

    def below(self, n: int) -> int:
        """Uniform integer in [0, n) by rejection sampling."""
        limit = (1 << 64) - (1 << 64) % n
        while True:
            value = int.from_bytes(self.bytes(8), "big")
            if value < limit:
                return value % n

    def x25519(self) -> X25519PrivateKey:
        if self._stream is None:
            return X25519PrivateKey.generate()
        return X25519PrivateKey.from_private_bytes(self.bytes(KEY_BYTES))


# --- crypto helpers -----------------------------------------------------------------------------


def _derive(shared: bytes, purpose: bytes, round_id: int, u: int, v: int) -> bytes:
    info = VERSION + b"/" + purpose + struct.pack(">III", round_id, min(u, v), max(u, v))
    return HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=info).derive(shared)


def _public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def _agree(own: X25519PrivateKey, peer_pk: bytes, who: str) -> bytes:
    """X25519 shared secret; a low-order (invalid) peer key aborts the round."""
    try:
        return own.exchange(X25519PublicKey.from_public_bytes(peer_pk))
    except ValueError:
        raise _abort(f"{who}: a peer's public key is invalid for X25519") from None


def expand_mask(seed: bytes, dim: int, bits: int) -> np.ndarray:
    """PRG(seed): ``dim`` words of the ChaCha20 keystream, mod 2^bits, in the wire dtype."""
    dtype = storage_dtype(bits)
    stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    words = np.frombuffer(stream.update(bytes(dim * dtype.itemsize)), dtype=dtype.newbyteorder("<"))
    words = words.astype(dtype, copy=False)
    if bits % 32:
        words = words & dtype.type((1 << bits) - 1)
    return words


def _aad(round_id: int, sender: int, receiver: int) -> bytes:
    return VERSION + struct.pack(">III", round_id, sender, receiver)


def _nonce(sender: int, receiver: int) -> bytes:
    return struct.pack(">IIxxxx", sender, receiver)


# --- messages -----------------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes, name: str) -> None:
        self.data, self.pos, self.name = memoryview(data), 0, name

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _abort(f"malformed {self.name} message: truncated at byte {self.pos}")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def header(self, tag: int) -> int:
        got_tag, round_id = struct.unpack(">BI", self.take(5))
        if got_tag != tag:
            raise _abort(f"malformed {self.name} message: type tag {got_tag}, expected {tag}")
        return round_id

    def ids(self) -> tuple[int, ...]:
        ids = tuple(self.u32() for _ in range(self.u32()))
        if len(set(ids)) != len(ids):
            raise _abort(f"malformed {self.name} message: repeated client ids")
        return ids

    def items(self, size: int) -> tuple[tuple[int, bytes], ...]:
        items = tuple((self.u32(), self.take(size)) for _ in range(self.u32()))
        if len({i for i, _ in items}) != len(items):
            raise _abort(f"malformed {self.name} message: repeated client ids")
        return items

    def done(self) -> None:
        if self.pos != len(self.data):
            raise _abort(f"malformed {self.name} message: {len(self.data) - self.pos} trailing bytes")


def _header(tag: int, round_id: int) -> bytes:
    return struct.pack(">BI", tag, round_id)


def _pack_ids(ids: Sequence[int]) -> bytes:
    return struct.pack(f">I{len(ids)}I", len(ids), *ids)


def _pack_items(items: Sequence[tuple[int, bytes]]) -> bytes:
    return struct.pack(">I", len(items)) + b"".join(struct.pack(">I", i) + blob for i, blob in items)


@dataclass(frozen=True)
class AdvertiseKeys:
    """Round 0, client -> server: the two X25519 public keys (c_u^PK for shares, s_u^PK for masks)."""

    round_id: int
    sender: int
    c_pk: bytes
    s_pk: bytes
    TAG = 1

    def to_bytes(self) -> bytes:
        return _header(self.TAG, self.round_id) + struct.pack(">I", self.sender) + self.c_pk + self.s_pk

    @classmethod
    def from_bytes(cls, data: bytes) -> AdvertiseKeys:
        r = _Reader(data, "AdvertiseKeys")
        msg = cls(r.header(cls.TAG), r.u32(), r.take(KEY_BYTES), r.take(KEY_BYTES))
        r.done()
        return msg


@dataclass(frozen=True)
class KeyList:
    """Round 0, server -> client: the public keys of the client's neighbours, as (id, c_pk + s_pk)."""

    round_id: int
    keys: tuple[tuple[int, bytes], ...]
    TAG = 2

    def to_bytes(self) -> bytes:
        return _header(self.TAG, self.round_id) + _pack_items(self.keys)

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyList:
        r = _Reader(data, "KeyList")
        msg = cls(r.header(cls.TAG), r.items(2 * KEY_BYTES))
        r.done()
        return msg


@dataclass(frozen=True)
class EncryptedShares:
    """Round 1: ``party``'s ciphertexts, keyed by receiver (upload) or by sender (server -> client)."""

    round_id: int
    party: int
    ciphertexts: tuple[tuple[int, bytes], ...]
    TAG = 3

    def to_bytes(self) -> bytes:
        body = struct.pack(">I", self.party) + _pack_items(self.ciphertexts)
        return _header(self.TAG, self.round_id) + body

    @classmethod
    def from_bytes(cls, data: bytes) -> EncryptedShares:
        r = _Reader(data, "EncryptedShares")
        msg = cls(r.header(cls.TAG), r.u32(), r.items(CIPHERTEXT_BYTES))
        r.done()
        return msg


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Round 2, client -> server: y_u, residues mod 2^bits in the wire dtype (little-endian)."""

    round_id: int
    sender: int
    bits: int
    vector: np.ndarray
    TAG = 4

    def to_bytes(self) -> bytes:
        data = np.ascontiguousarray(self.vector, dtype=storage_dtype(self.bits).newbyteorder("<")).tobytes()
        meta = struct.pack(">IBI", self.sender, self.bits, len(self.vector))
        return _header(self.TAG, self.round_id) + meta + data

    @classmethod
    def from_bytes(cls, data: bytes) -> MaskedInput:
        r = _Reader(data, "MaskedInput")
        round_id = r.header(cls.TAG)
        sender, bits, dim = struct.unpack(">IBI", r.take(9))
        if not 8 <= bits <= 64:
            raise _abort(f"malformed MaskedInput message from client {sender}: bits={bits}")
        dtype = storage_dtype(bits)
        vector = np.frombuffer(r.take(dim * dtype.itemsize), dtype=dtype.newbyteorder("<")).astype(dtype)
        r.done()
        if bits % 32 and np.any(vector >> dtype.type(bits)):
            raise _abort(f"malformed MaskedInput message from client {sender}: entries >= 2^{bits}")
        return cls(round_id, sender, bits, vector)


@dataclass(frozen=True)
class UnmaskRequest:
    """Round 4, server -> client: whose self-mask share (survivors) and mask-key share (dropped) to send."""

    round_id: int
    self_mask_ids: tuple[int, ...]
    mask_key_ids: tuple[int, ...]
    TAG = 5

    def to_bytes(self) -> bytes:
        return _header(self.TAG, self.round_id) + _pack_ids(self.self_mask_ids) + _pack_ids(self.mask_key_ids)

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskRequest:
        r = _Reader(data, "UnmaskRequest")
        msg = cls(r.header(cls.TAG), r.ids(), r.ids())
        r.done()
        return msg


@dataclass(frozen=True)
class UnmaskShares:
    """Round 4, client -> server: shares b_{v,u} for survivors v and s^SK_{v,u} for dropped v."""

    round_id: int
    sender: int
    self_mask: tuple[tuple[int, bytes], ...]
    mask_key: tuple[tuple[int, bytes], ...]
    TAG = 6

    def to_bytes(self) -> bytes:
        body = struct.pack(">I", self.sender) + _pack_items(self.self_mask) + _pack_items(self.mask_key)
        return _header(self.TAG, self.round_id) + body

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskShares:
        r = _Reader(data, "UnmaskShares")
        msg = cls(r.header(cls.TAG), r.u32(), r.items(SHARE_BYTES), r.items(SHARE_BYTES))
        r.done()
        return msg


# --- byte counts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageBytes:
    """Bytes one client sends (``*_up``) and receives (``*_down``) in each stage of one round."""

    advertise_up: int = 0
    keys_down: int = 0
    shares_up: int = 0
    shares_down: int = 0
    masked_up: int = 0
    request_down: int = 0
    unmask_up: int = 0

    @property
    def overhead_up(self) -> int:
        """Upload bytes SecAgg adds on top of the masked vector (keys, encrypted shares, unmask shares)."""
        return self.advertise_up + self.shares_up + self.unmask_up

    @property
    def overhead_down(self) -> int:
        return self.keys_down + self.shares_down + self.request_down


def message_bytes(*, dim: int, bits: int, neighbours: int) -> StageBytes:
    """Per-client byte counts of a round without dropouts; ``neighbours``: n - 1 (SecAgg) or k (SecAgg+)."""
    header, ident, count = 5, 4, 4
    return StageBytes(
        advertise_up=header + ident + 2 * KEY_BYTES,
        keys_down=header + count + neighbours * (ident + 2 * KEY_BYTES),
        shares_up=header + ident + count + neighbours * (ident + CIPHERTEXT_BYTES),
        shares_down=header + ident + count + neighbours * (ident + CIPHERTEXT_BYTES),
        masked_up=header + ident + 1 + count + dim * storage_dtype(bits).itemsize,
        request_down=header + 2 * count + (neighbours + 1) * ident,
        unmask_up=header + ident + 2 * count + (neighbours + 1) * (ident + SHARE_BYTES),
    )


# --- client -------------------------------------------------------------------------------------


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

    def _advance(self, stage: int) -> None:
        if self._stage != stage:
            raise FedarenaError(f"secagg client {self.id}: {STAGES[stage]} called out of order")
        self._stage += 1

    def _check_round(self, round_id: int, name: str) -> None:
        if round_id != self.config.round_id:
            raise _abort(f"client {self.id} got a {name} for round {round_id}, not {self.config.round_id}")

    def advertise_keys(self) -> bytes:
        self._advance(0)
        msg = AdvertiseKeys(self.config.round_id, self.id, _public(self._c_sk), _public(self._s_sk))
        return msg.to_bytes()

    def share_keys(self, key_list: bytes) -> bytes:
        """Round 1: check the neighbours' keys, Shamir-share s_u^SK and b_u, encrypt them per neighbour."""
        self._advance(1)
        msg = KeyList.from_bytes(key_list)
        self._check_round(msg.round_id, "KeyList")
        keys = {v: (blob[:KEY_BYTES], blob[KEY_BYTES:]) for v, blob in msg.keys}
        all_keys = [k for pair in keys.values() for k in pair] + [_public(self._c_sk), _public(self._s_sk)]
        if self.id in keys or len(set(all_keys)) != len(all_keys):
            raise _abort(f"client {self.id} got a KeyList listing itself or repeating public keys")
        if len(keys) + 1 < self.config.threshold:
            t = self.config.threshold
            raise _abort(f"client {self.id} has {len(keys)} neighbours, threshold {t} needs at least {t - 1}")
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
            aad = _aad(self.config.round_id, self.id, v)
            ciphertexts.append((v, aead.encrypt(_nonce(self.id, v), plain, aad)))
        return EncryptedShares(self.config.round_id, self.id, tuple(ciphertexts)).to_bytes()

    def _pair_key(self, peer_pk: bytes, purpose: bytes, v: int) -> bytes:
        own = self._c_sk if purpose == b"share-encryption" else self._s_sk
        shared = _agree(own, peer_pk, f"client {self.id}")
        return _derive(shared, purpose, self.config.round_id, self.id, v)

    def masked_input(self, shares: bytes, vector: np.ndarray) -> bytes:
        """Round 2: y_u = x_u + PRG(b_u) + sum_{v in U2} Delta_{u,v} PRG(s_{u,v}) mod 2^bits."""
        self._advance(2)
        msg = EncryptedShares.from_bytes(shares)
        self._check_round(msg.round_id, "share bundle")
        senders = {v for v, _ in msg.ciphertexts}
        if msg.party != self.id or not senders <= set(self._peers):
            raise _abort(f"client {self.id} got shares addressed elsewhere or from non-neighbours")
        if len(senders) + 1 < self.config.threshold:
            t = self.config.threshold
            raise _abort(f"client {self.id}: only {len(senders)} neighbours sent shares, threshold is {t}")
        self._received = dict(msg.ciphertexts)
        bits = self.config.bits
        y = _check_input(vector, bits, self.id) + expand_mask(self._b, len(vector), bits)
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
            raise _abort(f"client {self.id} refuses the unmask request: it {reason}", UnmaskRefused)

    def _share_pair(self, v: int) -> tuple[bytes, bytes]:
        """(share of s_v^SK, share of b_v) that v sent to this client (or this client's own)."""
        if v == self.id:
            return self._own_shares
        aead = ChaCha20Poly1305(self._pair_key(self._peers[v][0], b"share-encryption", v))
        try:
            aad = _aad(self.config.round_id, v, self.id)
            plain = aead.decrypt(_nonce(v, self.id), self._received[v], aad)
        except InvalidTag:
            raise _abort(f"client {self.id}: the shares from client {v} fail authentication") from None
        return plain[:SHARE_BYTES], plain[SHARE_BYTES:]


def _check_input(vector: np.ndarray, bits: int, client: int) -> np.ndarray:
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


# --- server -------------------------------------------------------------------------------------


def harary_graph(ids: Iterable[int], k: int | None, randomness: Randomness) -> dict[int, frozenset[int]]:
    """Neighbours per client: complete graph if k is None or k >= n - 1, else H_{k,n} on a random ring."""
    order = sorted(ids)
    n = len(order)
    if k is None or k >= n - 1:
        return {u: frozenset(order) - {u} for u in order}
    for i in range(n - 1, 0, -1):  # Fisher-Yates with secure randomness
        j = randomness.below(i + 1)
        order[i], order[j] = order[j], order[i]
    links: dict[int, set[int]] = {u: set() for u in order}
    for i, u in enumerate(order):
        for offset in range(1, k // 2 + 1):
            v = order[(i + offset) % n]
            links[u].add(v)
            links[v].add(u)
    return {u: frozenset(vs) for u, vs in links.items()}


class Server:
    """The server's side of one round; ``receive_*`` take the clients' messages and return replies."""

    def __init__(self, config: SecAggConfig, randomness: Randomness | None = None) -> None:
        self.config = config
        self._rand = randomness or Randomness()
        self.keys: dict[int, tuple[bytes, bytes]] = {}
        self.graph: dict[int, frozenset[int]] = {}
        self.alive: dict[str, frozenset[int]] = {}
        self._masked: dict[int, np.ndarray] = {}
        self._requests: dict[int, UnmaskRequest] = {}

    def _need(self, stage: str, ids: Iterable[int]) -> frozenset[int]:
        ids = frozenset(ids)
        if len(ids) < self.config.threshold:
            raise _abort(f"only {len(ids)} clients answered {stage}, threshold is {self.config.threshold}")
        self.alive[stage] = ids
        return ids

    def _parse(
        self, messages: Iterable[bytes], parser: Callable[[bytes], Any], allowed: frozenset[int] | None, stage: str
    ) -> dict[int, Any]:
        out = {}
        for data in messages:
            msg = parser(data)
            sender = msg.sender if hasattr(msg, "sender") else msg.party
            if msg.round_id != self.config.round_id:
                raise _abort(f"{stage} message from client {sender} is for round {msg.round_id}")
            if sender in out or (allowed is not None and sender not in allowed) or sender > MAX_ID:
                raise _abort(f"unexpected or repeated {stage} message from client {sender}")
            out[sender] = msg
        return out

    def receive_keys(self, messages: Iterable[bytes]) -> dict[int, bytes]:
        """Round 0: collect public keys (U1), draw the graph, send each client its neighbours' keys."""
        msgs = self._parse(messages, AdvertiseKeys.from_bytes, None, "advertise_keys")
        u1 = self._need("advertise_keys", msgs)
        self.keys = {u: (m.c_pk, m.s_pk) for u, m in msgs.items()}
        self.graph = harary_graph(u1, self.config.neighbours, self._rand)
        return {
            u: KeyList(self.config.round_id, tuple((v, b"".join(self.keys[v])) for v in sorted(vs))).to_bytes()
            for u, vs in self.graph.items()
        }

    def _check_groups(self, stage: str, alive: frozenset[int], holders: frozenset[int]) -> None:
        """Every client in ``alive`` needs t members of its group (itself included) in ``holders``."""
        for u in sorted(alive):
            have = len((self.graph[u] | {u}) & holders)
            if have < self.config.threshold:
                raise _abort(f"client {u} has {have} live neighbours (itself included) after {stage}, "
                             f"threshold is {self.config.threshold}")

    def receive_shares(self, messages: Iterable[bytes]) -> dict[int, bytes]:
        """Round 1: collect encrypted shares (U2) and forward each to its receiver."""
        msgs = self._parse(messages, EncryptedShares.from_bytes, self.alive["advertise_keys"], "share_keys")
        for u, m in msgs.items():
            if {v for v, _ in m.ciphertexts} != self.graph[u]:
                raise _abort(f"client {u} sent shares to clients other than its neighbours")
        u2 = self._need("share_keys", msgs)
        self._check_groups("share_keys", u2, u2)
        inbox: dict[int, list[tuple[int, bytes]]] = {v: [] for v in u2}
        for u in sorted(u2):
            for v, ct in msgs[u].ciphertexts:
                if v in u2:
                    inbox[v].append((u, ct))
        return {v: EncryptedShares(self.config.round_id, v, tuple(it)).to_bytes() for v, it in inbox.items()}

    def receive_masked(self, messages: Iterable[bytes]) -> dict[int, bytes]:
        """Round 2: collect masked inputs (U3); ask each survivor for self-mask or mask-key shares."""
        msgs = self._parse(messages, MaskedInput.from_bytes, self.alive["share_keys"], "masked_input")
        dims = {len(m.vector) for m in msgs.values()}
        if len(dims) > 1 or any(m.bits != self.config.bits for m in msgs.values()):
            raise _abort(f"masked inputs disagree on length {sorted(dims)} or bits (need {self.config.bits})")
        u3 = self._need("masked_input", msgs)
        u2 = self.alive["share_keys"]
        self._check_groups("masked_input", u3, u3)
        self._masked = {u: m.vector for u, m in msgs.items()}
        for u in u3:
            group = (self.graph[u] | {u}) & u2
            survived, dropped = tuple(sorted(group & u3)), tuple(sorted(group - u3))
            self._requests[u] = UnmaskRequest(self.config.round_id, survived, dropped)
        return {u: r.to_bytes() for u, r in self._requests.items()}

    def receive_unmask(self, messages: Iterable[bytes]) -> np.ndarray:
        """Round 4: rebuild b_u (u in U3) and s_v^SK (v in U2 minus U3); return sum_{U3} x_u mod 2^bits."""
        msgs = self._parse(messages, UnmaskShares.from_bytes, self.alive["masked_input"], "unmasking")
        for u, m in msgs.items():
            asked = self._requests[u]
            if tuple(v for v, _ in m.self_mask) != asked.self_mask_ids or tuple(
                v for v, _ in m.mask_key) != asked.mask_key_ids:
                raise _abort(f"client {u} answered a different unmask request than it was sent")
        self._need("unmasking", msgs)
        self_mask = _collect(msgs, "self_mask")
        mask_key = _collect(msgs, "mask_key")
        bits, u3 = self.config.bits, self.alive["masked_input"]
        dim = len(next(iter(self._masked.values())))
        total = np.zeros(dim, dtype=storage_dtype(bits))
        for u in sorted(u3):
            total += self._masked[u]
            total -= expand_mask(self._secret(self_mask, u, "self-mask seed"), dim, bits)
        for v in sorted(v for v in self.alive["share_keys"] - u3 if self.graph[v] & u3):
            self._remove_pairwise(total, v, self._secret(mask_key, v, "mask key"))
        return total & total.dtype.type((1 << bits) - 1)

    def _secret(self, shares: Mapping[int, dict[int, bytes]], owner: int, what: str) -> bytes:
        held = shares.get(owner, {})
        if len(held) < self.config.threshold:
            t = self.config.threshold
            raise _abort(f"only {len(held)} shares of client {owner}'s {what} arrived, threshold is {t}")
        first = dict(sorted(held.items())[: self.config.threshold])
        return shamir.reconstruct_bytes({h + 1: s for h, s in first.items()}, KEY_BYTES)

    def _remove_pairwise(self, total: np.ndarray, v: int, raw_key: bytes) -> None:
        """Subtract Delta_{u,v} PRG(s_{u,v}) that survivors u added for the dropped neighbour v."""
        key = X25519PrivateKey.from_private_bytes(raw_key)
        if _public(key) != self.keys[v][1]:
            raise _abort(f"the rebuilt mask key of client {v} does not match its advertised public key")
        for u in sorted(self.graph[v] & self.alive["masked_input"]):
            shared = _agree(key, self.keys[u][1], "server")
            seed = _derive(shared, b"pairwise-mask", self.config.round_id, u, v)
            mask = expand_mask(seed, len(total), self.config.bits)
            if u > v:
                total -= mask
            else:
                total += mask


def _collect(msgs: Mapping[int, UnmaskShares], kind: str) -> dict[int, dict[int, bytes]]:
    """{owner: {holder: share}} from the unmask responses."""
    out: dict[int, dict[int, bytes]] = {}
    for holder, m in msgs.items():
        for owner, share in getattr(m, kind):
            out.setdefault(owner, {})[holder] = share
    return out


# --- simulation driver --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SecAggResult:
    """One simulated round: ``sum`` = sum of the survivors' inputs mod 2^bits (wire dtype)."""

    sum: np.ndarray
    bits: int
    survivors: frozenset[int]  # U3: exactly the clients whose inputs are in ``sum``
    stage_clients: dict[str, frozenset[int]]  # who answered each stage (U1, U2, U3, U5)
    neighbours: dict[int, frozenset[int]]
    bytes_per_client: dict[int, StageBytes]
    client_seconds: dict[str, float]  # summed over clients, per stage
    server_seconds: dict[str, float]
    seeded: bool  # True: deterministic TEST mode — keys and masks are not secret
    masked: dict[int, np.ndarray] | None = field(default=None)

    def summary(self) -> dict[str, object]:
        n = len(self.stage_clients.get("advertise_keys", ()))
        degree = max((len(v) for v in self.neighbours.values()), default=0)
        return {
            "protocol": "SecAgg+" if degree < n - 1 else "SecAgg",
            "bits": self.bits,
            "survivors": len(self.survivors),
            "seeded_test_mode": self.seeded,
            "overhead_up_bytes": sum(b.overhead_up for b in self.bytes_per_client.values()),
            "overhead_down_bytes": sum(b.overhead_down for b in self.bytes_per_client.values()),
            "masked_up_bytes": sum(b.masked_up for b in self.bytes_per_client.values()),
        }


def _check_run_inputs(vectors: Mapping[int, np.ndarray], dropouts: Mapping[str, set[int]]) -> None:
    unknown = set(dropouts) - set(STAGES)
    if unknown:
        raise FedarenaError(f"secagg dropouts: unknown stages {sorted(unknown)}, expected some of {STAGES}")
    stray = set().union(*dropouts.values()) - set(vectors) if dropouts else set()
    if stray:
        raise FedarenaError(f"secagg dropouts name clients {sorted(stray)} that have no vector")
    if len({np.shape(v) for v in vectors.values()}) != 1:
        raise FedarenaError("secagg: all client vectors must have the same shape")


_BYTE_FIELDS = {
    "advertise_keys": ("advertise_up", "keys_down"),
    "share_keys": ("shares_up", "shares_down"),
    "masked_input": ("masked_up", "request_down"),
    "unmasking": ("unmask_up", None),
}


def _client_step(client: Client, stage: str, inbox: bytes, vector: np.ndarray) -> bytes:
    if stage == "advertise_keys":
        return client.advertise_keys()
    if stage == "share_keys":
        return client.share_keys(inbox)
    if stage == "masked_input":
        return client.masked_input(inbox, vector)
    return client.unmask(inbox)


def _server_step(server: Server, stage: str) -> Callable[[list[bytes]], Any]:
    return {
        "advertise_keys": server.receive_keys,
        "share_keys": server.receive_shares,
        "masked_input": server.receive_masked,
        "unmasking": server.receive_unmask,
    }[stage]


def run_secagg(
    vectors: Mapping[int, np.ndarray],
    *,
    threshold: int,
    bits: int,
    neighbours: int | None = None,
    dropouts: Mapping[str, set[int]] | None = None,
    seed: int | None = None,
    round_id: int = 0,
    keep_masked: bool = False,
) -> SecAggResult:
    """Run one round between in-process ``Client``s and a ``Server`` that exchange only bytes.

    ``vectors``: client id -> fixed-point encoded 1-D unsigned vector (see ``fixedpoint``).
    ``dropouts``: stage -> clients that stop answering at that stage (they answered the earlier ones).
    ``seed``: None (default) uses OS randomness; an int gives the deterministic test mode.
    Raises ``SecAggAbort`` when fewer than ``threshold`` clients (or neighbours) remain at any stage.
    """
    dropouts = dict(dropouts or {})
    config = SecAggConfig(threshold, bits, neighbours, round_id)
    config.validate(len(vectors))
    _check_run_inputs(vectors, dropouts)
    if seed is not None:
        log.warning("secagg runs in the seeded TEST mode: keys and masks are deterministic, not secret")
    server = Server(config, Randomness.for_party(seed, f"round/{round_id}/server"))
    clients = {u: Client(u, config, Randomness.for_party(seed, f"round/{round_id}/client/{u}")) for u in vectors}
    counts = {u: dict.fromkeys(StageBytes.__dataclass_fields__, 0) for u in clients}
    client_seconds, server_seconds = dict.fromkeys(STAGES, 0.0), dict.fromkeys(STAGES, 0.0)
    alive, inbox = set(clients), {u: b"" for u in clients}
    reply: object = None
    masked: dict[int, np.ndarray] | None = None
    for stage in STAGES:
        alive -= set(dropouts.get(stage, ()))
        start = time.perf_counter()
        uploads = {u: _client_step(clients[u], stage, inbox[u], vectors[u]) for u in sorted(alive)}
        client_seconds[stage] = time.perf_counter() - start
        start = time.perf_counter()
        reply = _server_step(server, stage)(list(uploads.values()))
        server_seconds[stage] = time.perf_counter() - start
        up_field, down_field = _BYTE_FIELDS[stage]
        for u, data in uploads.items():
            counts[u][up_field] += len(data)
        if down_field is not None:
            inbox = reply
            for u, data in inbox.items():
                counts[u][down_field] += len(data)
        if stage == "masked_input" and keep_masked:
            masked = {u: MaskedInput.from_bytes(d).vector for u, d in uploads.items()}
    return SecAggResult(
        sum=reply,
        bits=bits,
        survivors=server.alive["masked_input"],
        stage_clients=dict(server.alive),
        neighbours=dict(server.graph),
        bytes_per_client={u: StageBytes(**c) for u, c in counts.items()},
        client_seconds=client_seconds,
        server_seconds=server_seconds,
        seeded=seed is not None,
        masked=masked,
    )
