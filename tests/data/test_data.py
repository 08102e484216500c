"""fedarena.data: partitions, Synthetic(alpha, beta), the npz-dir loader and heterogeneity stats."""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fedarena.core.types import FedarenaError, FederatedData
from fedarena.data import load_digits, load_federated, load_npz_dir, summarize
from fedarena.data import partition as part
from fedarena.data.spec import DataConfig, SyntheticConfig
from fedarena.data.synthetic import synthetic_client

PARTITIONS = ("iid", "dirichlet", "shards", "quantity", "feature")


@dataclass(frozen=True)
class Case:
    """What `load_federated` takes: the [data] and [synthetic] specs and the seed."""

    data: DataConfig
    synthetic: SyntheticConfig
    seed: int


def make_config(seed: int = 0, synthetic: dict | None = None, **data: object) -> Case:
    return Case(DataConfig(**data), SyntheticConfig(**(synthetic or {})), seed)  # type: ignore[arg-type]


def load(case: Case) -> FederatedData:
    return load_federated(case.data, seed=case.seed, synthetic=case.synthetic)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return load_digits()


def client_labels(fd: FederatedData, i: int) -> np.ndarray:
    return fd.client(i).y_train.numpy()


# ---------------------------------------------------------------- digits and partitions


def test_load_digits_shape_and_range(digits):
    x, y = digits
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert y.dtype == np.int64 and set(np.unique(y)) == set(range(10))
    assert x.min() == 0.0 and x.max() == 1.0


@pytest.mark.parametrize("name", PARTITIONS)
def test_partition_covers_every_sample_once_and_is_seeded(digits, name):
    _, y = digits
    cfg = make_config(partition=name).data
    parts = part.partition_indices(name, y, cfg, seed=0)
    assert len(parts) == cfg.resolved_num_clients() == 20  # unset: 20 for digits
    assert all(p.dtype == np.int64 for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(y)))
    again = part.partition_indices(name, y, cfg, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = part.partition_indices(name, y, cfg, seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


@pytest.mark.parametrize("name", PARTITIONS)
def test_load_federated_digits(name):
    config = make_config(partition=name)
    fd = load(config)
    n = config.data.resolved_num_clients()
    assert fd.client_ids == tuple(str(i) for i in range(n))
    assert fd.partition == name and fd.num_classes == 10 and fd.input_shape == (1, 8, 8)
    assert fd.x_train.dtype == torch.float32 and fd.y_train.dtype == torch.int64
    assert len(fd.train_offsets) == len(fd.test_offsets) == len(fd.val_offsets) == n + 1
    assert fd.train_offsets[0] == fd.test_offsets[0] == fd.val_offsets[0] == 0
    assert fd.train_offsets[-1] + fd.val_offsets[-1] + fd.test_offsets[-1] == 1797
    for i in range(n):
        c = fd.client(i)
        assert c.num_train >= config.data.min_train and c.num_test >= config.data.min_test and c.num_val >= 1
    json.dumps(summarize(fd))
    again = load(config)
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(fd, field), getattr(again, field))


def test_default_digits_partition_is_dirichlet_with_details():
    fd = load(make_config())
    assert fd.partition == "dirichlet"
    assert fd.details["alpha"] == 0.3 and fd.details["test_fraction"] == 0.25


def test_dirichlet_small_alpha_is_more_skewed_than_iid():
    iid = summarize(load(make_config(partition="iid")))
    skewed = summarize(load(make_config(partition="dirichlet", alpha=0.1)))
    assert skewed["effective_classes_mean"] < iid["effective_classes_mean"] - 3
    assert skewed["js_divergence_mean"] > iid["js_divergence_mean"] + 0.2


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shards_give_at_most_k_classes(digits, k):
    _, y = digits
    for num_clients in (10, 20, 50):  # at least one shard per class: shards are single-class
        cfg = make_config(partition="shards", num_clients=num_clients, shards_per_client=k).data
        for idx in part.partition_indices("shards", y, cfg, seed=3):
            assert len(np.unique(y[idx])) <= k


def test_quantity_sizes_vary_and_keep_the_minimum():
    config = make_config(partition="quantity", alpha=0.2, min_train=10, min_test=3)
    sizes = [c.num_train + c.num_test for c in map(load(config).client, range(20))]
    assert min(sizes) >= 13 and max(sizes) > 5 * min(sizes)


def test_feature_partition_is_iid_plus_growing_noise():
    iid = load(make_config(partition="iid"))
    feat = load(make_config(partition="feature", feature_sigma=0.5))
    assert torch.equal(iid.y_train, feat.y_train) and torch.equal(iid.y_test, feat.y_test)
    assert torch.equal(iid.client(0).x_train, feat.client(0).x_train)  # client 0: std 0
    last = feat.num_clients - 1
    noise = (feat.client(last).x_train - iid.client(last).x_train).std().item()
    assert noise == pytest.approx(0.5 * last / feat.num_clients, rel=0.1)
    assert feat.details["feature_sigma"] == 0.5


def test_split_respects_minimums_and_fraction():
    cfg = make_config(test_fraction=0.1, min_train=3, min_test=4).data
    train, test = part.split_train_test(np.arange(20, 30), 0, cfg, seed=0)
    assert len(test) == 4 and len(train) == 6
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(20, 30))
    train, test = part.split_train_test(np.arange(100), 0, cfg, seed=0)
    assert len(test) == 10


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"partition": "iid", "num_clients": 300}, ["1797 samples", "300 clients"]),
        ({"partition": "shards", "num_clients": 100, "shards_per_client": 20}, ["100 * 20 = 2000 > 1797"]),
        ({"partition": "shards", "num_clients": 20, "shards_per_client": 1, "min_train": 80, "min_test": 8},
         ["shards partition gives client", "only 87 samples, fewer than 88"]),
        ({"partition": "dirichlet", "num_clients": 250, "alpha": 0.01}, ["alpha=0.01", "250 clients"]),
    ],
)
def test_impossible_partitions_are_refused(monkeypatch, data, words):
    monkeypatch.setattr(part, "MAX_TRIES", 20)
    with pytest.raises(FedarenaError) as err:
        load(make_config(**data))
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


# ---------------------------------------------------------------- synthetic


def synthetic_config(seed: int = 0, num_clients: int = 30, **synthetic: object) -> Case:
    return make_config(seed=seed, synthetic={"samples_per_client": 200, **synthetic}, name="synthetic", num_clients=num_clients)


def test_synthetic_shapes_and_reproducibility():
    config = synthetic_config(num_clients=5)
    fd = load(config)
    assert fd.partition == "natural" and fd.num_classes == 10 and fd.input_shape == (60,)
    assert fd.train_offsets[-1] + fd.val_offsets[-1] + fd.test_offsets[-1] == 5 * 200
    assert fd.details["alpha"] == 1.0 and fd.details["beta"] == 1.0
    again = load(config)
    assert torch.equal(fd.x_train, again.x_train) and torch.equal(fd.y_test, again.y_test)
    other = load(synthetic_config(seed=1, num_clients=5))
    assert not torch.equal(fd.x_train, other.x_train)


def test_synthetic_lognormal_sizes_are_at_least_50():
    fd = load(make_config(name="synthetic", num_clients=10))
    sizes = np.diff(fd.train_offsets) + np.diff(fd.val_offsets) + np.diff(fd.test_offsets)
    assert sizes.min() >= 50 and len(set(sizes.tolist())) > 1


def test_synthetic_client_does_not_depend_on_num_clients():
    small = load(synthetic_config(num_clients=3))
    large = load(synthetic_config(num_clients=8))
    for i in range(3):
        a, b = small.client(i), large.client(i)
        assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)


def test_synthetic_heterogeneity_rises_with_beta_and_iid_is_homogeneous():
    iid = summarize(load(synthetic_config(iid=True, alpha=0.0, beta=0.0)))
    stats = [summarize(load(synthetic_config(alpha=1.0, beta=b))) for b in (0.0, 1.0, 10.0)]
    effective = [s["effective_classes_mean"] for s in stats]
    assert effective[0] > effective[1] > effective[2]
    assert iid["js_divergence_mean"] < 0.05
    assert min(s["js_divergence_mean"] for s in stats) > 0.5
    assert iid["effective_classes_mean"] > effective[0] + 2


def test_synthetic_alpha_shifts_all_logits_equally():
    """u_k is added to every logit, so labels do not depend on alpha (documented in the module)."""
    cfg = SyntheticConfig()
    x0, y0 = synthetic_client(replace(cfg, alpha=0.0, samples_per_client=300), 4, seed=0)
    x1, y1 = synthetic_client(replace(cfg, alpha=5.0, samples_per_client=300), 4, seed=0)
    assert np.array_equal(x0, x1) and np.mean(y0 == y1) > 0.99


def test_synthetic_too_few_samples_is_refused():
    with pytest.raises(FedarenaError, match="client 0 has 5 samples"):
        load(synthetic_config(samples_per_client=5))


# ---------------------------------------------------------------- npz-dir


def write_client(root: Path, split: str, stem: str, **arrays: np.ndarray) -> Path:
    (root / split).mkdir(parents=True, exist_ok=True)
    path = root / split / f"{stem}.npz"
    np.savez(path, **arrays)
    return path


def good_dir(root: Path) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Three clients (written in unsorted order) with uint8 images and int32 labels."""
    rng = np.random.default_rng(0)
    data: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for stem, n in (("b", 12), ("a", 9), ("c", 7)):
        for split, m in (("train", n), ("test", n // 2)):
            x = rng.integers(0, 255, (m, 1, 4, 4), dtype=np.uint8)
            y = rng.integers(0, 6, m).astype(np.int32)
            write_client(root, split, stem, x=x, y=y)
            data.setdefault(stem, {})[split] = (x, y)
    return data


def test_npz_round_trip(tmp_path):
    data = good_dir(tmp_path)
    fd = load(make_config(name=f"npz-dir:{tmp_path}", min_train=3, min_test=3, val_fraction=0))
    assert fd.client_ids == ("a", "b", "c") and fd.partition == "natural" and fd.x_val is None
    assert fd.x_train.dtype == torch.float32 and fd.y_train.dtype == torch.int64
    labels = np.concatenate([data[s][split][1] for s in "abc" for split in ("train", "test")])
    assert fd.num_classes == labels.max() + 1
    for i, stem in enumerate(fd.client_ids):
        c = fd.client(i)
        assert np.array_equal(c.x_train.numpy(), data[stem]["train"][0].astype(np.float32))
        assert np.array_equal(c.y_train.numpy(), data[stem]["train"][1])
        assert np.array_equal(c.x_test.numpy(), data[stem]["test"][0].astype(np.float32))
        assert np.array_equal(c.y_test.numpy(), data[stem]["test"][1])


def test_npz_accepts_whole_number_float_labels(tmp_path):
    write_client(tmp_path, "train", "a", x=np.ones((4, 3)), y=np.array([0.0, 2.0, 1.0, 2.0]))
    write_client(tmp_path, "test", "a", x=np.ones((2, 3)), y=np.array([1.0, 0.0]))
    fd = load_npz_dir(tmp_path)
    assert fd.y_train.tolist() == [0, 2, 1, 2] and fd.num_classes == 3


def replace_array(key: str, value: np.ndarray | None, split: str = "train", stem: str = "a") -> Callable[[Path], None]:
    """A corruption: rewrite ``split/stem.npz`` with array ``key`` replaced by ``value`` (None: dropped)."""

    def corrupt(root: Path) -> None:
        path = root / split / f"{stem}.npz"
        with np.load(path) as npz:
            arrays = {k: v for k, v in npz.items() if k != key}
        if value is not None:
            arrays[key] = value
        np.savez(path, **arrays)

    return corrupt


def clear_split(split: str, remove_folder: bool) -> Callable[[Path], None]:
    """A corruption: delete every file of ``split/`` and, if asked, the folder itself."""

    def corrupt(root: Path) -> None:
        for f in (root / split).iterdir():
            f.unlink()
        if remove_folder:
            (root / split).rmdir()

    return corrupt


def nan_x(value: float) -> Callable[[Path], None]:
    x = np.zeros((9, 1, 4, 4))
    x[3, 0, 1, 1] = value
    return replace_array("x", x)


BAD_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing train dir": (clear_split("train", remove_folder=True), "'train/'"),
    "missing test dir": (clear_split("test", remove_folder=True), "'test/'"),
    "empty train dir": (clear_split("train", remove_folder=False), "'train/' contains no .npz"),
    "missing x": (replace_array("x", None), "a.npz: missing array 'x'"),
    "missing y": (replace_array("y", None), "a.npz: missing array 'y'"),
    "object x": (replace_array("x", np.array([[1], ["s"]], dtype=object)), "a.npz: array 'x' has object dtype"),
    "object y": (replace_array("y", np.array([1, None] * 4 + [2], dtype=object)), "a.npz: array 'y' has object dtype"),
    "length mismatch": (replace_array("y", np.zeros(8, dtype=np.int64)), "a.npz: 'x' has 9 samples but 'y' has 8"),
    "empty client split": (
        lambda root: write_client(root, "test", "b", x=np.zeros((0, 1, 4, 4)), y=np.zeros(0, dtype=np.int64)),
        "b.npz: no samples",
    ),
    "nan in x": (nan_x(np.nan), "a.npz: array 'x' contains NaN"),
    "inf in x": (nan_x(-np.inf), "a.npz: array 'x' contains NaN or infinite"),
    "fractional labels": (replace_array("y", np.full(9, 1.5)), "a.npz: labels 'y' must be whole numbers, found 1.5"),
    "string labels": (replace_array("y", np.array(["cat"] * 9)), "a.npz: array 'y' must hold integer labels"),
    "negative labels": (replace_array("y", np.array([0, 1, -3, 0, 0, 0, 0, 0, 0])), "a.npz: labels 'y' must be >= 0"),
    "train only client": (
        lambda root: write_client(root, "train", "d", x=np.zeros((5, 1, 4, 4)), y=np.zeros(5, dtype=np.int64)),
        "client 'd' has train/d.npz but no test/d.npz",
    ),
    "test only client": (
        lambda root: write_client(root, "test", "d", x=np.zeros((5, 1, 4, 4)), y=np.zeros(5, dtype=np.int64)),
        "client 'd' has test/d.npz but no train/d.npz",
    ),
    "shape differs": (replace_array("x", np.zeros((3, 1, 4, 5)), split="test", stem="c"), "c.npz: per-sample shape"),
    "too few train samples": (
        lambda root: write_client(root, "train", "c", x=np.zeros((2, 1, 4, 4)), y=np.zeros(2, dtype=np.int64)),
        "c.npz: 2 samples, fewer than data.min_train 3",
    ),
    "not an npz": (lambda root: (root / "train" / "a.npz").write_text("hello"), "a.npz: not a readable .npz"),
    # found by fuzzing (tests/fuzz/test_fuzz_loaders.py); the error each raised before in brackets
    "huge declared shape": (lambda root: write_members(root / "train" / "a.npz", x=npy_declaring((10**12, 1, 4, 4), 64),
                                                      y=npy_declaring((10**12,), 36)),  # [MemoryError]
                            "a.npz: array 'x' declares shape (1000000000000, 1, 4, 4) of float32 (64000000000000 bytes) "
                            "but holds 64 bytes"),
    "short array data": (lambda root: write_members(root / "train" / "a.npz", x=npy_declaring((9, 1, 4, 4), 64),
                                                    y=npy(np.zeros(9, dtype=np.int64))),  # [ValueError]
                         "a.npz: array 'x' declares shape (9, 1, 4, 4) of float32 (576 bytes) but holds 64 bytes"),
    "float labels beyond int64": (replace_array("y", np.full(9, 1e300)),  # [accepted, wrapped to -2**63]
                                  "a.npz: labels 'y' must be below 2**63, found 1e+300"),
    "uint64 labels beyond int64": (replace_array("y", np.full(9, 2**63 + 5, dtype=np.uint64)),  # [accepted, wrapped]
                                   "a.npz: labels 'y' must be below 2**63"),
    "unsupported compression": (lambda root: compression_method(root / "train" / "a.npz", 99),  # [NotImplementedError]
                                "a.npz: not a readable .npz archive (NotImplementedError"),
}


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def npy_declaring(shape: tuple[int, ...], nbytes: int) -> bytes:
    """A float32 .npy file whose header declares `shape` and which holds `nbytes` of data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + bytes(nbytes)


def write_members(path: Path, **members: bytes) -> None:
    """An npz archive of `<name>.npy` members as given (plain names where `name` ends with _raw)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name.removesuffix("_raw") if name.endswith("_raw") else f"{name}.npy", data)


def compression_method(path: Path, method: int) -> None:
    """Rewrite every member's compression method field (local headers and central directory) to `method`."""
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        i = data.find(signature)
        while i != -1:
            data[i + offset:i + offset + 2] = method.to_bytes(2, "little")
            i = data.find(signature, i + 4)
    path.write_bytes(bytes(data))


def test_npz_reads_the_npy_members_it_checked(tmp_path):
    """Found by fuzzing: an archive holding a member named plain "x" beside x.npy had np.load return that member's
    raw bytes for npz["x"] (ValueError: could not convert string to float), after the x.npy header was checked."""
    good_dir(tmp_path)
    with np.load(tmp_path / "train" / "a.npz") as npz:
        x, y = npz["x"], npz["y"]
    write_members(tmp_path / "train" / "a.npz", x=npy(x), y=npy(y), x_raw=b"junk")
    fd = load_npz_dir(tmp_path)
    assert np.array_equal(fd.x_train[: len(x)].numpy(), x.astype(np.float32))


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_npz_rejects_bad_data(tmp_path, case):
    good_dir(tmp_path)
    corrupt, expected = BAD_CASES[case]
    corrupt(tmp_path)
    with pytest.raises(FedarenaError) as err:
        load(make_config(name=f"npz-dir:{tmp_path}", min_train=3, min_test=3))
    message = str(err.value)
    assert expected in message and "\n" not in message, message


def test_npz_missing_directory_is_named(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FedarenaError, match=f"directory not found: {missing}"):
        load_npz_dir(missing)


class Trap:
    """Unpickling this creates ``marker`` (via builtins.open): proof that a pickle was run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_npz_pickled_array_is_never_unpickled(tmp_path):
    good_dir(tmp_path)
    marker = tmp_path / "unpickled"
    path = write_client(tmp_path, "train", "a", x=np.array([Trap(marker)] * 9, dtype=object), y=np.zeros(9, dtype=np.int64))
    with pytest.raises(FedarenaError, match="object dtype"):
        load_npz_dir(tmp_path)
    assert not marker.exists()
    with np.load(path, allow_pickle=True) as npz:  # the trap works when pickles are allowed
        npz["x"]
    assert marker.exists()


# ---------------------------------------------------------------- heterogeneity


def tiny(labels: list[list[int]], num_classes: int = 2) -> FederatedData:
    y = torch.tensor([v for client in labels for v in client], dtype=torch.int64)
    offsets = tuple(np.cumsum([0] + [len(c) for c in labels]).tolist())
    return FederatedData(
        name="tiny", client_ids=tuple(map(str, range(len(labels)))), x_train=torch.zeros(len(y), 1),
        y_train=y, train_offsets=offsets, x_test=torch.zeros(len(y), 1), y_test=y, test_offsets=offsets,
        num_classes=num_classes, partition="hand", details={"alpha": np.float64(0.5)},
    )


def h2(p: float) -> float:
    """Binary entropy in bits."""
    return -sum(q * math.log2(q) for q in (p, 1 - p) if q > 0)


def test_heterogeneity_disjoint_clients():
    s = summarize(tiny([[0, 0], [1, 1]]))
    assert s["label_counts"] == [[2, 0], [0, 2]]
    assert s["train_sizes"] == [2, 2] and s["test_sizes"] == [2, 2]
    assert s["effective_classes_mean"] == pytest.approx(1.0)
    # pooled (1/2, 1/2); each client vs pooled: H(3/4, 1/4) - (0 + 1) / 2
    assert s["js_divergence_mean"] == pytest.approx(h2(0.25) - 0.5) == pytest.approx(0.311278, abs=1e-6)
    assert s["partition"] == "hand" and s["details"] == {"alpha": 0.5}
    assert set(s["definitions"]) == {"effective_classes_mean", "js_divergence_mean"}
    json.dumps(s)


def test_heterogeneity_uneven_clients():
    s = summarize(tiny([[0, 1, 0, 1], [0, 0, 0, 0]]))  # pooled (3/4, 1/4)
    assert s["effective_classes_mean"] == pytest.approx((2 + 1) / 2)
    js_a = h2(0.625) - (1 + h2(0.25)) / 2
    js_b = h2(0.875) - (0 + h2(0.25)) / 2
    assert s["js_divergence_mean"] == pytest.approx((js_a + js_b) / 2)


def test_heterogeneity_identical_clients_have_zero_divergence():
    s = summarize(tiny([[0, 1, 2], [2, 1, 0]], num_classes=3))
    assert s["effective_classes_mean"] == pytest.approx(3.0)
    assert s["js_divergence_mean"] == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- specs: the data layer's own types and checks


def test_data_imports_nothing_from_config():
    """data/ sits below config.py: the specs are data's types and config imports them, not the reverse."""
    import ast

    import fedarena.data

    root = Path(fedarena.data.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            assert not [n for n in names if n == "fedarena.config" or n.startswith("fedarena.config.")], path


def test_config_reexports_the_data_specs():
    from fedarena import config as cfg
    from fedarena.data import spec

    assert cfg.DataConfig is spec.DataConfig and cfg.SyntheticConfig is spec.SyntheticConfig
    assert cfg.PARTITIONS is spec.PARTITIONS and cfg.DATASETS is spec.DATASETS
    assert cfg.Config().data == spec.DataConfig()


@pytest.mark.parametrize(
    ("data", "synthetic", "message"),
    [
        ({"num_clients": 0}, {}, "data.num_clients must be >= 1"),
        ({"alpha": 0.0}, {}, "data.alpha"),
        ({"shards_per_client": 0}, {}, "data.shards_per_client"),
        ({"feature_sigma": -1.0}, {}, "data.feature_sigma"),
        ({"test_fraction": 1.0}, {}, "data.test_fraction"),
        ({"min_test": 0}, {}, "data.min_train and data.min_test"),
        ({"partition": "zipf"}, {}, "unknown partition 'zipf'"),
        ({"new_clients": 1.0}, {}, "data.new_clients"),
        ({"name": "mnist"}, {}, "unknown dataset 'mnist'"),
        ({"name": "npz-dir:/x", "partition": "iid"}, {}, "cannot be used with npz-dir"),
        ({"name": "synthetic", "partition": "dirichlet"}, {}, "cannot be used with synthetic"),
        ({"partition": "natural"}, {}, "digits has no natural partition"),
        ({"name": "synthetic"}, {"beta": -1.0}, "synthetic.alpha and synthetic.beta"),
        ({"name": "synthetic"}, {"num_classes": 1}, "synthetic needs"),
        ({"name": "synthetic"}, {"samples_per_client": -1}, "synthetic.samples_per_client"),
    ],
)
def test_spec_checks_name_the_key_once_for_loader_and_config(data, synthetic, message):
    """Each check lives in the spec's validate(); the loader and config.validate both reach it."""
    from fedarena import config as cfg

    case = make_config(synthetic=synthetic, **data)
    with pytest.raises(FedarenaError, match=message):
        case.data.validate()
        case.synthetic.validate()
    with pytest.raises(FedarenaError, match=message):
        load(case)
    with pytest.raises(FedarenaError, match=message):
        cfg.validate(replace(cfg.Config(), data=case.data, synthetic=case.synthetic))


def test_resolved_partition_and_details():
    from fedarena.data import partition_details
    from fedarena.data.spec import DataConfig as Spec

    assert Spec().resolved_partition() == "dirichlet"
    assert Spec(name="synthetic").resolved_partition() == "natural"
    assert Spec(name="npz-dir:/x").resolved_partition() == "natural"
    assert Spec(partition="shards").resolved_partition() == "shards"
    assert partition_details(Spec(alpha=0.7)) == {"alpha": 0.7}
    assert partition_details(Spec(partition="shards", shards_per_client=3)) == {"shards_per_client": 3}
    assert partition_details(Spec(), "iid") == {}
    case = make_config(partition="feature", feature_sigma=0.2)
    details = load(case).details
    assert details == {**partition_details(case.data), "test_fraction": case.data.test_fraction, "val_fraction": 0.15,
                       "val_split": details["val_split"], "val_stratified_clients": details["val_stratified_clients"]}
    assert details["val_split"] in ("stratified", "mixed") and details["val_stratified_clients"] > 0
    case = make_config(partition="feature", feature_sigma=0.2, val_fraction=0)
    assert load(case).details == {**partition_details(case.data), "test_fraction": case.data.test_fraction}


def test_new_client_count_matches_the_engine_rule():
    from fedarena.data.spec import new_client_count
    from fedarena.sim.engine import select_new_clients

    for n in (2, 3, 6, 20, 101):
        for fraction in (0.0, 0.01, 0.1, 0.34, 0.5):
            expected = None
            try:
                expected = len(select_new_clients(0, n, fraction))
            except FedarenaError:
                with pytest.raises(FedarenaError, match="would hold out all"):
                    new_client_count(n, fraction)
            if expected is not None:
                assert new_client_count(n, fraction) == expected


@pytest.mark.parametrize(
    ("requested", "num_clients", "new_clients", "expected"),
    [(None, 20, 0.0, 10), (None, 3, 0.0, 3), (None, 12, 0.34, 8), (None, 6, 0.34, 4), (5, 20, 0.0, 5),
     (4, 6, 0.34, 4)],
)
def test_clients_per_round_defaults_to_min_10_training_clients(requested, num_clients, new_clients, expected):
    from fedarena.data.spec import resolve_clients_per_round

    assert resolve_clients_per_round(requested, num_clients, new_clients) == expected


def test_clients_per_round_above_the_training_clients_is_refused():
    from fedarena.data.spec import resolve_clients_per_round

    with pytest.raises(FedarenaError, match=r"clients_per_round \(6\) exceeds the 5 clients that train"):
        resolve_clients_per_round(6, 5, 0.0)
    with pytest.raises(FedarenaError, match=r"exceeds the 4 clients that train \(2 of data.num_clients 6 held out"):
        resolve_clients_per_round(5, 6, 0.34)
