"""``npz-dir:PATH``: a directory of per-client ``.npz`` files, one client per file stem::

    PATH/train/<client>.npz    PATH/test/<client>.npz    [PATH/val/<client>.npz]

Each file holds an array ``x`` (any float or integer dtype, first axis = samples; converted to
float32 as is, without scaling) and ``y`` (one label per sample). Clients are ordered by sorted
file stem (string order: "10" sorts before "2"); ``num_classes`` is the largest label + 1.

Files are read with ``np.load(..., allow_pickle=False)`` only. Before any data is read, the
``.npy`` headers are checked (keys, dtypes, shapes, lengths), so object (pickled) arrays are
refused without being unpickled and a shape mismatch costs no loading. Each file's arrays are then
read once and copied straight into the preallocated concatenated outputs (no per-client copies
kept, no second concatenation).

Labels must be integers >= 0. Float labels are accepted when every value is a whole number
(e.g. labels saved from a float column) and refused otherwise.

An optional ``val/`` folder holds each client's own validation split, in the same format: when it
exists (and is read: ``read_val``), every client must have ``val/<client>.npz`` and no other client
may; its per-sample shape is the train files', and its labels must lie in ``[0, num_classes)`` of the
train and test files (a class seen only in validation is refused). Without it, :func:`fedarena.data.load_federated`
splits each client's train file (``data.val_fraction``, :mod:`.validation`).
"""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedarena.core.types import ClientData, FedarenaError, FederatedData
from fedarena.data.spec import NPZ_PREFIX as PREFIX

SPLITS = ("train", "test")
# what reading a damaged archive raises: zipfile's own errors, a compression method it lacks, a corrupt deflate
# stream, a cut file
UNREADABLE = (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, zlib.error)
VAL = "val"  # the optional folder of the clients' own validation splits


@dataclass(frozen=True)
class _Entry:
    """One file's validated header: where it is and what it holds."""

    path: Path
    samples: int
    x_shape: tuple[int, ...]  # per-sample shape (after the first axis)


def _header(zf: zipfile.ZipFile, key: str, path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape and dtype of array ``key`` from its ``.npy`` header, and the bytes of data that follow it (no data
    read, nothing unpickled)."""
    with zf.open(f"{key}.npy") as fp:
        try:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                raise FedarenaError(f"{path}: array '{key}' uses unsupported .npy format {version}")
        except ValueError as exc:
            raise FedarenaError(f"{path}: array '{key}' is not a valid .npy array ({exc})") from None
        held = zf.getinfo(f"{key}.npy").file_size - fp.tell()
    return tuple(shape), dtype, held


def _check_size(shape: tuple[int, ...], dtype: np.dtype, held: int, key: str, path: Path) -> None:
    """The data must be exactly what the header declares: a header that claims more would have `_fill` allocate
    it (a declared (10**12, 3) array: 11 TiB) before reading finds the bytes missing."""
    declared = math.prod(shape) * dtype.itemsize
    if declared != held:
        raise FedarenaError(f"{path}: array '{key}' declares shape {shape} of {dtype} ({declared} bytes) but holds "
                            f"{held} bytes")


def _check_dtype(dtype: np.dtype, key: str, kinds: str, what: str, path: Path) -> None:
    if dtype.hasobject:
        raise FedarenaError(
            f"{path}: array '{key}' has object dtype (pickled Python objects); refused, "
            "fedarena reads .npz files with allow_pickle=False"
        )
    if dtype.kind not in kinds:
        raise FedarenaError(f"{path}: array '{key}' must hold {what}, got dtype {dtype}")


def _scan(path: Path) -> _Entry:
    """Validate one file from its headers: keys x and y, dtypes, shapes, equal non-zero lengths."""
    try:
        with zipfile.ZipFile(path) as zf:
            keys = sorted(name[:-4] for name in zf.namelist() if name.endswith(".npy"))
            for key in ("x", "y"):
                if key not in keys:
                    raise FedarenaError(f"{path}: missing array '{key}' (found: {', '.join(keys) or 'none'})")
            x_shape, x_dtype, x_held = _header(zf, "x", path)
            y_shape, y_dtype, y_held = _header(zf, "y", path)
    except UNREADABLE as exc:
        raise FedarenaError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from None
    _check_dtype(x_dtype, "x", "fiu", "float or integer features", path)
    _check_dtype(y_dtype, "y", "fiu", "integer labels", path)
    _check_size(x_shape, x_dtype, x_held, "x", path)
    _check_size(y_shape, y_dtype, y_held, "y", path)
    if len(x_shape) < 2:
        raise FedarenaError(f"{path}: array 'x' must have shape (samples, features...), got {x_shape}")
    if len(y_shape) != 1:
        raise FedarenaError(f"{path}: array 'y' must be 1-D (one label per sample), got shape {y_shape}")
    if x_shape[0] != y_shape[0]:
        raise FedarenaError(f"{path}: 'x' has {x_shape[0]} samples but 'y' has {y_shape[0]} labels")
    if x_shape[0] == 0:
        raise FedarenaError(f"{path}: no samples (empty client split)")
    return _Entry(path, x_shape[0], x_shape[1:])


def _client_files(root: Path, split: str) -> dict[str, Path]:
    folder = root / split
    if not folder.is_dir():
        raise FedarenaError(
            f"npz-dir {root}: missing subdirectory '{split}/' (expected train/<client>.npz and test/<client>.npz)"
        )
    files = {p.stem: p for p in folder.glob("*.npz") if p.is_file()}
    if not files:
        raise FedarenaError(f"npz-dir {root}: '{split}/' contains no .npz files")
    return files


def _check_labels(y: np.ndarray, path: Path) -> None:
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.floor(y))
        if bad.any():
            raise FedarenaError(f"{path}: labels 'y' must be whole numbers, found {y[bad][0]}")
    if (y < 0).any():
        raise FedarenaError(f"{path}: labels 'y' must be >= 0, found {y.min()}")
    if len(y) and y.max() >= 2**63:  # float or uint64 labels an int64 cannot hold (they would wrap)
        raise FedarenaError(f"{path}: labels 'y' must be below 2**63, found {y.max()}")


def _fill(entries: list[_Entry]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Load every entry's arrays straight into one float32 ``x`` and one int64 ``y``."""
    offsets = (0, *np.cumsum([e.samples for e in entries]).tolist())
    x = np.empty((offsets[-1], *entries[0].x_shape), dtype=np.float32)
    y = np.empty(offsets[-1], dtype=np.int64)
    for entry, a, b in zip(entries, offsets[:-1], offsets[1:]):
        try:  # the members `_scan` checked: npz["x"] would be a member named plain "x" where the archive has one
            with np.load(entry.path, allow_pickle=False) as npz:
                with np.errstate(over="ignore", invalid="ignore"):
                    x[a:b] = npz["x.npy"]
                labels = npz["y.npy"]
        except (*UNREADABLE, ValueError) as exc:  # ValueError: data that does not parse as its header says
            raise FedarenaError(f"{entry.path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from None
        if not np.isfinite(x[a:b]).all():
            raise FedarenaError(f"{entry.path}: array 'x' contains NaN or infinite values (or values beyond float32)")
        _check_labels(labels, entry.path)
        y[a:b] = labels
    return x, y, tuple(int(o) for o in offsets)


def load_npz_dir(path: str | Path, *, min_train: int = 1, min_test: int = 1, name: str | None = None,
                 read_val: bool = True) -> FederatedData:
    """Load ``path/train/*.npz`` and ``path/test/*.npz`` as a naturally partitioned FederatedData, and
    ``path/val/*.npz`` as its validation split when that folder exists and ``read_val`` is true.

    Every problem (missing directory or key, pickled arrays, mismatched lengths or shapes, empty
    or too small splits, NaN/Inf, bad labels, a client with only one split, a client without its
    validation file or a validation file without its client) raises :class:`FedarenaError` naming
    the file or client.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FedarenaError(f"npz-dir: directory not found: {root}")
    files = {split: _client_files(root, split) for split in SPLITS}
    for split, other in (SPLITS, SPLITS[::-1]):
        unpaired = sorted(files[split].keys() - files[other].keys())
        if unpaired:
            stem = unpaired[0]
            raise FedarenaError(f"npz-dir {root}: client '{stem}' has {split}/{stem}.npz but no {other}/{stem}.npz")
    client_ids = tuple(sorted(files["train"]))
    entries = {split: [_scan(files[split][c]) for c in client_ids] for split in SPLITS}
    reference = entries["train"][0]
    minimum = {"train": (min_train, "data.min_train"), "test": (min_test, "data.min_test")}
    for split in SPLITS:
        least, key = minimum[split]
        for entry in entries[split]:
            if entry.x_shape != reference.x_shape:
                raise FedarenaError(
                    f"{entry.path}: per-sample shape of 'x' is {entry.x_shape} but {reference.path} has {reference.x_shape}"
                )
            if entry.samples < least:
                raise FedarenaError(f"{entry.path}: {entry.samples} samples, fewer than {key} {least}")
    val_entries = _val_entries(root, client_ids, reference) if read_val and (root / VAL).is_dir() else None
    x_train, y_train, train_offsets = _fill(entries["train"])
    x_test, y_test, test_offsets = _fill(entries["test"])
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    x_val = y_val = None
    val_offsets: tuple[int, ...] = ()
    if val_entries is not None:
        xv, yv, val_offsets = _fill(val_entries)
        for entry, a, b in zip(val_entries, val_offsets[:-1], val_offsets[1:]):
            if yv[a:b].max() >= num_classes:
                raise FedarenaError(f"{entry.path}: label {yv[a:b].max()} is outside the {num_classes} classes "
                                    "of the train and test files")
        x_val, y_val = torch.from_numpy(xv), torch.from_numpy(yv)
    return FederatedData(
        name=name or f"{PREFIX}{root}",
        client_ids=client_ids,
        x_train=torch.from_numpy(x_train),
        y_train=torch.from_numpy(y_train),
        train_offsets=train_offsets,
        x_test=torch.from_numpy(x_test),
        y_test=torch.from_numpy(y_test),
        test_offsets=test_offsets,
        num_classes=num_classes,
        partition="natural",
        details={"path": str(root), **({"val_split": "files"} if val_offsets else {})},
        x_val=x_val,
        y_val=y_val,
        val_offsets=val_offsets,
    )


def _val_entries(root: Path, client_ids: tuple[str, ...], reference: _Entry, whole_dir: bool = True) -> list[_Entry]:
    """The validated headers of ``root/val/<client>.npz``, one per client in `client_ids` and (`whole_dir`) no
    other."""
    files = {p.stem: p for p in (root / VAL).glob("*.npz") if p.is_file()}
    unknown = sorted(files.keys() - set(client_ids))
    if unknown and whole_dir:
        raise FedarenaError(f"npz-dir {root}: {VAL}/{unknown[0]}.npz names no client (there is no train/{unknown[0]}.npz)")
    missing = [c for c in client_ids if c not in files]
    if missing:
        raise FedarenaError(f"npz-dir {root}: client '{missing[0]}' has no {VAL}/{missing[0]}.npz (with a '{VAL}/' "
                            "folder every client needs its own validation file)")
    entries = [_scan(files[c]) for c in client_ids]
    for entry in entries:
        if entry.x_shape != reference.x_shape:
            raise FedarenaError(
                f"{entry.path}: per-sample shape of 'x' is {entry.x_shape} but {reference.path} has {reference.x_shape}"
            )
    return entries


def load_npz_client(path: str | Path, client: str, *, min_train: int = 1, min_test: int = 1,
                    val_fraction: float = 0.0, seed: int = 0) -> tuple[ClientData, int]:
    """One client's splits, ``path/train/<client>.npz`` and ``path/test/<client>.npz``, and its largest
    label; no other client's file is opened (what a deployed node loads). Same checks as `load_npz_dir`. With
    ``val_fraction > 0`` its validation split is ``path/val/<client>.npz`` where a ``val/`` folder exists, else
    the rows `load_federated` takes out of its train split for the same seed (drawn by the client's name)."""
    root = Path(path).expanduser()
    files = [root / split / f"{client}.npz" for split in SPLITS]
    for f in files:
        if not f.is_file():
            raise FedarenaError(f"npz-dir {root}: client '{client}' has no {f.parent.name}/{client}.npz")
    train, test = (_scan(f) for f in files)
    if train.x_shape != test.x_shape:
        raise FedarenaError(f"{test.path}: per-sample shape of 'x' is {test.x_shape} but {train.path} has {train.x_shape}")
    for entry, least, key in ((train, min_train, "data.min_train"), (test, min_test, "data.min_test")):
        if entry.samples < least:
            raise FedarenaError(f"{entry.path}: {entry.samples} samples, fewer than {key} {least}")
    (x_train, y_train, _), (x_test, y_test, _) = _fill([train]), _fill([test])
    largest = int(max(y_train.max(), y_test.max()))
    x_val = y_val = None
    if val_fraction > 0 and (root / VAL).is_dir():
        (entry,) = _val_entries(root, (client,), train, whole_dir=False)
        x_val, y_val, _ = _fill([entry])
        largest = max(largest, int(y_val.max()))
    elif val_fraction > 0:
        from fedarena.data.validation import choose_validation, client_key, validation_size

        chosen, _ = choose_validation(y_train, validation_size(len(y_train), val_fraction, min_train), seed,
                                      client_key(client))
        keep = np.setdiff1d(np.arange(len(y_train)), chosen)
        x_train, y_train, x_val, y_val = x_train[keep], y_train[keep], x_train[chosen], y_train[chosen]
    data = ClientData(torch.from_numpy(x_train), torch.from_numpy(y_train), torch.from_numpy(x_test), torch.from_numpy(y_test),
                      None if x_val is None else torch.from_numpy(x_val), None if y_val is None else torch.from_numpy(y_val))
    return data, largest
