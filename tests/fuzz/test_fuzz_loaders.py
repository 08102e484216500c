"""Fuzzing the data loaders (issue #18, item 4): ``npz-dir:`` (`load_npz_dir`, `load_npz_client`) and ``hf:``
(`load_hf`) on local data only.

npz: a directory of two clients whose files are drawn valid or malformed: other dtypes (object arrays pickled,
strings, complex, float16, unsigned, bool), shapes and lengths, NaN/Inf and values beyond float32, labels that
are negative, fractional, beyond int64 or 2-D, missing or extra arrays, a missing or extra file, bytes that are
not a zip, zips cut or overwritten, and `.npy` headers that declare other shapes than the bytes they hold (a
huge declared shape included). hf: `datasets.Dataset` objects built in memory (the loader's source replaced by
them, no file and no network) with label, feature and client columns of every type, nulls, NaN, ragged lists,
images and audio that are not, and every partition and token setting; and a few ``save_to_disk`` directories
with one file damaged.

Property: FedarenaError naming the file, directory or column, nothing else escapes, and accepted data is
well-formed (finite float32 features, int64 labels in [0, num_classes), consistent offsets).
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from fuzzing import OUTCOMES, fuzz, mutated_bytes, sizes
from hypothesis import strategies as st

from fedarena.core.types import FedarenaError, FederatedData
from fedarena.data.hf import Columns, load_hf
from fedarena.data.npz import load_npz_client, load_npz_dir

CLIENTS = ("a", "b")


def assert_well_formed(fd: FederatedData, float_x: bool = True) -> None:
    n_train, n_test = fd.train_offsets[-1], fd.test_offsets[-1]
    assert len(fd.client_ids) == len(fd.train_offsets) - 1 == len(fd.test_offsets) - 1 >= 1
    assert len(fd.x_train) == len(fd.y_train) == n_train and len(fd.x_test) == len(fd.y_test) == n_test
    assert list(fd.train_offsets) == sorted(fd.train_offsets) and list(fd.test_offsets) == sorted(fd.test_offsets)
    for y in (fd.y_train, fd.y_test, *([fd.y_val] if fd.y_val is not None else [])):
        assert y.dtype == torch.int64 and (len(y) == 0 or (int(y.min()) >= 0 and int(y.max()) < fd.num_classes))
    for x in (fd.x_train, fd.x_test):
        if x.is_floating_point():
            assert (not float_x or x.dtype == torch.float32) and bool(torch.isfinite(x).all())


# ------------------------------------------------------------------------- npz

X_DTYPES = ("float32", "float64", "float16", "int8", "int64", "uint64", ">f4", "bool", "complex64", "U2", "object",
            "datetime64[s]")
Y_DTYPES = ("int64", "int32", "uint8", "uint64", "float64", "float32", "bool", "U1", "object")
SPECIAL = (np.nan, np.inf, -np.inf, 1e300, -1.0, 0.5, 2.0**63, 2.0**64, 1e12)


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def npy_header(shape: Any, descr: str, data: bytes, version: tuple[int, int] = (1, 0)) -> bytes:
    """A `.npy` file whose header declares `shape` and `descr` whatever `data` holds."""
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(buf, header)
    else:
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue() + data


@st.composite
def array(draw, n: int, *, labels: bool) -> bytes:
    """The .npy bytes of `x` (n, 3) or `y` (n,): valid, or of another dtype, shape or length, or with special values,
    or with a header that lies about its data."""
    good = (np.arange(n) % 3).astype(np.int64) if labels else np.linspace(-1, 1, n * 3, dtype=np.float32).reshape(n, 3)
    what = draw(st.sampled_from(["good"] * 4 + ["dtype", "shape", "special", "header"]))
    if what == "good":
        return npy(good)
    if what == "dtype":
        dtype = draw(st.sampled_from(Y_DTYPES if labels else X_DTYPES))
        if dtype == "object":
            return npy(np.array([{"pickled": i} for i in range(n)], dtype=object))
        with np.errstate(all="ignore"):
            return npy(good.astype(dtype))
    if what == "shape":
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        return npy(np.zeros(shape, dtype=good.dtype))
    if what == "special":
        out = good.astype(np.float64)
        out.flat[draw(st.integers(0, out.size - 1))] = draw(st.sampled_from(SPECIAL))
        return npy(out.astype(draw(st.sampled_from(["float64", "float32", "float16"]))) if labels or draw(st.booleans())
                   else out)
    shape = draw(st.one_of(st.just((10**12, 3)), st.just((2**62,)), st.tuples(st.integers(0, 9)),
                           st.tuples(st.integers(0, 9), st.integers(0, 4))))
    descr = draw(st.sampled_from(["<f4", "<i8", "|u1", "<f8", "|O"]))
    return npy_header(shape, descr, good.tobytes()[: draw(st.integers(0, good.nbytes + 8))],
                      draw(st.sampled_from([(1, 0), (2, 0)])))


@st.composite
def npz_file(draw) -> bytes:
    """One client file: x and y (and maybe an extra array or a missing one), zipped, perhaps then damaged."""
    n = draw(st.integers(1, 4))
    members = {"x.npy": draw(array(n, labels=False)), "y.npy": draw(array(n, labels=True))}
    if draw(st.integers(0, 7)) == 0:
        members.pop(draw(st.sampled_from(sorted(members))))
    if draw(st.integers(0, 7)) == 0:
        members[draw(st.sampled_from(["z.npy", "x", "y.npy/", "notes.txt"]))] = b"junk"
    buf = io.BytesIO()
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    data = buf.getvalue()
    what = draw(st.sampled_from(["zip"] * 6 + ["mutated", "bytes"]))
    if what == "mutated":
        return draw(mutated_bytes(data))
    if what == "bytes":
        return draw(st.binary(max_size=200))
    return data


GOOD_NPZ: dict[int, bytes] = {}


def good_npz(n: int) -> bytes:
    if n not in GOOD_NPZ:
        buf = io.BytesIO()
        np.savez(buf, x=np.linspace(-1, 1, n * 3, dtype=np.float32).reshape(n, 3), y=np.arange(n) % 3)
        GOOD_NPZ[n] = buf.getvalue()
    return GOOD_NPZ[n]


@st.composite
def npz_dir(draw) -> dict[str, bytes | None]:
    """split/client -> file bytes (None: absent): mostly valid files, 1-2 drawn from `npz_file`."""
    files: dict[str, bytes | None] = {f"{s}/{c}.npz": good_npz(3) for s in ("train", "test") for c in CLIENTS}
    if draw(st.booleans()):
        files |= {f"val/{c}.npz": good_npz(2) for c in CLIENTS}
    for _ in range(draw(st.integers(1, 2))):
        files[draw(st.sampled_from(sorted(files)))] = draw(npz_file())
    if draw(st.integers(0, 5)) == 0:
        files[draw(st.sampled_from(sorted(files)))] = None
    if draw(st.integers(0, 5)) == 0:
        files[draw(st.sampled_from(["train/c.npz", "val/c.npz", "test/c.npz"]))] = good_npz(2)
    return files


@pytest.fixture(scope="module")
def root():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d) / "clients"


def lay_out(root: Path, files: dict[str, bytes | None]) -> None:
    shutil.rmtree(root, ignore_errors=True)
    for name, data in files.items():
        if data is not None:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)


@sizes(150, 600)
def test_npz_dirs_load_well_formed_or_are_refused_naming_the_file(n, root):
    def check(files):
        lay_out(root, files)
        try:
            fd = load_npz_dir(root)
        except FedarenaError as exc:
            assert str(root) in str(exc), exc
            went = "refused"
        else:
            assert_well_formed(fd)
            went = "accepted"
        for client in CLIENTS:
            try:
                data, largest = load_npz_client(root, client, val_fraction=0.3)
            except FedarenaError as exc:
                assert str(root) in str(exc), exc
            else:
                for y in (data.y_train, data.y_test):
                    assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) <= largest
                assert bool(torch.isfinite(data.x_train).all()) and data.x_train.dtype == torch.float32
        return went

    fuzz("loaders.npz", n, npz_dir(), check)
    assert OUTCOMES[("loaders.npz", "accepted")] and OUTCOMES[("loaders.npz", "refused")]


# ------------------------------------------------------------------------- hf (local datasets only)

ROWS = 12


def png(size: int, mode: str = "L") -> dict[str, Any]:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (size, size), 128).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def wav(samples: int, rate: int = 16_000, width: int = 2) -> dict[str, Any]:
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(b"\x01\x00" * samples * (width // 2 or 1))
    return {"bytes": buf.getvalue(), "path": None}


def good_column(kind: str) -> tuple[list[Any], Any]:
    """ROWS valid values of a column of `kind`, and its `datasets` feature (None: inferred)."""
    import datasets

    if kind == "int":
        return [i % 3 for i in range(ROWS)], None
    if kind == "float":
        return [float(i % 3) + 0.25 for i in range(ROWS)], None
    if kind == "str":
        return [f"w{i % 3}" for i in range(ROWS)], None
    if kind == "bool":
        return [i % 2 == 0 for i in range(ROWS)], None
    if kind == "classlabel":
        return [i % 3 for i in range(ROWS)], datasets.ClassLabel(num_classes=3)
    if kind == "list":
        return [[float(i), 1.0] for i in range(ROWS)], None
    if kind == "text":
        return [f"the cat sat on the mat {i} times " * 3 for i in range(ROWS)], None
    if kind == "image":
        return [png(4)] * ROWS, datasets.Image()
    return [wav(100)] * ROWS, None  # a struct of bytes and path, as datasets stores audio (its Audio needs torchcodec)


BAD_VALUES = {
    "int": [None, -1, 10**12, 2**62], "float": [None, float("nan"), float("inf"), 0.5, 1e300],
    "str": [None, "", "é", "x" * 300], "bool": [None], "classlabel": [None, 3, 7, -1],
    "list": [None, [], [1.0], [float("nan"), 1.0], [1.0, 2.0, 3.0]], "text": [None, "", "ÿ" * 5, "a"],
    "image": [{"bytes": b"not an image", "path": None}, "png5", "rgb", "i16", {"bytes": None, "path": "/nonexistent.png"}],
    "audio": [{"bytes": b"RIFFjunk", "path": None}, "8khz", "long", {"bytes": b"", "path": None}],
}


def bad_value(value: Any) -> Any:
    built = {"png5": lambda: png(5), "rgb": lambda: png(4, "RGB"), "i16": lambda: png(4, "I;16"),
             "8khz": lambda: wav(100, rate=8000), "long": lambda: wav(20_000)}
    return built[value]() if isinstance(value, str) and value in built else value


# coherent settings (column kinds, Columns, partition) that load, before any defect is drawn
RECIPES = [
    ({"x": "float", "y2": "float", "label": "int", "writer": "str"}, dict(features="x,y2", label="label"), "natural"),
    ({"features": "list", "label": "str"}, dict(features="features", label="label"), "iid"),
    ({"x": "float", "label": "bool"}, dict(), "dirichlet"),
    ({"text": "text", "writer": "str"}, dict(label="next", tokens="char", seq_len=4), "natural"),
    ({"text": "text", "label": "classlabel"}, dict(tokens="word", seq_len=4), "quantity"),
    ({"text": "text", "label": "int", "writer": "str"}, dict(tokens="bow"), "natural"),
    ({"image": "image", "label": "classlabel", "writer": "str"}, dict(), "natural"),
    ({"audio": "audio", "label": "int"}, dict(), "shards"),
    ({"x": "float", "label": "float"}, dict(features="x"), "feature"),
]
SETTINGS = {"features": ["nope", "x,label", "label", "writer", "x,text"], "label": ["nope", "next", "x", "writer"],
            "partition_by": ["nope", "label", "x"], "tokens": ["bytes", "bow", "char", "word"],
            "seq_len": [1, 10_000], "vocab_size": [1], "image_size": [3]}


@st.composite
def hf_case(draw) -> tuple[dict[str, tuple[list[Any], Any]], Columns, dict[str, Any]]:
    """A recipe that loads, with 0 to 3 defects: bad values in a column, a setting or the partition changed."""
    kinds, settings, partition = draw(st.sampled_from(RECIPES))
    cols = {name: good_column(kind) for name, kind in kinds.items()}
    fields = dict(settings, partition_by="writer" if "writer" in kinds else "")
    options: dict[str, Any] = {"partition": partition, "num_clients": None if partition == "natural" else 2,
                               "min_train": 1, "min_test": 1, "test_fraction": 0.25}
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        what = draw(st.sampled_from(["values", "values", "setting", "partition", "clients"]))
        if what == "values":
            name = draw(st.sampled_from(sorted(cols)))
            values, feature = cols[name]
            values = list(values)
            for _ in range(draw(st.integers(1, 3))):
                values[draw(st.integers(0, ROWS - 1))] = bad_value(draw(st.sampled_from(BAD_VALUES[kinds[name]])))
            cols[name] = values, feature
        elif what == "setting":
            key = draw(st.sampled_from(sorted(SETTINGS)))
            fields[key] = draw(st.sampled_from(SETTINGS[key]))
        elif what == "partition":
            options["partition"] = draw(st.sampled_from(["natural", "iid", "dirichlet", "shards", "quantity", "x"]))
        else:
            options["num_clients"] = draw(st.sampled_from([None, 1, 3, 50]))
    return cols, Columns(**fields), options


def dataset(cols: dict[str, tuple[list[Any], Any]]) -> Any:
    import datasets

    features = {name: feature for name, (_, feature) in cols.items() if feature is not None}
    if features and len(features) < len(cols):  # let datasets infer the others
        table = datasets.Dataset.from_dict({name: values for name, (values, _) in cols.items()})
        inferred = dict(table.features) | features
        return datasets.Dataset.from_dict({name: values for name, (values, _) in cols.items()},
                                          features=datasets.Features(inferred))
    return datasets.Dataset.from_dict({name: values for name, (values, _) in cols.items()},
                                      features=datasets.Features(features) if features else None)


@sizes(100, 300)
def test_hf_datasets_load_well_formed_or_are_refused_naming_the_column(n):
    def check(case):
        cols, columns, options = case
        try:
            ds = dataset(cols)
        except (TypeError, ValueError, OverflowError, ArithmeticError):  # datasets/Arrow cannot build it: not our input
            return "not built"
        with mock.patch("fedarena.data.hf.clients.load_source", return_value=(ds, "fuzz-data")):
            try:
                fd = load_hf("hf:fuzz", columns, seed=3, **options)
            except FedarenaError as exc:
                assert str(exc), exc
                return "refused"
        assert_well_formed(fd, float_x=False)
        return "accepted"

    fuzz("loaders.hf", n, hf_case(), check)
    assert OUTCOMES[("loaders.hf", "accepted")] and OUTCOMES[("loaders.hf", "refused")]


@st.composite
def disk_damage(draw) -> tuple[str, bytes | None]:
    name = draw(st.sampled_from(["dataset_info.json", "state.json", "data-00000-of-00001.arrow"]))
    if draw(st.integers(0, 5)) == 0:
        return name, None
    if name.endswith(".json") and draw(st.booleans()):
        return name, json.dumps(draw(st.one_of(st.none(), st.integers(), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                          max_size=2)))).encode()
    return name, draw(mutated_bytes(DISK[name]))


DISK: dict[str, bytes] = {}


@sizes(20, 60)
def test_damaged_save_to_disk_directories_are_refused_naming_the_directory(n, tmp_path_factory):
    import datasets

    base = tmp_path_factory.mktemp("disk")
    ds = datasets.Dataset.from_dict({"x": [float(i) for i in range(ROWS)], "label": [i % 3 for i in range(ROWS)],
                                     "writer": [f"u{i % 2}" for i in range(ROWS)]})
    ds.save_to_disk(str(base / "good"))
    DISK.update({p.name: p.read_bytes() for p in (base / "good").iterdir()})
    columns = Columns(files=str(base / "bad"), partition_by="writer")

    def check(case):
        name, data = case
        shutil.rmtree(base / "bad", ignore_errors=True)
        shutil.copytree(base / "good", base / "bad")
        path = base / "bad" / name
        path.unlink() if data is None else path.write_bytes(data)
        try:
            fd = load_hf("hf:disk", columns, seed=1, min_train=1, min_test=1)
        except FedarenaError as exc:
            assert str(base / "bad") in str(exc) or "column" in str(exc), exc
            return "refused"
        assert_well_formed(fd, float_x=False)
        return "accepted"

    fuzz("loaders.hf-disk", n, disk_damage(), check)
