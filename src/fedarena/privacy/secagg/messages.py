"""The stage messages of one SecAgg round (Bonawitz et al., ACM CCS 2017, Fig. 4 rounds 0, 1, 2 and 4) and
their byte counts.

Every message is a frozen dataclass with an explicit big-endian layout: a 5-byte header (type tag u8,
round id u32), then its fields; client ids are u32, lists are a u32 count followed by their items.
Parsing refuses a wrong tag, a truncated message, trailing bytes, repeated client ids and (masked
inputs) entries outside [0, 2^bits) with ``SecAggAbort``; nothing is ever unpickled. Their sizes are
what ``StageBytes`` counts.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from fedarena.privacy.fixedpoint import storage_dtype
from fedarena.privacy.secagg.config import CIPHERTEXT_BYTES, KEY_BYTES, SHARE_BYTES, abort

HEADER_BYTES = 5


class Reader:
    """Reads one message; every problem raises ``error(text)`` (``SecAggAbort`` for network messages)."""

    def __init__(self, data: bytes, name: str, error: Callable[[str], Exception] = abort) -> None:
        self.data, self.pos, self.name, self.error = memoryview(data), 0, name, error

    def fail(self, problem: str) -> Exception:
        return self.error(f"malformed {self.name} message: {problem}")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"truncated at byte {self.pos}")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def header(self, tag: int) -> int:
        got_tag, round_id = struct.unpack(">BI", self.take(HEADER_BYTES))
        if got_tag != tag:
            raise self.fail(f"type tag {got_tag}, expected {tag}")
        return round_id

    def ids(self) -> tuple[int, ...]:
        ids = tuple(self.u32() for _ in range(self.u32()))
        if len(set(ids)) != len(ids):
            raise self.fail("repeated client ids")
        return ids

    def items(self, size: int) -> tuple[tuple[int, bytes], ...]:
        items = tuple((self.u32(), self.take(size)) for _ in range(self.u32()))
        if len({i for i, _ in items}) != len(items):
            raise self.fail("repeated client ids")
        return items

    def done(self) -> None:
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} trailing bytes")


def header(tag: int, round_id: int) -> bytes:
    return struct.pack(">BI", tag, round_id)


def pack_ids(ids: Sequence[int]) -> bytes:
    return struct.pack(f">I{len(ids)}I", len(ids), *ids)


def pack_items(items: Sequence[tuple[int, bytes]]) -> bytes:
    return struct.pack(">I", len(items)) + b"".join(struct.pack(">I", i) + blob for i, blob in items)


def sender_of(blob: bytes) -> int | None:
    """The sender (or party) id of a client -> server message: the u32 right after the header (None: too short)."""
    if len(blob) < HEADER_BYTES + 4:
        return None
    return struct.unpack(">I", blob[HEADER_BYTES : HEADER_BYTES + 4])[0]


def sender_matches(blob: bytes, client: int) -> bool:
    """Whether a client -> server message names ``client`` as its sender."""
    return sender_of(blob) == client


@dataclass(frozen=True)
class AdvertiseKeys:
    """Round 0, client -> server: the two X25519 public keys (c_u^PK for shares, s_u^PK for masks)."""

    round_id: int
    sender: int
    c_pk: bytes
    s_pk: bytes
    TAG = 1

    def to_bytes(self) -> bytes:
        return header(self.TAG, self.round_id) + struct.pack(">I", self.sender) + self.c_pk + self.s_pk

    @classmethod
    def from_bytes(cls, data: bytes) -> AdvertiseKeys:
        r = Reader(data, "AdvertiseKeys")
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
        return header(self.TAG, self.round_id) + pack_items(self.keys)

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyList:
        r = Reader(data, "KeyList")
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

    @property
    def sender(self) -> int:
        return self.party

    def to_bytes(self) -> bytes:
        body = struct.pack(">I", self.party) + pack_items(self.ciphertexts)
        return header(self.TAG, self.round_id) + body

    @classmethod
    def from_bytes(cls, data: bytes) -> EncryptedShares:
        r = Reader(data, "EncryptedShares")
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
        return header(self.TAG, self.round_id) + meta + data

    @classmethod
    def from_bytes(cls, data: bytes) -> MaskedInput:
        r = Reader(data, "MaskedInput")
        round_id = r.header(cls.TAG)
        sender, bits, dim = struct.unpack(">IBI", r.take(9))
        if not 8 <= bits <= 64:
            raise abort(f"malformed MaskedInput message from client {sender}: bits={bits}")
        dtype = storage_dtype(bits)
        vector = np.frombuffer(r.take(dim * dtype.itemsize), dtype=dtype.newbyteorder("<")).astype(dtype)
        r.done()
        if bits % 32 and np.any(vector >> dtype.type(bits)):
            raise abort(f"malformed MaskedInput message from client {sender}: entries >= 2^{bits}")
        return cls(round_id, sender, bits, vector)


@dataclass(frozen=True)
class UnmaskRequest:
    """Round 4, server -> client: whose self-mask share (survivors) and mask-key share (dropped) to send."""

    round_id: int
    self_mask_ids: tuple[int, ...]
    mask_key_ids: tuple[int, ...]
    TAG = 5

    def to_bytes(self) -> bytes:
        return header(self.TAG, self.round_id) + pack_ids(self.self_mask_ids) + pack_ids(self.mask_key_ids)

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskRequest:
        r = Reader(data, "UnmaskRequest")
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
        body = struct.pack(">I", self.sender) + pack_items(self.self_mask) + pack_items(self.mask_key)
        return header(self.TAG, self.round_id) + body

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskShares:
        r = Reader(data, "UnmaskShares")
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
    ident, count = 4, 4
    return StageBytes(
        advertise_up=HEADER_BYTES + ident + 2 * KEY_BYTES,
        keys_down=HEADER_BYTES + count + neighbours * (ident + 2 * KEY_BYTES),
        shares_up=HEADER_BYTES + ident + count + neighbours * (ident + CIPHERTEXT_BYTES),
        shares_down=HEADER_BYTES + ident + count + neighbours * (ident + CIPHERTEXT_BYTES),
        masked_up=HEADER_BYTES + ident + 1 + count + dim * storage_dtype(bits).itemsize,
        request_down=HEADER_BYTES + 2 * count + (neighbours + 1) * ident,
        unmask_up=HEADER_BYTES + ident + 2 * count + (neighbours + 1) * (ident + SHARE_BYTES),
    )
