"""--data hf:NAME: small local datasets in each recipe's schema (FEMNIST, Shakespeare, Sentiment140, Speech
Commands, Fed-ISIC2019) run end to end offline; the partitions; bad input exits 2 naming the column and writes
nothing; a Hub dataset that is not cached is refused on one line without touching the network."""

from __future__ import annotations

import io
import json
import os
import re
import time
import wave

import datasets
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fedarena import config as cfg
from fedarena.cli import app
from fedarena.core.types import FedarenaError
from fedarena.data import DataConfig, load_federated, summarize
from fedarena.data.hf import Columns, load_hf, log_mel, mel_filterbank, offline
from fedarena.data.shakespeare import VOCAB, read_text

RNG = np.random.default_rng(0)


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def png(a: np.ndarray) -> dict:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def wav(samples: np.ndarray, rate: int = 16_000) -> dict:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((samples * 32767).astype("<i2").tobytes())
    return {"bytes": buf.getvalue(), "path": None}


def femnist(path, writers: int = 4, per_writer: int = 12, size: int = 8):
    """flwrlabs/femnist's schema: image (28x28 grayscale there, `size` here), writer_id, hsf_id, character."""
    rows: dict[str, list] = {"image": [], "writer_id": [], "hsf_id": [], "character": []}
    for w in range(writers):
        for _ in range(per_writer):
            rows["image"].append(png(RNG.integers(0, 256, (size, size), dtype=np.uint8)))
            rows["writer_id"].append(f"f{w:04d}_{w % 7:02d}")
            rows["hsf_id"].append(w % 4)
            rows["character"].append(int(RNG.integers(0, 62)))
    features = datasets.Features({"image": datasets.Image(), "writer_id": datasets.Value("string"),
                                  "hsf_id": datasets.Value("int64"), "character": datasets.ClassLabel(num_classes=62)})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


def shakespeare(path, roles: int = 3, per_role: int = 20):
    """flwrlabs/shakespeare's schema: character_id, x (80 characters), y (the next character)."""
    text = read_text()[:200_000]
    rows: dict[str, list] = {"character_id": [], "x": [], "y": []}
    for r in range(roles):
        for i in range(per_role):
            start = 1000 * r + 81 * i
            rows["character_id"].append(f"PLAY_ROLE{r}")
            rows["x"].append(text[start:start + 80])
            rows["y"].append(text[start + 80])
    datasets.Dataset.from_dict(rows).to_parquet(str(path))
    return path


WORDS = "good bad happy sad love hate great awful fun boring".split()


def sentiment140(path):
    """Sentiment140's schema (stanfordnlp/sentiment140): text, date, user, sentiment (0 negative, 4 positive),
    query; two users tweet once (dropped: too few for a train and a test split)."""
    rows: dict[str, list] = {"text": [], "date": [], "user": [], "sentiment": [], "query": []}
    for u, count in enumerate([10, 12, 9, 1, 1]):
        for _ in range(count):
            positive = bool(RNG.integers(0, 2))
            words = RNG.choice(WORDS[0::2] if positive else WORDS[1::2], 4)
            rows["text"].append(f"@friend {' '.join(words)}!")
            rows["date"].append("Mon Apr 06 22:19:45 PDT 2009")
            rows["user"].append(f"user{u}")
            rows["sentiment"].append(4 if positive else 0)
            rows["query"].append("NO_QUERY")
    datasets.Dataset.from_dict(rows).to_parquet(str(path))
    return path


def speech_commands(path):
    """google/speech_commands' schema: file, audio (16 kHz WAV), label (ClassLabel), is_unknown, speaker_id
    (None for background noise), utterance_id; saved with save_to_disk."""
    names = ["yes", "no", "up", "down", "_silence_"]
    rows: dict[str, list] = {"file": [], "audio": [], "label": [], "is_unknown": [], "speaker_id": [],
                             "utterance_id": []}
    t = np.arange(16_000) / 16_000
    for s in range(3):
        for i in range(8):
            label = i % 4
            rows["audio"].append(wav(0.3 * np.sin(2 * np.pi * (300 + 200 * label) * t[: 12_000 + 400 * i])))
            rows["file"].append(f"{names[label]}/{s:08x}_nohash_{i}.wav")
            rows["label"].append(label)
            rows["is_unknown"].append(False)
            rows["speaker_id"].append(f"{s:08x}")
            rows["utterance_id"].append(i)
    rows["audio"].append(wav(0.01 * RNG.standard_normal(16_000)))
    rows["file"].append("_silence_/noise.wav")
    rows["label"].append(4)
    rows["is_unknown"].append(False)
    rows["speaker_id"].append(None)
    rows["utterance_id"].append(0)
    ds = datasets.Dataset.from_dict(rows)  # the Audio type by a cast: encoding WAV bytes would need torchcodec
    ds = ds.cast_column("audio", datasets.Audio(sampling_rate=16_000)).cast_column("label", datasets.ClassLabel(names=names))
    ds.save_to_disk(str(path))
    return path


def fed_isic(path):
    """Fed-ISIC2019's schema (FLamby; flwrlabs/fed-isic2019): image (RGB dermoscopy, sizes differ), label (8
    diagnoses), center (the hospital, 0..5)."""
    rows: dict[str, list] = {"image": [], "label": [], "center": []}
    for center in range(3):
        for i in range(10):
            h, w = 10 + i % 3, 12 + center
            rows["image"].append(png(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)))
            rows["label"].append(int(RNG.integers(0, 8)))
            rows["center"].append(center)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=8),
                                  "center": datasets.Value("int64")})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


def compare(tmp_path, data: str, sets: list[str], *flags: object, algorithms: str = "fedavg,local"):
    out = tmp_path / "run"
    result = invoke("compare", "--data", data, "--rounds", "1", "--algorithms", algorithms, "--seed", "1",
                    *flags, *[a for s in sets for a in ("--set", s)], "--out", out)
    return result, out


def summary_of(result, out) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())


# ---------------------------------------------------------------- the recipes, end to end


def test_femnist_recipe_by_writer_with_the_cnn(tmp_path, one_torch_thread):
    files = femnist(tmp_path / "femnist.parquet")
    result, out = compare(tmp_path, "hf:parquet", [f"data.files={files}", "data.partition_by=writer_id"],
                          "--model", "cnn")
    s = summary_of(result, out)
    assert s["dataset"]["num_clients"] == 4
    het = s["dataset"]["heterogeneity"]
    assert s["dataset"]["client_ids"] == ["f0000_00", "f0001_01", "f0002_02", "f0003_03"]
    assert het["num_classes"] == 62 and len(het["label_counts"]) == 4
    assert het["details"]["label"] == "character" and het["details"]["features"] == "image"
    fd = load_hf("hf:parquet", Columns(files=str(files), partition_by="writer_id"), seed=1)
    assert fd.client_ids == ("f0000_00", "f0001_01", "f0002_02", "f0003_03")
    assert fd.x_train.shape[1:] == (1, 8, 8) and 0 <= float(fd.x_train.min()) and float(fd.x_train.max()) <= 1


@pytest.mark.skipif("lstm" not in cfg.MODELS, reason="the lstm model is not there yet")
def test_shakespeare_recipe_by_character_with_the_lstm(tmp_path, one_torch_thread):
    files = shakespeare(tmp_path / "shakespeare.parquet")
    result, out = compare(tmp_path, "hf:parquet", [f"data.files={files}", "data.partition_by=character_id",
                                                   "data.seq_len=8", "model.hidden=8"], "--model", "lstm")
    s = summary_of(result, out)
    assert s["dataset"]["num_clients"] == 3


def test_shakespeare_schema_reads_characters_in_leafs_vocabulary(tmp_path):
    files = shakespeare(tmp_path / "shakespeare.parquet")
    fd = load_hf("hf:parquet", Columns(files=str(files), partition_by="character_id"), seed=0)
    assert fd.num_classes == len(VOCAB) == 80 and fd.x_train.dtype.is_floating_point is False
    assert fd.x_train.shape[1:] == (80,) and fd.client_ids == ("PLAY_ROLE0", "PLAY_ROLE1", "PLAY_ROLE2")
    text = read_text()
    first = "".join(VOCAB[int(c)] for c in fd.x_train[0])
    assert first in text and VOCAB[int(fd.y_train[0])] == text[text.index(first) + 80]


def test_sentiment140_recipe_by_user_bag_of_words_mlp(tmp_path, one_torch_thread):
    files = sentiment140(tmp_path / "sent140.parquet")
    result, out = compare(tmp_path, "hf:parquet", [f"data.files={files}", "data.partition_by=user", "data.tokens=bow",
                                                   "model.hidden=16"], "--model", "mlp")
    s = summary_of(result, out)
    assert s["dataset"]["num_clients"] == 3  # the two one-tweet users are dropped
    fd = load_hf("hf:parquet", Columns(files=str(files), partition_by="user", tokens="bow"), seed=1)
    assert fd.details["label_mapping"] == {"0": 0, "4": 1} and fd.details["dropped_clients"] == 2
    assert fd.details["label"] == "sentiment" and fd.details["vocabulary_size"] == len(WORDS) + 3  # + friend, pad, unk
    assert np.allclose(fd.x_train.sum(dim=1).numpy(), 1.0)


def test_speech_commands_recipe_by_speaker_log_mel(tmp_path, one_torch_thread):
    path = speech_commands(tmp_path / "speech")
    result, out = compare(tmp_path, "hf:disk", [f"data.files={path}", "data.partition_by=speaker_id"], "--model", "mlr")
    s = summary_of(result, out)
    assert s["dataset"]["num_clients"] == 3
    fd = load_hf("hf:disk", Columns(files=str(path), partition_by="speaker_id"), seed=1)
    assert fd.x_train.shape[1:] == (1, 40, 101) and fd.details["rows_without_id"] == 1
    assert fd.num_classes == 5 and fd.details["label_mapping"]["_silence_"] == 4


def test_fed_isic2019_recipe_by_center_resized_cnn(tmp_path, one_torch_thread):
    files = fed_isic(tmp_path / "isic.parquet")
    result, out = compare(tmp_path, "hf:parquet", [f"data.files={files}", "data.partition_by=center",
                                                   "data.image_size=8"], "--model", "cnn")
    s = summary_of(result, out)
    assert s["dataset"]["num_clients"] == 3
    fd = load_hf("hf:parquet", Columns(files=str(files), partition_by="center", image_size=8), seed=1)
    assert fd.x_train.shape[1:] == (3, 8, 8) and fd.client_ids == ("0", "1", "2")


# ---------------------------------------------------------------- builders, partitions, features


def test_csv_and_json_scalar_columns(tmp_path):
    n = 60
    table = {"a": RNG.standard_normal(n), "b": RNG.standard_normal(n), "device": [f"d{i % 3}" for i in range(n)],
             "label": ["walk", "run", "sit"] * (n // 3)}
    datasets.Dataset.from_dict(table).to_csv(str(tmp_path / "t.csv"), index=False)
    datasets.Dataset.from_dict(table).to_json(str(tmp_path / "t.jsonl"))
    a = load_hf("hf:csv", Columns(files=str(tmp_path / "t.csv"), partition_by="device"), seed=0)
    b = load_hf("hf:json", Columns(files=str(tmp_path / "t.jsonl"), partition_by="device", features="a,b"), seed=0)
    assert a.x_train.shape[1:] == (2,) and a.details["features"] == "a,b"
    assert a.details["label_mapping"] == {"run": 0, "sit": 1, "walk": 2}
    assert np.allclose(a.x_train.numpy(), b.x_train.numpy(), atol=1e-6) and a.client_ids == ("d0", "d1", "d2")


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "shards", "quantity", "feature"])
def test_partitions_are_seeded_and_cover_every_row(tmp_path, partition):
    files = femnist(tmp_path / "f.parquet", writers=6, per_writer=20)
    def load(seed):
        return load_hf("hf:parquet", Columns(files=str(files)), partition=partition, num_clients=4, alpha=0.5,
                       shards_per_client=2, seed=seed)
    a, b, c = load(3), load(3), load(4)
    assert a.num_clients == 4 and a.train_offsets[-1] + a.test_offsets[-1] <= 120
    assert a.train_offsets == b.train_offsets and bool((a.x_train == b.x_train).all())
    assert not (a.train_offsets == c.train_offsets and bool((a.x_train == c.x_train).all()))
    if partition in ("iid", "dirichlet", "quantity", "feature"):
        assert a.train_offsets[-1] + a.test_offsets[-1] == 120
    assert summarize(a)["num_clients"] == 4


def test_natural_num_clients_keeps_the_largest(tmp_path):
    table = {"x": list(RNG.standard_normal(44)), "y": [0, 1] * 22, "id": ["a"] * 8 + ["b"] * 20 + ["c"] * 16}
    datasets.Dataset.from_dict(table).to_parquet(str(tmp_path / "t.parquet"))
    fd = load_hf("hf:parquet", Columns(files=str(tmp_path / "t.parquet"), partition_by="id", features="x"),
                 num_clients=2)
    assert fd.client_ids == ("b", "c")
    with pytest.raises(FedarenaError, match=r"data.num_clients \(4\) exceeds the 3 clients"):
        load_hf("hf:parquet", Columns(files=str(tmp_path / "t.parquet"), partition_by="id", features="x"),
                num_clients=4)


@pytest.mark.parametrize("tokens", ["char", "word"])
def test_next_token_windows_of_a_text_column(tmp_path, tokens):
    text = read_text()[:20_000].split("\n\n")
    table = {"text": text, "speaker": [f"s{i % 2}" for i in range(len(text))]}
    datasets.Dataset.from_dict(table).to_parquet(str(tmp_path / "t.parquet"))
    fd = load_hf("hf:parquet", Columns(files=str(tmp_path / "t.parquet"), partition_by="speaker", tokens=tokens,
                                       seq_len=10, vocab_size=50), seed=0)
    assert fd.details["label"] == "next" and fd.x_train.shape[1:] == (10,)
    assert fd.num_classes == (80 if tokens == "char" else 52) and int(fd.y_train.max()) < fd.num_classes
    assert fd.client_ids == ("s0", "s1")


def test_load_federated_dispatches_hf_and_npz_dir_gets_the_summary(tmp_path):
    files = femnist(tmp_path / "f.parquet")
    spec = cfg.build(None, {"data": {"name": "hf:parquet"}}, [f"data.files={files}", "data.partition_by=writer_id"]).data
    assert spec.num_clients is None and spec.resolved_partition() == "natural"
    fd = load_federated(spec, seed=0)
    h = summarize(fd)
    assert h["num_clients"] == 4 and len(h["train_sizes"]) == 4 and 1 <= h["effective_classes_mean"] <= 62
    json.dumps(h)
    root = tmp_path / "npz"
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for c in range(3):
            np.savez(root / split / f"{c}.npz", x=RNG.standard_normal((6, 4)).astype(np.float32),
                     y=np.arange(6) % (c + 2))
    h = summarize(load_federated(DataConfig(name=f"npz-dir:{root}"), seed=0))
    assert h["num_clients"] == 3 and h["num_classes"] == 4 and h["effective_classes_mean"] > 1
    assert "files" not in cfg.to_tree(cfg.build(None, {}, []))["data"]  # other data: config.toml as it was


def test_log_mel_of_a_tone_peaks_at_its_band():
    fb = mel_filterbank()
    assert fb.shape == (40, 257) and float(fb.max()) <= 1
    t = np.arange(16_000) / 16_000
    feats = log_mel(np.stack([np.sin(2 * np.pi * 1000 * t)]).astype(np.float32))
    assert feats.shape == (1, 1, 40, 101)
    peak = int(feats[0, 0, :, 50].argmax())
    centre_hz = 700 * (10 ** (np.linspace(0, 2595 * np.log10(1 + 8000 / 700), 42)[1:-1] / 2595) - 1)
    assert abs(centre_hz[peak] - 1000) < 200


# ---------------------------------------------------------------- bad input: exit 2, nothing written


def bad_table(tmp_path, **change) -> str:
    table = {"x": [[1.0, 2.0]] * 30, "label": [0, 1, 2] * 10, "user": ["u1", "u2", "u3"] * 10} | change
    datasets.Dataset.from_dict(table).to_parquet(str(tmp_path / "bad.parquet"))
    return str(tmp_path / "bad.parquet")


@pytest.mark.parametrize(("change", "sets", "message"), [
    ({}, ["data.label=grade"], r"bad.parquet: no column 'grade' \(data.label\); columns: x, label, user"),
    ({}, ["data.features=pixels"], r"no column 'pixels' \(data.features\)"),
    ({}, ["data.partition_by=writer"], r"no column 'writer' \(data.partition_by\)"),
    ({"label": [0.5, 1.0, 2.0] * 10}, [], r"label column 'label' must hold integers, got 0.5 at row 0"),
    ({"x": [[1.0, float("nan")]] + [[1.0, 2.0]] * 29}, [], r"column 'x' has NaN or infinite values \(row 0\)"),
    ({"x": [[1.0, float("inf")]] * 30}, [], r"column 'x' has NaN or infinite values"),
    ({"x": [[1.0, 2.0, 3.0]] + [[1.0, 2.0]] * 29}, [], r"column 'x': row \d+ has shape \(\d,\) but row \d+ has"),
    ({"label": [0, 1, None] * 10}, [], r"label column 'label' has 10 missing values"),
    ({}, ["data.min_train=20"], r"no client has the 22 samples"),
])
def test_bad_input_exits_2_naming_the_column(tmp_path, change, sets, message):
    files = bad_table(tmp_path, **change)
    sets = [f"data.files={files}", "data.partition_by=user", *sets]
    if "data.partition_by=writer" in sets:
        sets.remove("data.partition_by=user")
    result, out = compare(tmp_path, "hf:parquet", sets, "--model", "mlr", algorithms="fedavg")
    assert result.exit_code == 2, result.output
    assert re.search(message, " ".join(result.output.split())), result.output
    assert not out.exists()


def test_class_label_out_of_range_and_an_empty_client_are_refused(tmp_path):
    table = datasets.Dataset.from_dict({"x": [[1.0]] * 12, "label": [0, 1, -1] * 4},
                                       features=datasets.Features({"x": datasets.Sequence(datasets.Value("float32")),
                                                                   "label": datasets.ClassLabel(num_classes=3)}))
    table.to_parquet(str(tmp_path / "c.parquet"))
    with pytest.raises(FedarenaError, match=r"'label' \(ClassLabel of 3 classes\) has value -1 out of range"):
        load_hf("hf:parquet", Columns(files=str(tmp_path / "c.parquet")), partition="iid", num_clients=2)
    files = bad_table(tmp_path)
    with pytest.raises(FedarenaError, match="cannot give each of 5 clients"):
        load_hf("hf:parquet", Columns(files=files), partition="iid", num_clients=5)


@pytest.mark.parametrize(("data", "sets", "message"), [
    ("hf:parquet", [], "hf:parquet reads local files: set data.files"),
    ("hf:parquet", ["data.files=/nonexistent/x.parquet"], "data.files: /nonexistent/x.parquet does not exist"),
    ("hf:csv", ["data.files=/nonexistent/*.csv"], "data.files: no file matches"),
    ("hf:parquet", ["data.files=FILES", "data.tokens=bpe"], "unknown data.tokens 'bpe'; valid: char, word, bow"),
    ("hf:parquet", ["data.files=FILES", "data.image_size=-1"], "data.image_size must be >= 0"),
    ("hf:flwrlabs/femnist", ["data.files=x"], "data.files is for hf:parquet"),
    ("digits", ["data.partition_by=user"], "data.partition_by is read for hf:NAME data only"),
    ("hf:parquet", ["data.files=FILES", "data.label=next"], "data.label=next .* needs a text feature"),
])
def test_bad_keys_exit_2_naming_the_key(tmp_path, data, sets, message):
    files = bad_table(tmp_path)
    sets = [s.replace("FILES", files) for s in sets]
    result, out = compare(tmp_path, data, sets, "--model", "mlr", algorithms="fedavg")
    assert result.exit_code == 2, result.output
    assert re.search(message, " ".join(result.output.split())), result.output
    assert not out.exists()


def test_a_hub_dataset_not_cached_is_refused_on_one_line_offline(tmp_path, monkeypatch):
    seen = {}
    real = datasets.load_dataset

    def spy(*args, **kwargs):
        seen["env"] = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("HF_DATASETS_OFFLINE"))
        seen["config"] = datasets.config.HF_HUB_OFFLINE
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    before = (os.environ.get("HF_HUB_OFFLINE"), datasets.config.HF_HUB_OFFLINE)
    start = time.monotonic()
    result, out = compare(tmp_path, "hf:flwrlabs/femnist-not-cached", [], "--model", "cnn", algorithms="fedavg")
    assert time.monotonic() - start < 60
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    assert "not in the local Hugging Face cache" in line and "save_to_disk" in line and "data.files=DIR" in line
    assert len(result.output.strip().splitlines()) == 1
    assert seen == {"env": ("1", "1"), "config": True} and not out.exists()
    assert (os.environ.get("HF_HUB_OFFLINE"), datasets.config.HF_HUB_OFFLINE) == before  # restored
    with offline():
        assert datasets.config.HF_HUB_OFFLINE is True


@pytest.mark.parametrize("rows, columns, message", [
    ({"audio": [wav(np.zeros(100))] * 5 + [{"bytes": b"", "path": None}], "label": [0, 1] * 3},
     {}, "column 'audio' row 5 holds no audio (neither bytes nor a path)"),  # [AttributeError: NoneType.read]
    ({"text": ["good fun"] * 5 + [None], "label": [0, 1] * 3}, {"tokens": "word"},
     "column 'text' has 1 missing values"),  # [AttributeError: NoneType.lower, building the word vocabulary]
    ({"text": ["good fun"] * 5 + [None], "label": [0, 1] * 3}, {"tokens": "bow"}, "column 'text' has 1 missing values"),
])
def test_rows_without_a_value_are_refused_naming_the_column(tmp_path, rows, columns, message):
    """Found by fuzzing (tests/fuzz/test_fuzz_loaders.py): an audio struct with neither bytes nor a path, and a
    missing text under word or bag-of-words tokens, escaped as AttributeError."""
    files = tmp_path / "data.parquet"
    datasets.Dataset.from_dict(rows).to_parquet(str(files))
    with pytest.raises(FedarenaError, match=re.escape(message)):
        load_hf("hf:parquet", Columns(files=str(files), **columns), partition="iid", num_clients=2, min_train=1,
                min_test=1, seed=0)
