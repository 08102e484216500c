"""--data shakespeare: the embedded text, its turns and roles, the windows and their split, --clients, the
[shakespeare] keys and data.num_clients left unset."""

from __future__ import annotations

import hashlib
import json
import lzma
import re
from dataclasses import replace
from importlib import resources

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedarena import config as cfg
from fedarena.cli import app
from fedarena.core.types import FedarenaError
from fedarena.data import load_federated, summarize
from fedarena.data import shakespeare as shk
from fedarena.data.spec import DataConfig, ShakespeareConfig

DEFAULT_CLIENTS = 98  # roles with >= 20 turns that have speech (SAMPSON has 20 speaker lines, one of them empty)
DEFAULT_TRAIN, DEFAULT_TEST = 8366, 2755  # 11,121 windows of 80 characters, stride 80 (train: with validation)
DEFAULT_VAL = 1256  # the last round(0.15 * n) train windows of each role (data.val_fraction 0.15)

SMALL = """ALICE:
Hello there, my friend, and welcome to this place
where the long lines run on and on.

BOB:
Good day.

ALICE:
Another speech of hers, long enough
to give us a few more windows of text.

CAROL:

BOB:
Good night, then.
And farewell.

ALICE:
The third and last turn of Alice: it closes the play.
"""


def small(**data: object) -> DataConfig:
    return DataConfig(name="shakespeare", **data)  # type: ignore[arg-type]


def decode(codes: np.ndarray) -> str:
    return "".join(shk.VOCAB[int(c)] for c in codes)


@pytest.fixture(scope="module")
def default():
    return load_federated(small(), seed=0)


# ---------------------------------------------------------------- parsing a small inline text


def test_parse_turns_and_roles_of_a_small_text():
    turns = shk.parse_turns(SMALL)
    assert [s for s, _ in turns] == ["ALICE", "BOB", "ALICE", "BOB", "ALICE"]  # CAROL's empty turn is no turn
    assert turns[3][1] == "Good night, then.\nAnd farewell.\n"
    roles = shk.parse_roles(SMALL)
    assert [(r.name, r.turns) for r in roles] == [("ALICE", 3), ("BOB", 2)]
    assert roles[1].text == "Good day.\nGood night, then.\nAnd farewell.\n"
    assert roles[0].text.startswith("Hello there") and roles[0].text.endswith("closes the play.\n")


def test_a_block_without_a_speaker_line_is_refused_naming_the_line():
    with pytest.raises(FedarenaError, match=r"line 4: expected a speaker line 'NAME:'"):
        shk.parse_turns("ALICE:\nHello.\n\nno speaker here\n")


def test_client_ids_are_safe_file_names_unique_ignoring_case():
    names = ["First Citizen", "ROMEO", "Romeo", "Senators, &C", "a/b", "..", "First_Citizen"]
    assert shk.client_ids(names) == ("First_Citizen", "ROMEO", "Romeo_2", "Senators_C", "a_b", "role",
                                     "First_Citizen_2")


def test_windows_labels_and_split_of_a_small_text():
    s = ShakespeareConfig(min_turns=2, stride=7, seq_len=10)
    spec = small(min_train=1, min_test=1, test_fraction=0.3)
    fd = shk.load_shakespeare(spec, s, text=SMALL)
    roles = {r.name: r for r in shk.parse_roles(SMALL)}
    assert fd.client_ids == ("ALICE", "BOB") and fd.num_classes == 80 and fd.input_shape == (10,)
    for i, name in enumerate(fd.client_ids):
        text = roles[name].text
        cut = shk.split_point(len(text), 0.3)
        c = fd.client(i)
        train = range(0, cut - 10, 7)
        test = range(cut, len(text) - 10, 7)
        assert c.num_train == len(train) and c.num_test == len(test)
        for rows, ys, starts in ((c.x_train, c.y_train, train), (c.x_test, c.y_test, test)):
            for row, y, start in zip(rows.numpy(), ys.numpy(), starts):
                assert decode(row) == text[start : start + 10] and shk.VOCAB[int(y)] == text[start + 10]
        # the test text comes after the train text, and no train window or label reaches it
        assert train[-1] + 10 < cut <= test[0]


def test_unknown_characters_read_as_a_space_and_the_vocabulary_is_leafs():
    assert len(shk.VOCAB) == len(set(shk.VOCAB)) == 80
    assert decode(shk.encode("a$b\n\u00e9")) == "a b\n "


# ---------------------------------------------------------------- the embedded text


def test_the_embedded_file_is_the_checked_text_and_has_its_notice():
    files = resources.files("fedarena.data").joinpath("files")
    raw = lzma.decompress(files.joinpath(shk.TEXT_FILE).read_bytes())
    assert hashlib.sha256(raw).hexdigest() == shk.TEXT_SHA256 and len(raw) == 1_115_394
    assert shk.read_text() == raw.decode("utf-8")
    notice = files.joinpath("NOTICE-tinyshakespeare.md").read_text()
    assert shk.TEXT_SHA256 in notice and "char-rnn" in notice and "public domain" in notice


def test_a_checksum_mismatch_is_refused(monkeypatch):
    monkeypatch.setattr(shk, "TEXT_SHA256", "0" * 64)
    shk._embedded_text.cache_clear()
    try:
        with pytest.raises(FedarenaError, match="sha256 .* expected 0000"):
            shk.read_text()
    finally:
        monkeypatch.undo()
        shk._embedded_text.cache_clear()
    assert shk.read_text()


def test_default_clients_and_windows(default):
    assert default.num_clients == DEFAULT_CLIENTS and len(set(default.client_ids)) == DEFAULT_CLIENTS
    assert default.y_train.shape[0] + default.y_val.shape[0] == DEFAULT_TRAIN
    assert default.y_val.shape[0] == DEFAULT_VAL and default.y_test.shape[0] == DEFAULT_TEST
    assert default.details["val_split"] == "position" and default.details["val_fraction"] == 0.15
    assert default.x_train.dtype == default.y_train.dtype == default.x_test.dtype == torch.int64
    assert default.input_shape == (80,) and default.num_classes == 80 and default.partition == "natural"
    assert default.client_ids[:3] == ("First_Citizen", "Second_Citizen", "MENENIUS")  # order of the first turn
    assert default.details["qualifying_roles"] == DEFAULT_CLIENTS
    assert int(default.x_train.max()) < 80 and int(default.y_train.min()) >= 0


def test_embedded_windows_match_the_raw_text(default):
    roles = {r.name: r for r in shk.parse_roles(shk.read_text())}
    i = default.client_ids.index("ROMEO")
    text = roles["ROMEO"].text
    cut = shk.split_point(len(text), 0.25)
    c = default.client(i)
    assert c.num_train + c.num_val == len(range(0, cut - 80, 80)) and c.num_test == len(range(cut, len(text) - 80, 80))
    assert c.num_val == round(0.15 * (c.num_train + c.num_val)) and c.x_val is not None and c.y_val is not None
    for k in (0, 7, c.num_train - 1):
        assert decode(c.x_train[k].numpy()) == text[80 * k : 80 * k + 80]
        assert shk.VOCAB[int(c.y_train[k])] == text[80 * k + 80]
    for k in (0, c.num_val - 1):  # validation: the train text's last windows, after every train window
        start = 80 * (c.num_train + k)
        assert decode(c.x_val[k].numpy()) == text[start : start + 80]
        assert shk.VOCAB[int(c.y_val[k])] == text[start + 80]
    for k in (0, c.num_test - 1):
        start = cut + 80 * k
        assert decode(c.x_test[k].numpy()) == text[start : start + 80]
        assert shk.VOCAB[int(c.y_test[k])] == text[start + 80]


def test_heterogeneity_summary_reads_next_character_distributions(default):
    h = summarize(default)
    json.dumps(h)
    assert np.array(h["label_counts"]).shape == (DEFAULT_CLIENTS, 80)
    assert sum(h["train_sizes"]) == DEFAULT_TRAIN - DEFAULT_VAL and 1 < h["effective_classes_mean"] < 80
    assert 0 < h["js_divergence_mean"] < 1


def test_clients_k_takes_the_roles_with_most_text_in_text_order(default):
    five = load_federated(small(num_clients=5), seed=0)
    sizes = {cid: default.client(i).num_train + default.client(i).num_val + default.client(i).num_test
             for i, cid in enumerate(default.client_ids)}
    biggest = sorted(sizes, key=lambda c: -sizes[c])[:5]
    assert set(five.client_ids) == set(biggest)
    assert list(five.client_ids) == [c for c in default.client_ids if c in biggest]
    i, j = five.client_ids.index("CORIOLANUS"), default.client_ids.index("CORIOLANUS")
    assert np.array_equal(five.client(i).x_train.numpy(), default.client(j).x_train.numpy())
    every = load_federated(small(num_clients=DEFAULT_CLIENTS), seed=0)
    assert every.client_ids == default.client_ids and every.train_offsets == default.train_offsets
    with pytest.raises(FedarenaError, match=r"data.num_clients \(99\) exceeds the 98 shakespeare roles"):
        load_federated(small(num_clients=99), seed=0)


def test_deterministic_and_the_same_for_every_seed(default):
    shk._embedded_roles.cache_clear()
    again = load_federated(small(), seed=5)
    assert again.client_ids == default.client_ids
    for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert np.array_equal(getattr(again, f).numpy(), getattr(default, f).numpy())


def test_keys_change_the_clients_and_windows():
    fd = load_federated(small(), seed=0, shakespeare=ShakespeareConfig(min_turns=100, stride=160, seq_len=40))
    assert fd.input_shape == (40,) and 0 < fd.num_clients < DEFAULT_CLIENTS
    assert fd.details["min_turns"] == 100 and fd.details["stride"] == 160


# ---------------------------------------------------------------- config, CLI


def test_num_clients_unset_resolves_to_the_datasets_default():
    assert cfg.build(None, {}, []).data.num_clients == 20
    assert cfg.build(None, {"data": {"name": "synthetic"}}, []).data.num_clients == 20
    assert cfg.Config().data.num_clients is None
    conf = cfg.build(None, {"data": {"name": "shakespeare"}}, [])
    assert conf.data.num_clients == DEFAULT_CLIENTS and conf.data.partition == "natural"
    assert cfg.to_tree(conf)["shakespeare"] == {"min_turns": 20, "stride": 80, "seq_len": 80}
    assert cfg.build(None, {"data": {"name": "shakespeare"}}, ["shakespeare.min_turns=100"]).data.num_clients < 98
    assert "shakespeare" not in cfg.to_tree(cfg.build(None, {}, []))  # other data: config.toml as it was
    # a config built without `build` resolves at load time (as train.clients_per_round does)
    unresolved = replace(cfg.Config(), data=small())
    assert cfg.with_clients_per_round(unresolved, 98).data.num_clients == 98
    assert cfg.with_clients_per_round(cfg.Config(), 20).data.num_clients == 20


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(("flags", "message"), [
    (["--set", "shakespeare.min_turns=0"], "shakespeare.min_turns must be >= 1"),
    (["--set", "shakespeare.stride=0"], "shakespeare.stride must be >= 1"),
    (["--set", "shakespeare.seq_len=0"], "shakespeare.seq_len must be in"),
    (["--set", "shakespeare.stride=x"], "shakespeare.stride: expected an integer"),
    (["--set", "shakespeare.turns=3"], "unknown config key 'shakespeare.turns'"),
    (["--clients", "0"], "data.num_clients must be >= 1"),
    (["--clients", "500"], r"data.num_clients \(500\) exceeds the 98 shakespeare roles"),
    (["--partition", "iid"], "cannot be used with shakespeare"),
    (["--model", "mlp"], "use --model lstm"),
    (["--model", "cnn", "--clients", "3"], "use --model lstm"),
])
def test_bad_values_exit_2_naming_the_key(tmp_path, flags, message):
    out = tmp_path / "run"
    result = invoke("compare", "--data", "shakespeare", "--rounds", "1", "--algorithms", "fedavg", *flags, "--out", out)
    assert result.exit_code == 2, result.output
    assert re.search(message, " ".join(result.output.split())), result.output
    assert not (out / "summary.json").exists()


def test_list_shows_the_dataset():
    result = invoke("list")
    assert result.exit_code == 0 and "shakespeare" in result.output


@pytest.mark.skipif("lstm" not in cfg.MODELS, reason="the lstm model is not there yet")
def test_compare_without_clients_records_every_role(tmp_path, one_torch_thread):
    out = tmp_path / "run"
    sets = ["shakespeare.stride=800", "shakespeare.seq_len=20", "data.min_train=1", "data.min_test=1"]
    result = invoke("compare", "--data", "shakespeare", "--model", "lstm", "--rounds", "1", "--algorithms", "fedavg",
                    "--clients-per-round", "2", *[a for s in sets for a in ("--set", s)], "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    expected = cfg.build(None, {"data": {"name": "shakespeare"}}, sets).data.num_clients
    assert summary["dataset"]["num_clients"] == summary["config"]["data"]["num_clients"] == expected
    assert f"num_clients = {expected}" in (out / "config.toml").read_text()
