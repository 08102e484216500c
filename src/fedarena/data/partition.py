"""Split a pool of labelled samples among clients, then each client's share into train and test.

Each partitioner returns one int64 index array per client; together they cover every sample
index exactly once. Randomness comes only from ``numpy_rng(seed, "partition:<name>")``, so the
same seed gives the same indices.

- ``iid``: shuffle and split evenly.
- ``dirichlet``: label skew of Hsu et al. 2019 as implemented in NIID-Bench/PFLlib: for each
  class, proportions ~ Dir(alpha) over clients (clients already holding their even share get no
  more), resampled until every client has the minimum.
- ``shards``: pathological non-IID of McMahan et al. 2017: samples sorted by label, cut into
  ``num_clients * k`` shards, ``k`` random shards per client.
- ``quantity``: labels IID, client sizes = minimum + Dir(alpha) share of the rest.
- ``feature``: the ``iid`` indices (same stream, so identical), and client i's inputs get fixed
  Gaussian noise of std ``sigma * i / N`` (noise-based feature imbalance of NIID-Bench: Li, Diao,
  Chen, He, "Federated Learning on Non-IID Data Silos: An Experimental Study", ICDE 2022,
  arXiv:2102.02079), see :func:`add_feature_noise`.
"""

from __future__ import annotations

import numpy as np

from fedarena.core.rng import numpy_rng
from fedarena.core.types import FedarenaError
from fedarena.data.spec import DataConfig

MAX_TRIES = 1000  # Dirichlet resampling attempts before giving up


def iid_partition(num_samples: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle all indices and split them into ``num_clients`` parts whose sizes differ by <= 1."""
    perm = numpy_rng(seed, "partition:iid").permutation(num_samples)
    return [part.astype(np.int64) for part in np.array_split(perm, num_clients)]


def dirichlet_partition(
    labels: np.ndarray, num_clients: int, alpha: float, min_size: int, seed: int
) -> list[np.ndarray]:
    """Label skew: per class, proportions ~ Dir(alpha) over clients; resampled until every client
    has ``min_size`` samples (at most ``MAX_TRIES`` times, then :class:`FedarenaError`)."""
    rng = numpy_rng(seed, "partition:dirichlet")
    n = len(labels)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(MAX_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        for members in by_class:
            members = rng.permutation(members)
            p = rng.dirichlet(np.full(num_clients, alpha))
            masked = p * (sizes < n / num_clients)  # full clients take no more (NIID-Bench/PFLlib)
            if masked.sum() > 0:
                p = masked / masked.sum()
            cuts = (np.cumsum(p) * len(members)).astype(np.int64)[:-1]
            for i, chunk in enumerate(np.split(members, cuts)):
                parts[i].append(chunk)
                sizes[i] += len(chunk)
        if sizes.min() >= min_size:
            return [np.concatenate(client).astype(np.int64) for client in parts]
    raise FedarenaError(
        f"dirichlet partition: {n} samples cannot give each of {num_clients} clients at least "
        f"{min_size} samples at alpha={alpha} ({MAX_TRIES} tries); use fewer clients, a larger "
        "data.alpha or smaller data.min_train/min_test"
    )


def _shards_per_class(class_sizes: np.ndarray, num_shards: int) -> np.ndarray:
    """How many shards each class is cut into: one each, then the next shard always goes to the
    class whose shards are currently the largest (so shard sizes stay as even as possible)."""
    counts = np.ones(len(class_sizes), dtype=np.int64)
    for _ in range(num_shards - len(class_sizes)):
        counts[np.argmax(class_sizes / counts)] += 1
    return counts


def shards_partition(
    labels: np.ndarray, num_clients: int, shards_per_client: int, seed: int
) -> list[np.ndarray]:
    """Pathological non-IID: sort by label, cut into ``num_clients * shards_per_client`` shards and
    give each client ``shards_per_client`` random shards.

    When there are at least as many shards as classes, every shard holds a single class, so a
    client sees at most ``shards_per_client`` classes; otherwise shards are cut from the
    label-sorted order and may span neighbouring classes.
    """
    n, num_shards = len(labels), num_clients * shards_per_client
    if num_shards > n:
        raise FedarenaError(
            f"shards partition needs num_clients * shards_per_client <= samples, got "
            f"{num_clients} * {shards_per_client} = {num_shards} > {n}"
        )
    rng = numpy_rng(seed, "partition:shards")
    order = rng.permutation(n)
    order = order[np.argsort(labels[order], kind="stable")]  # by label, random within a class
    classes, class_sizes = np.unique(labels, return_counts=True)
    if num_shards >= len(classes):
        starts = np.concatenate([[0], np.cumsum(class_sizes)[:-1]])
        counts = _shards_per_class(class_sizes, num_shards)
        shards = [
            shard
            for start, size, k in zip(starts, class_sizes, counts)
            for shard in np.array_split(order[start : start + size], k)
        ]
    else:
        shards = np.array_split(order, num_shards)
    owner = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.concatenate([shards[s] for s in row]).astype(np.int64) for row in owner]


def quantity_partition(
    num_samples: int, num_clients: int, alpha: float, min_size: int, seed: int
) -> list[np.ndarray]:
    """Quantity skew: labels IID; client sizes are ``min_size`` plus a Dir(alpha) share of the
    remaining samples (rounded by largest remainder, so the sizes sum to ``num_samples``)."""
    rng = numpy_rng(seed, "partition:quantity")
    p = rng.dirichlet(np.full(num_clients, alpha))
    rest = num_samples - num_clients * min_size
    share = p * rest
    sizes = min_size + np.floor(share).astype(np.int64)
    leftover = num_samples - int(sizes.sum())
    sizes[np.argsort(-(share - np.floor(share)), kind="stable")[:leftover]] += 1
    perm = rng.permutation(num_samples)
    return [part.astype(np.int64) for part in np.split(perm, np.cumsum(sizes)[:-1])]


def partition_indices(name: str, labels: np.ndarray, cfg: DataConfig, seed: int) -> list[np.ndarray]:
    """Dispatch to the partitioner ``name`` with the parameters of ``cfg``; refuses impossible
    requests (too many clients for the data, too many shards) with :class:`FedarenaError`."""
    n, num_clients = len(labels), cfg.resolved_num_clients() or 0
    min_size = cfg.min_train + cfg.min_test
    if num_clients * min_size > n:
        raise FedarenaError(
            f"{n} samples cannot give each of {num_clients} clients at least {min_size} "
            f"(data.min_train {cfg.min_train} + data.min_test {cfg.min_test}); use at most "
            f"{n // min_size} clients"
        )
    if name in ("iid", "feature"):
        parts = iid_partition(n, num_clients, seed)
    elif name == "dirichlet":
        parts = dirichlet_partition(labels, num_clients, cfg.alpha, min_size, seed)
    elif name == "shards":
        parts = shards_partition(labels, num_clients, cfg.shards_per_client, seed)
    elif name == "quantity":
        parts = quantity_partition(n, num_clients, cfg.alpha, min_size, seed)
    else:
        # DataConfig.validate refuses unknown partitions (and `natural` for embedded data) before this
        raise ValueError(f"partition_indices: no partitioner '{name}'; valid: iid, dirichlet, shards, quantity, feature")
    smallest = int(np.argmin([len(p) for p in parts]))
    if len(parts[smallest]) < min_size:
        raise FedarenaError(
            f"{name} partition gives client {smallest} only {len(parts[smallest])} samples, fewer than "
            f"{min_size} (data.min_train + data.min_test); use fewer clients or shards"
        )
    return parts


def split_train_test(
    indices: np.ndarray, client: int, cfg: DataConfig, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle one client's indices with ``numpy_rng(seed, "split", client)`` and hold out
    ``round(test_fraction * n)`` of them as its test split, clamped so that the client keeps at
    least ``min_test`` test and ``min_train`` train samples. Returns ``(train, test)``."""
    n = len(indices)
    if n < cfg.min_train + cfg.min_test:
        raise FedarenaError(
            f"client {client} has {n} samples, fewer than data.min_train {cfg.min_train} + "
            f"data.min_test {cfg.min_test}"
        )
    n_test = int(np.floor(n * cfg.test_fraction + 0.5))
    n_test = min(max(n_test, cfg.min_test), n - cfg.min_train)
    shuffled = indices[numpy_rng(seed, "split", client).permutation(n)]
    return shuffled[n_test:], shuffled[:n_test]


def add_feature_noise(
    x: np.ndarray, offsets: tuple[int, ...], sigma: float, seed: int, stream: str
) -> None:
    """In place: add to client i's rows ``x[offsets[i]:offsets[i+1]]`` Gaussian noise of std
    ``sigma * i / N`` (N clients), drawn from ``numpy_rng(seed, "partition:feature:<stream>", i)``
    (``stream`` is "train" or "test"). Client 0 keeps clean inputs."""
    num_clients = len(offsets) - 1
    for i in range(1, num_clients):
        a, b = offsets[i], offsets[i + 1]
        rng = numpy_rng(seed, f"partition:feature:{stream}", i)
        std = np.float32(sigma * i / num_clients)
        x[a:b] += rng.standard_normal(x[a:b].shape, dtype=np.float32) * std
