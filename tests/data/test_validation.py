"""Each client's validation split (data.val_fraction): sizes and clamps, taken only out of the train rows,
seeded, stratified by label, by position for text, npz-dir's own val/ files, and the key's range check."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedarena import config as cfg
from fedarena.cli import app
from fedarena.core.types import FedarenaError, FederatedData
from fedarena.data import load_federated
from fedarena.data.shakespeare import read_text
from fedarena.data.spec import DataConfig
from fedarena.data.validation import choose_validation, split_validation, validation_size


def load(seed: int = 0, **data: object) -> FederatedData:
    return load_federated(DataConfig(**data), seed=seed)  # type: ignore[arg-type]


def rows(x: torch.Tensor, y: torch.Tensor) -> Counter:
    """A client's rows as a multiset of (features, label) byte strings."""
    flat = x.reshape(len(x), -1).numpy()
    return Counter((flat[k].tobytes(), int(y[k])) for k in range(len(y)))


def toy(sizes: list[int], num_classes: int = 3) -> FederatedData:
    """Clients of `sizes` train rows (row k: features [k], label k % num_classes) and one test row each."""
    n = sum(sizes)
    return FederatedData(
        name="toy", client_ids=tuple(str(i) for i in range(len(sizes))),
        x_train=torch.arange(n, dtype=torch.float32)[:, None], y_train=torch.arange(n) % num_classes,
        train_offsets=(0, *np.cumsum(sizes).tolist()),
        x_test=torch.zeros(len(sizes), 1), y_test=torch.zeros(len(sizes), dtype=torch.int64),
        test_offsets=tuple(range(len(sizes) + 1)), num_classes=num_classes, partition="natural",
    )


# ---------------------------------------------------------------- sizes and clamps


@pytest.mark.parametrize("n,fraction,min_train,expected", [
    (100, 0.15, 5, 15),
    (10, 0.15, 5, 2),  # round(1.5) = 2 (half up, as the test split's rounding)
    (3, 0.15, 1, 1),  # round(0.45) = 0, but at least 1
    (6, 0.15, 5, 1),
    (5, 0.15, 5, 0),  # the clamp leaves nothing: no validation row
    (10, 0.9, 5, 5),  # clamped to keep min_train
    (100, 0.0, 5, 0),
])
def test_validation_size(n, fraction, min_train, expected):
    assert validation_size(n, fraction, min_train) == expected


def test_split_sizes_order_and_test_untouched():
    data = toy([40, 6, 5, 3])
    fd = split_validation(data, 0.25, 0, min_train=5)
    assert [fd.client(i).num_val for i in range(4)] == [10, 1, 0, 0]
    assert [fd.client(i).num_train for i in range(4)] == [30, 5, 5, 3]
    assert fd.val_offsets == (0, 10, 11, 11, 11) and fd.train_offsets == (0, 30, 35, 40, 43)
    for i in range(4):
        c, old = fd.client(i), data.client(i)
        assert c.x_val is not None and c.y_val is not None
        kept = c.x_train[:, 0].tolist()
        assert kept == sorted(kept)  # train rows keep their relative order
        assert sorted(kept + c.x_val[:, 0].tolist()) == old.x_train[:, 0].tolist()
        assert torch.equal(c.x_test, old.x_test) and torch.equal(c.y_test, old.y_test)
    assert fd.x_test is data.x_test and fd.details["val_fraction"] == 0.25
    assert split_validation(data, 0.0, 0, min_train=5) is data


def test_split_by_position_takes_the_last_train_rows():
    fd = split_validation(toy([20, 9]), 0.2, 0, min_train=5, by_position=True)
    assert fd.x_val is not None
    assert fd.x_val[:, 0].tolist() == [16, 17, 18, 19, 27, 28]  # round(1.8) = 2 of client 1
    assert fd.x_train[:, 0].tolist() == [*range(16), 20, 21, 22, 23, 24, 25, 26]
    assert fd.details["val_split"] == "position"


def test_split_refuses_bad_fractions_and_a_second_split():
    data = toy([20])
    with pytest.raises(ValueError, match="fraction"):
        split_validation(data, 1.0, 0, min_train=5)
    with pytest.raises(ValueError, match="already has a validation split"):
        split_validation(split_validation(data, 0.2, 0, min_train=5), 0.2, 0, min_train=5)


def test_stratified_only_where_every_class_fits():
    y = np.repeat([0, 1, 2], 10)
    val, strat = choose_validation(y, 6, seed=0, client=0)
    assert strat and np.bincount(y[val]).tolist() == [2, 2, 2] and val.tolist() == sorted(val.tolist())
    assert not choose_validation(y, 2, seed=0, client=0)[1]  # fewer validation rows than classes
    assert not choose_validation(np.array([0] * 9 + [1]), 3, seed=0, client=0)[1]  # a class of one row
    val, strat = choose_validation(np.array([0] * 9 + [1]), 3, seed=0, client=0)
    assert not strat and len(set(val.tolist())) == 3


# ---------------------------------------------------------------- load_federated


@pytest.mark.parametrize("data", [
    {"name": "digits", "partition": "dirichlet"},
    {"name": "digits", "partition": "feature"},
    {"name": "synthetic", "num_clients": 8},
    {"name": "shakespeare", "num_clients": 6},
])
def test_train_plus_val_is_the_old_train_split(data):
    old = load(val_fraction=0, **data)
    assert old.x_val is None and old.y_val is None and old.val_offsets == () and "val_fraction" not in old.details
    fd = load(**data)
    assert fd.details["val_fraction"] == 0.15
    assert torch.equal(fd.x_test, old.x_test) and torch.equal(fd.y_test, old.y_test)
    assert fd.test_offsets == old.test_offsets and fd.client_ids == old.client_ids
    for i in range(fd.num_clients):
        c, o = fd.client(i), old.client(i)
        assert c.x_val is not None and c.y_val is not None
        assert c.num_val == validation_size(o.num_train, 0.15, 5) and c.num_val >= 1
        assert c.num_train + c.num_val == o.num_train and c.num_train >= 5
        assert rows(c.x_train, c.y_train) + rows(c.x_val, c.y_val) == rows(o.x_train, o.y_train)


def test_same_seed_is_bit_identical_and_another_seed_differs():
    a, b, other = load(seed=3), load(seed=3), load(seed=4)
    for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert a.val_offsets == b.val_offsets and a.details == b.details
    # the same clients (the partition and test split are seeded too, so compare the validation streams alone)
    base = load(seed=3, val_fraction=0)
    one = split_validation(base, 0.15, 3, min_train=5)
    two = split_validation(base, 0.15, 4, min_train=5)
    assert one.val_offsets == two.val_offsets and one.y_val is not None and two.y_val is not None
    assert not torch.equal(one.x_val, two.x_val)  # type: ignore[arg-type]
    assert not torch.equal(a.x_val, other.x_val)  # type: ignore[arg-type]


def test_validation_keeps_each_clients_class_proportions_on_digits():
    fd = load(partition="iid", num_clients=4)  # ~450 rows a client: every class fits
    assert fd.details["val_split"] == "stratified" and fd.details["val_stratified_clients"] == 4
    for i in range(fd.num_clients):
        c = fd.client(i)
        assert c.y_val is not None
        train = np.bincount(c.y_train.numpy(), minlength=10) / c.num_train
        val = np.bincount(c.y_val.numpy(), minlength=10) / c.num_val
        assert np.abs(train - val).max() < 0.02  # one row of ~50 either way; a random subset strays further
        expected = np.bincount(c.y_train.numpy(), minlength=10) + np.bincount(c.y_val.numpy(), minlength=10)
        assert np.all(np.abs(np.bincount(c.y_val.numpy(), minlength=10) - 0.15 * expected) <= 1)


def test_shakespeare_validation_is_the_last_train_windows():
    old, fd = load(name="shakespeare", val_fraction=0), load(name="shakespeare")
    assert fd.details["val_split"] == "position"
    for i in range(fd.num_clients):
        c, o = fd.client(i), old.client(i)
        assert c.x_val is not None and c.num_val == validation_size(o.num_train, 0.15, 5)
        assert torch.equal(c.x_train, o.x_train[: c.num_train]) and torch.equal(c.x_val, o.x_train[c.num_train :])
        assert torch.equal(c.y_val, o.y_train[c.num_train :])  # type: ignore[arg-type]


def test_hf_next_token_windows_are_split_by_position_and_labelled_rows_by_label(tmp_path):
    text = read_text()[:20_000].split("\n\n")
    datasets.Dataset.from_dict({"text": text, "speaker": [f"s{i % 2}" for i in range(len(text))]}).to_parquet(
        str(tmp_path / "t.parquet"))
    spec = DataConfig(name="hf:parquet", files=str(tmp_path / "t.parquet"), partition_by="speaker", seq_len=10)
    old, fd = load_federated(dataclasses.replace(spec, val_fraction=0), seed=0), load_federated(spec, seed=0)
    assert fd.details["val_split"] == "position"
    for i in range(fd.num_clients):
        c, o = fd.client(i), old.client(i)
        assert c.num_val > 0 and torch.equal(c.x_val, o.x_train[c.num_train :])  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    datasets.Dataset.from_dict({"a": rng.standard_normal(400), "b": rng.standard_normal(400),
                                "label": np.arange(400) % 4}).to_parquet(str(tmp_path / "s.parquet"))
    spec = DataConfig(name="hf:parquet", files=str(tmp_path / "s.parquet"), features="a,b", label="label",
                      num_clients=4)
    old, fd = load_federated(dataclasses.replace(spec, val_fraction=0), seed=0), load_federated(spec, seed=0)
    assert fd.details["val_split"] == "stratified"
    for i in range(fd.num_clients):
        c, o = fd.client(i), old.client(i)
        assert rows(c.x_train, c.y_train) + rows(c.x_val, c.y_val) == rows(o.x_train, o.y_train)  # type: ignore[arg-type]


# ---------------------------------------------------------------- npz-dir val/


def write(root: Path, split: str, stem: str, x: np.ndarray, y: np.ndarray) -> Path:
    (root / split).mkdir(parents=True, exist_ok=True)
    np.savez(root / split / f"{stem}.npz", x=x, y=y)
    return root / split / f"{stem}.npz"


def npz_dir(root: Path, val: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Clients a and b with train, test and (if asked) val files; returns the val arrays."""
    rng = np.random.default_rng(1)
    vals = {}
    for stem, n in (("a", 20), ("b", 12)):
        for split, m in (("train", n), ("test", 4)):
            write(root, split, stem, rng.integers(0, 9, (m, 3)).astype(np.int16), np.arange(m) % 3)
        if val:
            vals[stem] = (rng.standard_normal((3, 3)).astype(np.float32), np.array([2, 0, 1]))
            write(root, "val", stem, *vals[stem])
    return vals


def test_npz_val_files_are_the_validation_split(tmp_path):
    vals = npz_dir(tmp_path)
    fd = load(name=f"npz-dir:{tmp_path}")
    reference = load(name=f"npz-dir:{tmp_path}", val_fraction=0)
    assert fd.details["val_split"] == "files" and reference.x_val is None
    for i, stem in enumerate(fd.client_ids):
        c, o = fd.client(i), reference.client(i)
        assert torch.equal(c.x_train, o.x_train) and torch.equal(c.x_test, o.x_test)  # nothing split off
        assert c.x_val is not None and c.y_val is not None
        assert np.array_equal(c.x_val.numpy(), vals[stem][0]) and c.y_val.tolist() == vals[stem][1].tolist()


def test_npz_without_val_is_split_like_digits(tmp_path):
    npz_dir(tmp_path, val=False)
    fd, old = load(name=f"npz-dir:{tmp_path}"), load(name=f"npz-dir:{tmp_path}", val_fraction=0)
    assert fd.details["val_split"] in ("stratified", "mixed", "random")
    assert [fd.client(i).num_val for i in range(2)] == [3, 2]
    for i in range(2):
        c, o = fd.client(i), old.client(i)
        assert rows(c.x_train, c.y_train) + rows(c.x_val, c.y_val) == rows(o.x_train, o.y_train)  # type: ignore[arg-type]


@pytest.mark.parametrize("val_files", [False, True])
@pytest.mark.parametrize("seed", [0, 5])
def test_a_deployed_npz_node_holds_the_same_splits_as_the_simulation(tmp_path, val_files, seed):
    """load_npz_client (a SuperNode with only its own files) draws the validation rows load_federated draws."""
    from fedarena.data.npz import load_npz_client

    npz_dir(tmp_path, val=val_files)
    fd = load(seed, name=f"npz-dir:{tmp_path}")
    for i, stem in enumerate(fd.client_ids):
        node, _ = load_npz_client(tmp_path, stem, min_train=5, min_test=2, val_fraction=0.15, seed=seed)
        sim = fd.client(i)
        assert node.num_val == sim.num_val > 0
        for key in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            assert torch.equal(getattr(node, key), getattr(sim, key)), key


BAD_VAL = {
    "missing val file": (lambda r: (r / "val" / "b.npz").unlink(), "client 'b' has no val/b.npz"),
    "unknown client": (lambda r: write(r, "val", "z", np.zeros((2, 3)), np.zeros(2, dtype=np.int64)),
                       "val/z.npz names no client"),
    "shape differs": (lambda r: write(r, "val", "a", np.zeros((2, 4)), np.zeros(2, dtype=np.int64)),
                      "val/a.npz: per-sample shape of 'x' is (4,)"),
    "length mismatch": (lambda r: write(r, "val", "a", np.zeros((2, 3)), np.zeros(3, dtype=np.int64)),
                        "val/a.npz: 'x' has 2 samples but 'y' has 3"),
    "nan": (lambda r: write(r, "val", "b", np.full((2, 3), np.nan), np.zeros(2, dtype=np.int64)),
            "val/b.npz: array 'x' contains NaN"),
    "label out of range": (lambda r: write(r, "val", "a", np.zeros((2, 3)), np.array([0, 3])),
                           "val/a.npz: label 3 is outside the 3 classes"),
    "negative label": (lambda r: write(r, "val", "a", np.zeros((2, 3)), np.array([0, -1])),
                       "val/a.npz: labels 'y' must be >= 0"),
    "object dtype": (lambda r: write(r, "val", "a", np.array([[1], ["s"]], dtype=object), np.zeros(2, dtype=np.int64)),
                     "val/a.npz: array 'x' has object dtype"),
    "not an npz": (lambda r: (r / "val" / "a.npz").write_text("hello"), "val/a.npz: not a readable .npz"),
    "empty val folder": (lambda r: [p.unlink() for p in (r / "val").iterdir()], "client 'a' has no val/a.npz"),
}


@pytest.mark.parametrize("case", sorted(BAD_VAL))
def test_npz_bad_val_files_are_refused_naming_the_file(tmp_path, case):
    npz_dir(tmp_path)
    corrupt, expected = BAD_VAL[case]
    corrupt(tmp_path)
    with pytest.raises(FedarenaError) as err:
        load(name=f"npz-dir:{tmp_path}")
    assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert load(name=f"npz-dir:{tmp_path}", val_fraction=0).x_val is None  # 0: no validation split, val/ unread


# ---------------------------------------------------------------- the key


def test_val_fraction_key_through_config_and_set():
    assert cfg.build(None, {"data": {"val_fraction": 0.3}}, []).data.val_fraction == 0.3
    assert cfg.build(None, {}, ["data.val_fraction=0"]).data.val_fraction == 0
    assert cfg.build(None, {}, []).data.val_fraction == 0.15
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(FedarenaError, match=r"data.val_fraction must be in \[0, 1\)"):
            DataConfig(val_fraction=bad).validate()


def test_cli_refuses_val_fraction_out_of_range_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["compare", "--set", "data.val_fraction=1.5", "--rounds", "1", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "data.val_fraction" in result.output and "Traceback" not in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []
