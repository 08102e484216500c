"""Every random number in fedarena comes from a generator derived from (seed, purpose, indices).

Streams are independent by construction (numpy SeedSequence over the whole key), so adding or
removing a client, a round or an algorithm never shifts another stream.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def _key(seed: int, purpose: str, *indices: int) -> list[int]:
    return [int(seed), zlib.crc32(purpose.encode()), *(int(i) for i in indices)]


def derive_seed(seed: int, purpose: str, *indices: int) -> int:
    """A 63-bit seed for (seed, purpose, indices)."""
    state = np.random.SeedSequence(_key(seed, purpose, *indices)).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def numpy_rng(seed: int, purpose: str, *indices: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(_key(seed, purpose, *indices)))


def torch_rng(seed: int, purpose: str, *indices: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, purpose, *indices))
    return g


# numpy's SeedSequence (numpy/random/bit_generator.pyx, O'Neill's seed_seq hash; pool of 4 uint32 words), written
# over arrays so that `derive_seeds` computes many clients' seeds at once: sampling 100 of 10,000 clients ranks
# all 10,000 every round, and one SeedSequence per client cost ~1 s per round there. tests/core/test_rng.py checks
# it against np.random.SeedSequence word for word.
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R, _POOL = 0xCA01F9DD, 0x4973F715, 4


def _words(n: int) -> list[int]:
    """A non-negative int as SeedSequence reads it: little-endian 32-bit words ([0] for 0)."""
    out = []
    while True:
        out.append(n & 0xFFFFFFFF)
        n >>= 32
        if not n:
            return out


def derive_seeds(seed: int, purpose: str, *indices: int, last: np.ndarray) -> np.ndarray:
    """``derive_seed(seed, purpose, *indices, i)`` for every ``i`` in `last` (non-negative, < 2**32), as uint64."""
    u32 = np.uint32
    fixed = [w for v in _key(seed, purpose, *indices) for w in _words(v)]
    entropy = [np.full(len(last), w, dtype=u32) for w in fixed] + [np.asarray(last, dtype=np.uint64).astype(u32)]
    hash_a = [_INIT_A]

    def hashmix(value: np.ndarray) -> np.ndarray:
        value = value ^ u32(hash_a[0])
        hash_a[0] = (hash_a[0] * _MULT_A) & 0xFFFFFFFF
        value = value * u32(hash_a[0])
        return value ^ (value >> u32(16))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        result: np.ndarray = x * u32(_MIX_L) - y * u32(_MIX_R)
        return np.asarray(result ^ (result >> u32(16)))

    zero = np.zeros(len(last), dtype=u32)
    pool = [hashmix(entropy[i] if i < len(entropy) else zero) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(_POOL, len(entropy)):
        for dst in range(_POOL):
            pool[dst] = mix(pool[dst], hashmix(entropy[src]))
    state, hash_b = [], _INIT_B
    for word in pool[:2]:  # generate_state(2)
        value = word ^ u32(hash_b)
        hash_b = (hash_b * _MULT_B) & 0xFFFFFFFF
        value = value * u32(hash_b)
        state.append((value ^ (value >> u32(16))).astype(np.uint64))
    return ((state[0] << np.uint64(31)) ^ state[1]) & np.uint64((1 << 63) - 1)
