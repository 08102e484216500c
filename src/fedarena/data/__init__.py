"""Federated datasets: ``load_federated(spec, seed=...)`` builds the clients every algorithm shares.

- ``digits``: scikit-learn's bundled digits, split among ``data.num_clients`` clients by
  ``data.partition`` (iid, dirichlet, shards, quantity, feature; see :mod:`.partition`).
- ``synthetic``: Synthetic(alpha, beta) of FedProx, one natural client per generator client
  (see :mod:`.synthetic`).
- ``shakespeare``: next-character prediction, one natural client per speaking role of the embedded
  text (see :mod:`.shakespeare`); ``data.num_clients`` unset takes every role that qualifies.
- ``npz-dir:PATH``: one natural client per file stem (see :mod:`.npz`); ``data.num_clients`` is
  ignored.
- ``hf:NAME[:CONFIG]``: Hugging Face ``datasets`` (local parquet/csv/json/save_to_disk files, or a Hub dataset
  already in the local cache) split by flwr-datasets' partitioners (see :mod:`.hf`).

``data.num_clients`` unset (None) is the dataset's default (``DataConfig.resolved_num_clients``): 20 for
digits and synthetic.

For digits and synthetic, each client's own samples are split into its train and test split
(``data.test_fraction``, at least ``data.min_test`` / ``data.min_train``). Then, for every dataset,
``data.val_fraction`` of each client's train split becomes its validation split (:mod:`.validation`:
stratified by label where it can be, by position for text in reading order; npz-dir's own ``val/``
files where it has them; 0: no validation split). Identical spec and seed give bit-identical output.
The specs (:mod:`.spec`) are this package's own types; the config module (config.py) builds its
``[data]``, ``[synthetic]`` and ``[shakespeare]`` sections from them.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging

import numpy as np
import torch

from fedarena.core.types import FederatedData
from fedarena.data.embedded import load_digits
from fedarena.data.heterogeneity import summarize
from fedarena.data.hf import Columns, load_hf
from fedarena.data.hf.columns import NEXT
from fedarena.data.npz import load_npz_dir
from fedarena.data.partition import (
    add_feature_noise,
    partition_indices,
    split_train_test,
)
from fedarena.data.shakespeare import load_shakespeare
from fedarena.data.spec import (
    HF_PREFIX,
    NPZ_PREFIX,
    DataConfig,
    ShakespeareConfig,
    SyntheticConfig,
    partition_details,
    synthetic_details,
)
from fedarena.data.synthetic import generate_synthetic
from fedarena.data.validation import client_key, split_validation

__all__ = [
    "DataConfig",
    "ShakespeareConfig",
    "SyntheticConfig",
    "generate_synthetic",
    "load_digits",
    "load_federated",
    "load_hf",
    "load_npz_dir",
    "load_shakespeare",
    "partition_details",
    "split_validation",
    "summarize",
]

log = logging.getLogger(__name__)


def _offsets(parts: list[np.ndarray]) -> tuple[int, ...]:
    return (0, *(int(o) for o in np.cumsum([len(p) for p in parts])))


def _assemble(
    spec: DataConfig,
    seed: int,
    x: np.ndarray,
    y: np.ndarray,
    clients: list[np.ndarray],
    num_classes: int,
    partition: str,
    details: dict,
) -> FederatedData:
    """Split each client's indices into train/test and gather the rows into concatenated arrays."""
    splits = [split_train_test(idx, i, spec, seed) for i, idx in enumerate(clients)]
    train = [tr for tr, _ in splits]
    test = [te for _, te in splits]
    train_rows, test_rows = np.concatenate(train), np.concatenate(test)
    x_train, x_test = x[train_rows], x[test_rows]
    train_offsets, test_offsets = _offsets(train), _offsets(test)
    if partition == "feature":
        add_feature_noise(x_train, train_offsets, spec.feature_sigma, seed, "train")
        add_feature_noise(x_test, test_offsets, spec.feature_sigma, seed, "test")
    return FederatedData(
        name=spec.name,
        client_ids=tuple(str(i) for i in range(len(clients))),
        x_train=torch.from_numpy(x_train),
        y_train=torch.from_numpy(y[train_rows]),
        train_offsets=train_offsets,
        x_test=torch.from_numpy(x_test),
        y_test=torch.from_numpy(y[test_rows]),
        test_offsets=test_offsets,
        num_classes=num_classes,
        partition=partition,
        details={**details, "test_fraction": spec.test_fraction},
    )


def load_federated(spec: DataConfig, *, seed: int, synthetic: SyntheticConfig | None = None,
                   shakespeare: ShakespeareConfig | None = None) -> FederatedData:
    """The federated dataset described by ``spec`` (``[data]``; ``synthetic`` is ``[synthetic]``, read
    for synthetic data only, ``shakespeare`` ``[shakespeare]``, read for shakespeare only), seeded by
    ``seed``. Raises :class:`FedarenaError` on impossible requests or bad data.

    Each client's validation split (``data.val_fraction``; 0: none) is taken out of its train split: by
    position for text in reading order (shakespeare, hf next-token windows), stratified by label (else at
    random) for the others; npz-dir data with a ``val/`` folder brings its own."""
    spec.validate()
    fd = _load(spec, seed, synthetic, shakespeare)
    if fd.val_offsets:  # npz-dir's own val/ files
        return fd
    by_position = spec.name == "shakespeare" or fd.details.get("label") == NEXT
    # npz-dir clients draw by name: a deployed node (load_npz_client) holds only its own files
    keys = [client_key(c) for c in fd.client_ids] if spec.name.startswith(NPZ_PREFIX) else None
    return split_validation(fd, spec.val_fraction, seed, min_train=spec.min_train, by_position=by_position, keys=keys)


def _load(spec: DataConfig, seed: int, synthetic: SyntheticConfig | None,
          shakespeare: ShakespeareConfig | None) -> FederatedData:
    """`load_federated`'s data before its validation split."""
    name, partition = spec.name, spec.resolved_partition()
    if name.startswith(NPZ_PREFIX):
        fd = load_npz_dir(name[len(NPZ_PREFIX) :], min_train=spec.min_train, min_test=spec.min_test, name=name,
                          read_val=spec.val_fraction > 0)
        if spec.num_clients is not None and fd.num_clients != spec.num_clients:
            log.info("npz-dir has %d clients; data.num_clients=%d is ignored", fd.num_clients, spec.num_clients)
        return fd
    if name.startswith(HF_PREFIX):
        columns = Columns(files=spec.files, features=spec.features, label=spec.label, partition_by=spec.partition_by,
                          tokens=spec.tokens, seq_len=spec.seq_len, vocab_size=spec.vocab_size,
                          image_size=spec.image_size)
        return load_hf(name, columns, partition=partition, num_clients=spec.resolved_num_clients(), alpha=spec.alpha,
                       shards_per_client=spec.shards_per_client, feature_sigma=spec.feature_sigma,
                       test_fraction=spec.test_fraction, min_train=spec.min_train, min_test=spec.min_test, seed=seed)
    if name == "shakespeare":  # the same clients for every seed: the partition is the text's own
        return load_shakespeare(spec, (shakespeare or ShakespeareConfig()).validate())
    spec = dataclasses.replace(spec, num_clients=spec.resolved_num_clients())  # unset: 20
    if name == "synthetic":
        s = (synthetic or SyntheticConfig()).validate()
        x, y, bounds = generate_synthetic(s, spec.num_clients or 0, seed)
        clients = [np.arange(a, b, dtype=np.int64) for a, b in itertools.pairwise(bounds)]
        return _assemble(spec, seed, x, y, clients, s.num_classes, partition, synthetic_details(s))
    x, y = load_digits()  # validate() admits only digits here
    clients = partition_indices(partition, y, spec, seed)
    return _assemble(spec, seed, x, y, clients, int(y.max()) + 1, partition, partition_details(spec, partition))
