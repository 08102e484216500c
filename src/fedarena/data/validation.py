"""Each client's validation split, taken out of its own training split (``data.val_fraction``).

Tuning decisions (which learning rate, which round) read the validation split; the test split stays for the
final numbers only. :func:`split_validation` moves ``round(fraction * n_train)`` of every client's train rows
into its validation split:

- the count is clamped so the client keeps at least ``min_train`` train rows, and is at least 1 whenever
  ``fraction > 0`` and that clamp allows (a client with only ``min_train`` train rows gets no validation row);
- the rows are drawn from ``numpy_rng(seed, "validation", client)``, stratified by label (scikit-learn's
  ``train_test_split(..., stratify=y)``) where every class on the client has at least 2 rows and both the
  validation and the remaining train split can hold one row of each class, else a seeded random subset;
- ``by_position=True`` takes the last train rows instead (text in reading order: the validation text then lies
  between the train and the test text, as the test text lies after the train text);
- train rows keep their relative order, and so do validation rows; the test split is not touched.

``details`` records ``val_fraction`` and ``val_split``: ``position``, ``stratified`` (every client),
``random`` (no client) or ``mixed``, with ``val_stratified_clients`` counting the stratified ones.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence

import numpy as np
import torch

from fedarena.core.rng import numpy_rng
from fedarena.core.types import FederatedData


def validation_size(n_train: int, fraction: float, min_train: int) -> int:
    """How many of a client's ``n_train`` train rows become validation rows (see the module docstring)."""
    if fraction <= 0:
        return 0
    wanted = max(1, int(np.floor(n_train * fraction + 0.5)))
    return max(0, min(wanted, n_train - min_train))


def _stratifiable(y: np.ndarray, n_val: int) -> bool:
    counts = np.unique(y, return_counts=True)[1]
    return bool(counts.min() >= 2 and n_val >= len(counts) and len(y) - n_val >= len(counts))


def choose_validation(y: np.ndarray, n_val: int, seed: int, client: int) -> tuple[np.ndarray, bool]:
    """Positions (sorted) of the ``n_val`` validation rows among one client's train labels ``y``, and whether
    they were stratified by label."""
    if n_val == 0:
        return np.zeros(0, dtype=np.int64), False
    rng = numpy_rng(seed, "validation", client)
    positions = np.arange(len(y), dtype=np.int64)
    if _stratifiable(y, n_val):
        from sklearn.model_selection import train_test_split  # here: scikit-learn imports pandas and pyarrow

        state = int(rng.integers(2**32 - 1))
        _, val = train_test_split(positions, test_size=n_val, stratify=y, random_state=state)
        return np.sort(np.asarray(val, dtype=np.int64)), True
    return np.sort(rng.choice(len(y), size=n_val, replace=False).astype(np.int64)), False


def client_key(client_id: str) -> int:
    """The random-stream index of a client known by name rather than position (npz-dir: its file stem), so that
    a deployed node holding only its own files draws the same validation rows as a simulation of all of them."""
    return zlib.crc32(client_id.encode())


def split_validation(data: FederatedData, fraction: float, seed: int, *, min_train: int,
                     by_position: bool = False, keys: Sequence[int] | None = None) -> FederatedData:
    """``data`` with ``round(fraction * n_train)`` of each client's train rows moved into its validation split
    (see the module docstring). ``fraction = 0`` returns ``data`` itself, unchanged. Client i's rows are drawn
    from stream ``keys[i]`` (default: i)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"split_validation: fraction must be in [0, 1), got {fraction}")
    if data.val_offsets or data.x_val is not None:
        raise ValueError(f"split_validation: {data.name} already has a validation split")
    if fraction == 0:
        return data
    y = data.y_train.numpy()
    keep: list[np.ndarray] = []
    val: list[np.ndarray] = []
    stratified = 0
    for i, (a, b) in enumerate(zip(data.train_offsets[:-1], data.train_offsets[1:])):
        n = b - a
        n_val = validation_size(n, fraction, min_train)
        if by_position:
            chosen = np.arange(n - n_val, n, dtype=np.int64)
        else:
            chosen, strat = choose_validation(y[a:b], n_val, seed, i if keys is None else keys[i])
            stratified += strat
        mask = np.ones(n, dtype=bool)
        mask[chosen] = False
        keep.append(a + np.flatnonzero(mask))
        val.append(a + chosen)
    train_rows = torch.from_numpy(np.concatenate(keep))
    val_rows = torch.from_numpy(np.concatenate(val))
    if by_position:
        how: dict[str, object] = {"val_split": "position"}
    else:
        kind = "stratified" if stratified == data.num_clients else "random" if stratified == 0 else "mixed"
        how = {"val_split": kind, "val_stratified_clients": stratified}
    return dataclasses.replace(
        data,
        x_train=data.x_train[train_rows], y_train=data.y_train[train_rows], train_offsets=_offsets(keep),
        x_val=data.x_train[val_rows], y_val=data.y_train[val_rows], val_offsets=_offsets(val),
        details={**data.details, "val_fraction": fraction, **how},
    )


def _offsets(parts: list[np.ndarray]) -> tuple[int, ...]:
    return (0, *(int(o) for o in np.cumsum([len(p) for p in parts])))
