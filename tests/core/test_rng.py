"""core.rng: derive_seeds (SeedSequence over arrays) equals derive_seed, client by client."""

import numpy as np
import pytest

from fedarena.core.rng import derive_seed, derive_seeds


@pytest.mark.parametrize("seed", [0, 1, 7, 2**31 - 1, 2**32 - 1, 2**32, 2**40 + 3, 2**63 + 5])
@pytest.mark.parametrize("indices", [(), (1,), (0, 12), (2**32 - 1, 3)])
def test_derive_seeds_equals_derive_seed(seed, indices):
    last = np.array([0, 1, 2, 99, 10_000, 65_535, 2**31, 2**32 - 1], dtype=np.int64)
    got = derive_seeds(seed, "sample", *indices, last=last)
    assert got.dtype == np.uint64
    assert got.tolist() == [derive_seed(seed, "sample", *indices, int(i)) for i in last]


def test_derive_seeds_on_random_keys():
    rng = np.random.default_rng(0)
    for _ in range(50):
        seed, rnd = int(rng.integers(0, 2**62)), int(rng.integers(0, 5000))
        last = rng.integers(0, 2**32, size=20)
        purpose = "p" * int(rng.integers(0, 5))
        assert derive_seeds(seed, purpose, rnd, last=last).tolist() == [derive_seed(seed, purpose, rnd, int(i)) for i in last]
