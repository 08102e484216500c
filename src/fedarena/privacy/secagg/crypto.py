"""The primitives of the SecAgg round (all from ``cryptography``) and its randomness.

- key agreement X25519; HKDF-SHA256 derives the pairwise mask seed s_{u,v} and the share-encryption key
  (distinct ``info`` labels, bound to the round id and the pair) — Bonawitz et al., ACM CCS 2017, Fig. 4
  rounds 1-2, where KA.agree is followed by a key derivation;
- shares are encrypted with ChaCha20-Poly1305 (``aad``/``nonce`` below);
- PRG(seed) is the ChaCha20 keystream under the 32-byte seed, read as little-endian uint32 (bits <= 32)
  or uint64 words and reduced mod 2^bits; vectorised with numpy, no per-entry Python loop;
- randomness: keys, b_u, Shamir coefficients and the SecAgg+ graph come from the OS (``os.urandom`` and
  ``X25519PrivateKey.generate``), fresh per round; ``Randomness.for_party(seed, ...)`` is a deterministic
  ChaCha20 stream per (seed, label) for tests only.
"""

from __future__ import annotations

import os
import struct

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedarena.privacy.fixedpoint import storage_dtype
from fedarena.privacy.secagg.config import KEY_BYTES, VERSION, abort


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


def derive(shared: bytes, purpose: bytes, round_id: int, u: int, v: int) -> bytes:
    """HKDF-SHA256 of an X25519 secret, bound to the protocol version, purpose, round and the pair."""
    info = VERSION + b"/" + purpose + struct.pack(">III", round_id, min(u, v), max(u, v))
    return HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=info).derive(shared)


def public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def agree(own: X25519PrivateKey, peer_pk: bytes, who: str) -> bytes:
    """X25519 shared secret; a low-order (invalid) peer key aborts the round."""
    try:
        return own.exchange(X25519PublicKey.from_public_bytes(peer_pk))
    except ValueError:
        raise abort(f"{who}: a peer's public key is invalid for X25519") from None


def expand_mask(seed: bytes, dim: int, bits: int) -> np.ndarray:
    """PRG(seed): ``dim`` words of the ChaCha20 keystream, mod 2^bits, in the wire dtype."""
    dtype = storage_dtype(bits)
    stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    words = np.frombuffer(stream.update(bytes(dim * dtype.itemsize)), dtype=dtype.newbyteorder("<"))
    words = words.astype(dtype, copy=False)
    if bits % 32:
        words = words & dtype.type((1 << bits) - 1)
    return words


def aad(round_id: int, sender: int, receiver: int) -> bytes:
    """Associated data of a share ciphertext: protocol version, round, sender and receiver."""
    return VERSION + struct.pack(">III", round_id, sender, receiver)


def nonce(sender: int, receiver: int) -> bytes:
    """(sender, receiver): unique because keys are fresh every round and each direction carries one message."""
    return struct.pack(">IIxxxx", sender, receiver)
