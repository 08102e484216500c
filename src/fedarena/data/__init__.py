"""Federated datasets: ``load_federated(config)`` builds the clients every algorithm shares.

- ``digits``: scikit-learn's bundled digits, split among ``data.num_clients`` clients by
  ``data.partition`` (iid, dirichlet, shards, quantity, feature; see :mod:`.partition`).
- ``synthetic``: Synthetic(alpha, beta) of FedProx, one natural client per generator client
  (see :mod:`.synthetic`).
- ``npz-dir:PATH``: one natural client per file stem (see :mod:`.npz`); ``data.num_clients`` is
  ignored.

For digits and synthetic, each client's own samples are split into its train and test split
(``data.test_fraction``, at least ``data.min_test`` / ``data.min_train``). Identical config and
seed give bit-identical output.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from fedarena.config import Config, resolved_partition
from fedarena.core.types import FedarenaError, FederatedData
from fedarena.data.embedded import load_digits
from fedarena.data.heterogeneity import summarize
from fedarena.data.npz import PREFIX as NPZ_PREFIX
from fedarena.data.npz import load_npz_dir
from fedarena.data.partition import add_feature_noise, partition_indices, split_train_test
from fedarena.data.synthetic import generate_synthetic

__all__ = ["load_federated", "load_digits", "load_npz_dir", "generate_synthetic", "summarize"]

log = logging.getLogger(__name__)


def _offsets(parts: list[np.ndarray]) -> tuple[int, ...]:
    return (0, *(int(o) for o in np.cumsum([len(p) for p in parts])))


def _assemble(
    config: Config,
    x: np.ndarray,
    y: np.ndarray,
    clients: list[np.ndarray],
    num_classes: int,
    partition: str,
    details: dict,
) -> FederatedData:
    """Split each client's indices into train/test and gather the rows into concatenated arrays."""
    seed = config.run.seed
    splits = [split_train_test(idx, i, config.data, seed) for i, idx in enumerate(clients)]
    train = [tr for tr, _ in splits]
    test = [te for _, te in splits]
    train_rows, test_rows = np.concatenate(train), np.concatenate(test)
    x_train, x_test = x[train_rows], x[test_rows]
    train_offsets, test_offsets = _offsets(train), _offsets(test)
    if partition == "feature":
        add_feature_noise(x_train, train_offsets, config.data.feature_sigma, seed, "train")
        add_feature_noise(x_test, test_offsets, config.data.feature_sigma, seed, "test")
    return FederatedData(
        name=config.data.name,
        client_ids=tuple(str(i) for i in range(len(clients))),
        x_train=torch.from_numpy(x_train),
        y_train=torch.from_numpy(y[train_rows]),
        train_offsets=train_offsets,
        x_test=torch.from_numpy(x_test),
        y_test=torch.from_numpy(y[test_rows]),
        test_offsets=test_offsets,
        num_classes=num_classes,
        partition=partition,
        details={**details, "test_fraction": config.data.test_fraction},
    )


def _partition_details(config: Config, partition: str) -> dict:
    d = config.data
    return {
        "iid": {},
        "dirichlet": {"alpha": d.alpha},
        "shards": {"shards_per_client": d.shards_per_client},
        "quantity": {"alpha": d.alpha},
        "feature": {"feature_sigma": d.feature_sigma},
    }.get(partition, {})


def load_federated(config: Config) -> FederatedData:
    """The federated dataset described by ``config.data`` (and ``config.synthetic``), seeded by
    ``config.run.seed``. Raises :class:`FedarenaError` on impossible requests or bad data."""
    name, partition, seed = config.data.name, resolved_partition(config), config.run.seed
    if name.startswith(NPZ_PREFIX):
        if partition != "natural":
            raise FedarenaError(f"partition '{partition}' cannot be used with npz-dir data: its clients are the files")
        fd = load_npz_dir(
            name[len(NPZ_PREFIX) :], min_train=config.data.min_train, min_test=config.data.min_test, name=name
        )
        if fd.num_clients != config.data.num_clients:
            log.info("npz-dir has %d clients; data.num_clients=%d is ignored", fd.num_clients, config.data.num_clients)
        return fd
    if name == "synthetic":
        if partition != "natural":
            raise FedarenaError(f"partition '{partition}' cannot be used with synthetic data; use synthetic.alpha/beta/iid")
        per_client = generate_synthetic(config.synthetic, config.data.num_clients, seed)
        x = np.concatenate([cx for cx, _ in per_client])
        y = np.concatenate([cy for _, cy in per_client])
        bounds = _offsets([cy for _, cy in per_client])
        clients = [np.arange(a, b, dtype=np.int64) for a, b in zip(bounds[:-1], bounds[1:])]
        s = config.synthetic
        details = {
            "alpha": s.alpha,
            "beta": s.beta,
            "iid": s.iid,
            "num_features": s.num_features,
            "samples_per_client": s.samples_per_client,
        }
        return _assemble(config, x, y, clients, s.num_classes, partition, details)
    if name == "digits":
        x, y = load_digits()
        clients = partition_indices(partition, y, config.data, seed)
        return _assemble(config, x, y, clients, int(y.max()) + 1, partition, _partition_details(config, partition))
    raise FedarenaError(f"unknown dataset '{name}'; valid: digits, synthetic, npz-dir:PATH")
