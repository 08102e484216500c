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
