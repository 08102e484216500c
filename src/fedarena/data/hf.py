"""``hf:NAME[:CONFIG]``: data read through Hugging Face ``datasets``, split among clients by Flower Datasets'
partitioners (``flwr-datasets``) or fedarena's own.

Sources (offline first: nothing is downloaded at run time)

- ``hf:parquet``, ``hf:csv``, ``hf:json`` with ``data.files`` (a path, a glob, or a comma-separated list of
  them): ``datasets.load_dataset(builder, data_files=...)``; ``hf:disk`` with ``data.files=DIR``: a
  ``save_to_disk`` directory (``datasets.load_from_disk``). A ``DatasetDict`` (several splits) is pooled:
  fedarena makes each client's own train/test split.
- ``hf:OWNER/NAME[:CONFIG]`` (a Hub dataset): loaded from the local Hugging Face cache only, with
  ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` set for the load, so it never waits on the network; a dataset
  that is not cached is refused with one line saying how to download it and point ``data.files`` at it.
- ``datasets`` keeps its own Arrow cache of what it reads (``HF_DATASETS_CACHE``); fedarena itself unpickles
  nothing: columns are read as Arrow arrays, images and WAV audio are decoded from their bytes here.

Columns

- ``data.label``: the label column; unset: the first of :data:`LABEL_COLUMNS` present. Class labels become
  0..K-1: a ``ClassLabel`` column keeps its own K and indices (a value outside [0, K) is refused); any other
  column (integers, whole floats, strings, booleans) maps its distinct values, sorted, to 0..K-1. With
  ``data.tokens = "char"`` and a text feature, a label column of single characters is read in the character
  vocabulary instead (next-character data such as ``flwrlabs/shakespeare``), K = 80. The mapping is
  ``details["label_mapping"]`` (value -> index). ``data.label = "next"`` (the default for a text feature
  with no label column): next-token windows, see below.
- ``data.features``: one column, or a comma-separated list of scalar columns (stacked into a vector);
  unset: the first of :data:`FEATURE_COLUMNS` present, else every numeric column other than the label and
  ``data.partition_by``. By the column's type:
  - image (``datasets.Image``, or a struct of ``bytes``/``path``): decoded with Pillow, grayscale kept as one
    channel, anything else converted to RGB, resized to ``data.image_size`` squared when that is set
    (bilinear), float32 (C, H, W) scaled to [0, 1] (8-bit / 255, 16-bit / 65535);
  - audio (``datasets.Audio``, or such a struct holding a WAV file): 16 kHz PCM WAV decoded with the standard
    library's ``wave``, mixed to mono, cut or zero-padded to 1 s, then log-mel features (1, 40, 101):
    :func:`log_mel` (``torch.stft`` and a mel filterbank written here; torchaudio is not a dependency);
  - array (lists, ``Array2D``...): float32 as is (no scaling), every row the same shape;
  - scalar columns: float32 (N, k);
  - text (a string column), by ``data.tokens``:
    - ``char``: LEAF's 80-character vocabulary (the embedded ``shakespeare`` set's; other characters read
      as a space), int64 (N, seq_len) with ``data.seq_len`` (0: 80), keeping a text's last ``seq_len``
      characters and padding shorter ones on the left with spaces;
    - ``word``: lowercased words (``[a-z0-9']+`` runs), a vocabulary of index 0 = padding, 1 = unknown and
      the ``data.vocab_size`` most frequent words of the clients' train splits (ties alphabetical), int64
      (N, seq_len) (0: 25 words), last words kept, padded on the left with 0;
    - ``bow``: the same word vocabulary as a bag of words: float32 (N, vocab_size + 2), each text's word
      counts divided by its number of words (for mlr/mlp; fedarena's lstm predicts its own vocabulary,
      so it cannot classify word sequences into other classes).
  NaN or infinite features, nulls, and rows of different shapes are refused naming the column.
- Next-token windows (``data.label = "next"``, tokens ``char`` or ``word``): a client's text is its rows'
  texts in order (each ending with a newline for ``char``), encoded, cut by position (the first
  ``1 - test_fraction`` of its tokens train, the rest test, as the embedded Shakespeare set) and read as
  windows of ``seq_len`` tokens starting every ``seq_len`` tokens, each labelled with the token after it;
  K is the vocabulary's size.

Partitions (``data.partition``)

- ``natural`` (the default): flwr-datasets' ``NaturalIdPartitioner`` on ``data.partition_by``: one client per
  distinct value (sorted), client ids are the values (made safe as file names as the embedded Shakespeare
  set's: other characters than letters, digits, ``.``, ``_``, ``-`` become ``_``). Rows with no value are left out
  (``details["rows_without_id"]``), and so are clients too small for ``data.min_train`` + ``data.min_test``
  (``details["dropped_clients"]``): real natural partitions have long tails (most Sentiment140 users have a
  tweet or two). ``data.num_clients`` unset: every client that remains; K: the K with the most samples
  (ties: the smaller id), in id order. Neither depends on the seed.
- ``dirichlet``: flwr-datasets' ``DirichletPartitioner`` over the labels (``data.alpha``, self-balancing,
  ``min_partition_size`` = min_train + min_test), seeded from the run seed.
- ``shards``: flwr-datasets' ``ShardPartitioner`` (``data.shards_per_client`` label-sorted shards each),
  seeded from the run seed.
- ``iid``: flwr-datasets' ``IidPartitioner`` on the rows permuted by the run seed (it takes contiguous
  shards in row order and has no seed of its own; a file sorted by writer would otherwise give each client a
  few writers).
- ``quantity`` and ``feature``: fedarena's own (:mod:`.partition`), flwr-datasets having no seeded match.
Each client's rows are then split into its own train and test (``split_train_test``: ``data.test_fraction``,
seeded). The same spec, files and seed give the same clients.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import re
import warnings
import wave
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedarena.core.rng import derive_seed, numpy_rng
from fedarena.core.types import FedarenaError, FederatedData
from fedarena.data.partition import add_feature_noise, quantity_partition, split_train_test
from fedarena.data.shakespeare import VOCAB, client_ids, encode, split_point, window_starts, windows
from fedarena.data.spec import HF_BUILDERS as BUILDERS
from fedarena.data.spec import HF_PREFIX as PREFIX
from fedarena.data.spec import HF_TOKENS as TOKENS
from fedarena.data.spec import DataConfig

NEXT = "next"  # data.label: next-token windows
LABEL_COLUMNS = ("label", "labels", "character", "y", "target", "sentiment", "class")
FEATURE_COLUMNS = ("image", "img", "x", "audio", "text", "features")
CHAR_SEQ_LEN, WORD_SEQ_LEN = 80, 25
SAMPLE_RATE, CLIP_SAMPLES = 16_000, 16_000  # audio: 16 kHz, 1 s
N_FFT, WIN, HOP, N_MELS = 512, 400, 160, 40  # 25 ms windows every 10 ms, 40 mel bands
PAD, UNK = 0, 1  # word vocabulary


@dataclass(frozen=True)
class Columns:
    """What to read and how (``data.files``, ``data.features``, ...; see the module docstring)."""

    files: str = ""
    features: str = ""
    label: str = ""
    partition_by: str = ""
    tokens: str = "char"
    seq_len: int = 0
    vocab_size: int = 10_000
    image_size: int = 0


def parse_name(name: str) -> tuple[str, str | None]:
    """``hf:NAME[:CONFIG]`` -> (NAME, CONFIG or None)."""
    body = name[len(PREFIX):] if name.startswith(PREFIX) else name
    source, _, config = body.partition(":")
    return source, config or None


# ---------------------------------------------------------------- loading


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """HF_HUB_OFFLINE and HF_DATASETS_OFFLINE on, in the environment and in the already-imported
    ``datasets``/``huggingface_hub`` constants (read at import), restored afterwards."""
    import datasets
    import huggingface_hub.constants as hub

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    saved = (hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE)
    os.environ.update({k: "1" for k in saved_env})
    hub.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # pyarrow's sort options, inside flwr-datasets
            yield
    finally:
        if bars:
            datasets.enable_progress_bars()
        hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _file_list(builder: str, files: str) -> list[str]:
    if not files.strip():
        raise FedarenaError(f"hf:{builder} reads local files: set data.files to a path, a glob or a comma-separated "
                            "list of them")
    out = []
    for item in (f.strip() for f in files.split(",") if f.strip()):
        path = str(Path(item).expanduser())
        if any(c in path for c in "*?["):
            if not glob.glob(path, recursive=True):
                raise FedarenaError(f"data.files: no file matches {item}")
        elif not Path(path).exists():
            raise FedarenaError(f"data.files: {item} does not exist")
        out.append(path)
    return out


def _pool(ds: Any) -> Any:
    """A ``Dataset`` from a ``Dataset`` or ``DatasetDict`` (splits concatenated in their order), indices flattened."""
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        ds = datasets.concatenate_datasets([ds[k] for k in ds])
    return ds.flatten_indices() if ds._indices is not None else ds


def load_source(name: str, files: str = "") -> tuple[Any, str]:
    """The ``datasets.Dataset`` that ``hf:NAME`` names, and a description of where it came from for messages."""
    import datasets

    source, config = parse_name(name)
    try:
        with offline():
            if source == "disk":
                (path,) = _file_list(source, files)[:1]
                if not (Path(path) / "dataset_info.json").is_file() and not (Path(path) / "dataset_dict.json").is_file():
                    raise FedarenaError(f"data.files: {path} is not a datasets save_to_disk directory "
                                        "(no dataset_info.json or dataset_dict.json)")
                return _pool(datasets.load_from_disk(path)), path
            if source in BUILDERS:
                paths = _file_list(source, files)
                return _pool(datasets.load_dataset(source, data_files=paths, split="train")), ", ".join(paths)
            if files:
                raise FedarenaError(f"data.files is for local files (hf:parquet, hf:csv, hf:json, hf:disk); "
                                    f"hf:{source} is a Hub dataset")
            return _pool(datasets.load_dataset(source, config)), f"hf:{source}"
    except FedarenaError:
        raise
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError...)
        if source in BUILDERS:
            detail = " ".join(str(exc).split())[:300]
            raise FedarenaError(f"hf:{source}: cannot read data.files={files}: {type(exc).__name__}: {detail}") from None
        cfg = f", '{config}'" if config else ""
        raise FedarenaError(
            f"hf:{source}{':' + config if config else ''} is not in the local Hugging Face cache and fedarena does "
            f"not download at run time: download it once with `python -c \"import datasets; datasets.load_dataset("
            f"'{source}'{cfg}).save_to_disk('DIR')\"` and run with --data hf:disk --set data.files=DIR "
            f"(or `hf download {source} --repo-type dataset --local-dir DIR` and --data hf:parquet "
            f"--set data.files='DIR/**/*.parquet')"
        ) from None


# ---------------------------------------------------------------- columns


def _kind(feature: Any, column: Any) -> str:
    """image | audio | text | scalar | array | struct, from the ``datasets`` feature type."""
    import datasets

    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.Audio):
        return "audio"
    if isinstance(feature, datasets.ClassLabel):
        return "scalar"
    if isinstance(feature, datasets.Value):
        if feature.dtype in ("string", "large_string"):
            return "text"
        if feature.dtype == "bool" or feature.dtype.startswith(("int", "uint", "float")):
            return "scalar"
        return "other"
    if isinstance(feature, dict) and "bytes" in feature:
        first = next((v for v in column.to_pylist() if v), None) or {}
        raw = first.get("bytes") or b""
        return "audio" if raw[:4] == b"RIFF" or str(first.get("path", "")).endswith(".wav") else "image"
    if isinstance(feature, (list, datasets.Sequence, datasets.List, datasets.Array2D, datasets.Array3D)):
        return "array"
    return "other"


def resolve_columns(ds: Any, cols: Columns, where: str) -> tuple[list[str], str]:
    """(feature columns, label column or "next"), checked against the dataset's columns."""
    names = list(ds.column_names)

    def need(column: str, key: str) -> str:
        if column not in names:
            raise FedarenaError(f"{where}: no column '{column}' ({key}); columns: {', '.join(names)}")
        return column

    label = cols.label
    if label and label != NEXT:
        need(label, "data.label")
    if cols.partition_by:
        need(cols.partition_by, "data.partition_by")
    if cols.features:
        features = [need(c.strip(), "data.features") for c in cols.features.split(",") if c.strip()]
    else:
        first = next((c for c in FEATURE_COLUMNS if c in names and c not in (label, cols.partition_by)), None)
        if first is None:
            features = [c for c in names if c not in (label, cols.partition_by)
                        and _kind(ds.features[c], ds.data.column(c)) == "scalar"]
            if not features:
                raise FedarenaError(f"{where}: set data.features (no column named {', '.join(FEATURE_COLUMNS)} and "
                                    f"no numeric column); columns: {', '.join(names)}")
        else:
            features = [first]
    if not label:
        label = next((c for c in LABEL_COLUMNS if c in names and c not in features and c != cols.partition_by), "")
        if not label:
            if len(features) == 1 and _kind(ds.features[features[0]], ds.data.column(features[0])) == "text":
                label = NEXT
            else:
                raise FedarenaError(f"{where}: set data.label (no column named {', '.join(LABEL_COLUMNS)}); "
                                    f"columns: {', '.join(names)}")
    if label in features:
        raise FedarenaError(f"{where}: column '{label}' is both data.label and data.features")
    if len(features) > 1:
        for c in features:
            if _kind(ds.features[c], ds.data.column(c)) != "scalar":
                raise FedarenaError(f"{where}: data.features lists several columns, so each must be a number; "
                                    f"column '{c}' is {ds.features[c]}")
    return features, label


def _labels(ds: Any, column: str, char_labels: bool, where: str) -> tuple[np.ndarray, int, dict[str, int]]:
    """(labels int64 for every row, K, value -> index)."""
    import datasets

    feature, values = ds.features[column], ds.data.column(column)
    if values.null_count:
        raise FedarenaError(f"{where}: label column '{column}' has {values.null_count} missing values")
    if isinstance(feature, datasets.ClassLabel):
        y = values.to_numpy().astype(np.int64)
        k = feature.num_classes
        bad = (y < 0) | (y >= k)
        if bad.any():
            raise FedarenaError(f"{where}: label column '{column}' (ClassLabel of {k} classes) has value "
                                f"{int(y[bad][0])} out of range [0, {k}) at row {int(np.flatnonzero(bad)[0])}")
        return y, k, {name: i for i, name in enumerate(feature.names)}
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        raw = values.to_pylist()
        if char_labels and all(len(v) == 1 for v in raw):
            return encode("".join(raw)), len(VOCAB), {c: i for i, c in enumerate(VOCAB)}
        keys, y = np.unique(np.asarray(raw, dtype=object).astype(str), return_inverse=True)
        return y.astype(np.int64), len(keys), {str(v): i for i, v in enumerate(keys)}
    numeric = isinstance(feature, datasets.Value) and feature.dtype.startswith(("bool", "int", "uint", "float"))
    if not numeric:
        raise FedarenaError(f"{where}: label column '{column}' must hold class labels (integers, strings), got {feature}")
    arr = values.to_numpy()
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            raise FedarenaError(f"{where}: label column '{column}' must hold integers, got {arr[bad][0].item()!r} at row "
                                f"{int(np.flatnonzero(bad)[0])}")
        arr = arr.astype(np.int64)
    keys, y = np.unique(arr, return_inverse=True)
    return y.astype(np.int64), len(keys), {str(v.item()): i for i, v in enumerate(keys)}


def _finite(x: np.ndarray, column: str, rows: np.ndarray, where: str) -> None:
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if bad.any():
            raise FedarenaError(f"{where}: column '{column}' has NaN or infinite values (row {int(rows[bad][0])})")


def _image(raw: dict[str, Any], size: int, column: str, row: int, where: str) -> np.ndarray:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(raw["bytes"]) if raw.get("bytes") else raw["path"])
        img.load()
    except Exception as exc:
        raise FedarenaError(f"{where}: column '{column}' row {row} is not a readable image ({exc})") from None
    if img.mode not in ("L", "1", "I;16", "I", "F"):
        img = img.convert("RGB")
    if size:
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    a = np.asarray(img)
    if a.dtype == np.bool_:
        out = a.astype(np.float32)
    elif a.dtype == np.uint8:
        out = a.astype(np.float32) / 255
    elif a.dtype.kind in "iu":
        out = np.clip(a.astype(np.float32) / 65535, 0, 1)
    else:
        out = np.clip(a.astype(np.float32), 0, 1)
    return out[None] if out.ndim == 2 else out.transpose(2, 0, 1)


def _wav(raw: dict[str, Any], column: str, row: int, where: str) -> np.ndarray:
    try:
        with wave.open(io.BytesIO(raw["bytes"]) if raw.get("bytes") else raw["path"], "rb") as w:
            rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            frames = w.readframes(w.getnframes())
    except (wave.Error, OSError, EOFError, KeyError, TypeError) as exc:
        raise FedarenaError(f"{where}: column '{column}' row {row} is not a PCM WAV file ({exc})") from None
    if rate != SAMPLE_RATE or width != 2:
        raise FedarenaError(f"{where}: column '{column}' row {row}: {rate} Hz, {8 * width}-bit audio; fedarena reads "
                            f"16-bit PCM at {SAMPLE_RATE} Hz")
    a = np.frombuffer(frames, dtype="<i2").astype(np.float32).reshape(-1, channels).mean(axis=1) / 32768
    out = np.zeros(CLIP_SAMPLES, dtype=np.float32)
    out[: min(len(a), CLIP_SAMPLES)] = a[:CLIP_SAMPLES]
    return out


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, rate: int = SAMPLE_RATE) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters evenly spaced on the HTK mel scale from 0 Hz to rate / 2."""
    def mel(f: np.ndarray) -> np.ndarray:
        return 2595 * np.log10(1 + f / 700)

    def hz(m: np.ndarray) -> np.ndarray:
        return 700 * (10 ** (m / 2595) - 1)

    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    edges = hz(np.linspace(0, mel(np.array(rate / 2)), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fb = np.maximum(0, np.minimum((freqs - lower) / (centre - lower), (upper - freqs) / (upper - centre)))
    return torch.from_numpy(fb.astype(np.float32))


def log_mel(clips: np.ndarray) -> np.ndarray:
    """(N, 1, 40, 101) log(mel power + 1e-6) of (N, 16000) clips: |STFT|^2 with a 400-sample Hann window
    (25 ms), 160-sample hop (10 ms), 512-point FFT, centred, then :func:`mel_filterbank`."""
    if len(clips) == 0:
        return np.zeros((0, 1, N_MELS, CLIP_SAMPLES // HOP + 1), dtype=np.float32)
    spec = torch.stft(torch.from_numpy(clips), N_FFT, HOP, WIN, torch.hann_window(WIN), center=True,
                      return_complex=True).abs() ** 2
    return torch.log(mel_filterbank() @ spec + 1e-6).unsqueeze(1).numpy()


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def word_vocab(texts: Sequence[str], size: int) -> dict[str, int]:
    """word -> index: 0 padding, 1 unknown, then the `size` most frequent words of `texts` (ties alphabetical)."""
    counts = Counter(w for t in texts for w in _words(t))
    ranked = sorted(counts, key=lambda w: (-counts[w], w))[:size]
    return {w: i + 2 for i, w in enumerate(ranked)}


def _fit(ids: Sequence[int], seq_len: int, pad: int) -> list[int]:
    """The last `seq_len` of `ids`, padded on the left with `pad`."""
    ids = list(ids)[-seq_len:]
    return [pad] * (seq_len - len(ids)) + ids


def _text(texts: list[str], cols: Columns, vocab: dict[str, int]) -> np.ndarray:
    seq_len = cols.seq_len or (CHAR_SEQ_LEN if cols.tokens == "char" else WORD_SEQ_LEN)
    if cols.tokens == "char":
        space = VOCAB.index(" ")
        return np.array([_fit(encode(t).tolist(), seq_len, space) for t in texts], dtype=np.int64).reshape(-1, seq_len)
    ids = [[vocab.get(w, UNK) for w in _words(t)] for t in texts]
    if cols.tokens == "word":
        return np.array([_fit(s, seq_len, PAD) for s in ids], dtype=np.int64).reshape(-1, seq_len)
    bow = np.zeros((len(texts), len(vocab) + 2), dtype=np.float32)
    for i, s in enumerate(ids):
        if s:
            np.add.at(bow[i], s, 1.0 / len(s))
    return bow


def features_of(ds: Any, columns: list[str], rows: np.ndarray, cols: Columns, vocab: dict[str, int],
                where: str) -> np.ndarray:
    """The feature array of `rows` (see the module docstring), validated."""
    if len(columns) > 1 or _kind(ds.features[columns[0]], ds.data.column(columns[0])) == "scalar":
        parts = []
        for c in columns:
            col = ds.data.column(c).take(rows)
            if col.null_count:
                raise FedarenaError(f"{where}: column '{c}' has {col.null_count} missing values")
            parts.append(col.to_numpy(zero_copy_only=False).astype(np.float32))
        x = np.stack(parts, axis=1)
        for j, c in enumerate(columns):
            _finite(x[:, j], c, rows, where)
        return x
    (c,) = columns
    col = ds.data.column(c).take(rows)
    kind = _kind(ds.features[c], ds.data.column(c))
    if col.null_count:
        raise FedarenaError(f"{where}: column '{c}' has {col.null_count} missing values")
    values = col.to_pylist()
    if kind == "text":
        return _text(values, cols, vocab)
    if kind == "audio":
        return log_mel(np.stack([_wav(v, c, int(r), where) for v, r in zip(values, rows)]) if values
                       else np.zeros((0, CLIP_SAMPLES), dtype=np.float32))
    if kind == "image":
        arrays = [_image(v, cols.image_size, c, int(r), where) for v, r in zip(values, rows)]
    elif kind == "array":
        arrays = [np.asarray(v, dtype=np.float32) for v in values]
    else:
        raise FedarenaError(f"{where}: column '{c}' ({ds.features[c]}) is not an image, audio, array, text or number "
                            "column")
    for a, r in zip(arrays, rows):
        if a.shape != arrays[0].shape:
            hint = " (set data.image_size to resize images)" if kind == "image" else ""
            raise FedarenaError(f"{where}: column '{c}': row {int(r)} has shape {a.shape} but row {int(rows[0])} has "
                                f"{arrays[0].shape}{hint}")
    x = np.stack(arrays) if arrays else np.zeros((0,), dtype=np.float32)
    _finite(x, c, rows, where)
    return x


# ---------------------------------------------------------------- partitions


def _flwr_parts(partitioner: Any, table: dict[str, Any]) -> list[np.ndarray]:
    """Row indices of every partition of a flwr-datasets partitioner over a small dataset of ``__row`` and the
    partitioning column."""
    import datasets

    partitioner.dataset = datasets.Dataset.from_dict(table)
    return [np.asarray(partitioner.load_partition(i)["__row"], dtype=np.int64)
            for i in range(partitioner.num_partitions)]


def natural_clients(ids: list[Any], column: str, where: str) -> tuple[list[str], list[np.ndarray], int]:
    """(client ids, row indices of each, rows without an id) by ``NaturalIdPartitioner`` on `column`."""
    from flwr_datasets.partitioner import NaturalIdPartitioner

    rows = np.array([i for i, v in enumerate(ids) if v is not None], dtype=np.int64)
    if not len(rows):
        raise FedarenaError(f"{where}: column '{column}' (data.partition_by) has no values")
    p = NaturalIdPartitioner(partition_by="__id")
    try:
        parts = _flwr_parts(p, {"__row": rows, "__id": [ids[i] for i in rows]})
    except TypeError as exc:
        raise FedarenaError(f"{where}: column '{column}' (data.partition_by) values cannot be ordered ({exc})") from None
    names = client_ids([str(p.partition_id_to_natural_id[i]) for i in range(len(parts))])  # safe as file names
    return list(names), parts, len(ids) - len(rows)


def split_clients(partition: str, labels: np.ndarray, num_clients: int, *, alpha: float, shards_per_client: int,
                  min_size: int, seed: int) -> list[np.ndarray]:
    """Row indices of `num_clients` clients by `partition` (iid, dirichlet, shards, quantity, feature)."""
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, ShardPartitioner

    n = len(labels)
    if num_clients * min_size > n:
        raise FedarenaError(f"{n} samples cannot give each of {num_clients} clients at least {min_size} (data.min_train "
                            f"+ data.min_test); use at most {n // min_size} clients (data.num_clients)")
    flwr_seed = derive_seed(seed, f"partition:hf:{partition}") % 2**32
    rows = np.arange(n, dtype=np.int64)
    try:
        if partition in ("iid", "feature"):
            perm = numpy_rng(seed, "partition:hf:iid").permutation(n)
            parts = _flwr_parts(IidPartitioner(num_clients), {"__row": perm})
        elif partition == "dirichlet":
            parts = _flwr_parts(DirichletPartitioner(num_clients, "__label", alpha, min_partition_size=min_size,
                                                     self_balancing=True, seed=flwr_seed),
                                {"__row": rows, "__label": labels})
        elif partition == "shards":
            parts = _flwr_parts(ShardPartitioner(num_clients, "__label", num_shards_per_partition=shards_per_client,
                                                 seed=flwr_seed), {"__row": rows, "__label": labels})
        elif partition == "quantity":
            parts = quantity_partition(n, num_clients, alpha, min_size, seed)
        else:
            raise FedarenaError(f"partition '{partition}' cannot be used with hf data")
    except ValueError as exc:
        raise FedarenaError(f"{partition} partition of {n} samples into {num_clients} clients: {exc}") from None
    for i, part in enumerate(parts):
        if len(part) < min_size:
            raise FedarenaError(f"{partition} partition gives client {i} {len(part)} samples, fewer than {min_size} "
                                "(data.min_train + data.min_test); use fewer clients or another partition")
    return parts


def _keep(names: list[str], parts: list[np.ndarray], sizes: list[int], least: int, num_clients: int | None,
          where: str) -> tuple[list[str], list[np.ndarray], list[str]]:
    """Natural clients with at least `least` samples; the `num_clients` largest of them (ties: id order)."""
    kept = [i for i, s in enumerate(sizes) if s >= least]
    dropped = [names[i] for i, s in enumerate(sizes) if s < least]
    if not kept:
        raise FedarenaError(f"{where}: no client has the {least} samples that data.min_train + data.min_test need")
    if num_clients is not None:
        if num_clients > len(kept):
            raise FedarenaError(f"data.num_clients ({num_clients}) exceeds the {len(kept)} clients of {where} with at "
                                f"least {least} samples; lower it, or leave it unset for all of them")
        kept = sorted(sorted(kept, key=lambda i: (-sizes[i], i))[:num_clients])
    return [names[i] for i in kept], [parts[i] for i in kept], dropped


# ---------------------------------------------------------------- the loader


def _offsets(parts: list[np.ndarray]) -> tuple[int, ...]:
    return (0, *(int(o) for o in np.cumsum([len(p) for p in parts])))


def load_hf(name: str, cols: Columns, *, partition: str = "natural", num_clients: int | None = None,
            alpha: float = 0.3, shards_per_client: int = 2, feature_sigma: float = 0.1, test_fraction: float = 0.25,
            min_train: int = 5, min_test: int = 2, seed: int = 0) -> FederatedData:
    """The federated data of ``hf:NAME`` (see the module docstring). Raises :class:`FedarenaError` naming the
    file or column on bad input."""
    with offline():
        return _load(name, cols, partition, num_clients, alpha, shards_per_client, feature_sigma, test_fraction,
                     min_train, min_test, seed)


def _load(name: str, cols: Columns, partition: str, num_clients: int | None, alpha: float, shards_per_client: int,
          feature_sigma: float, test_fraction: float, min_train: int, min_test: int, seed: int) -> FederatedData:
    if cols.tokens not in TOKENS:
        raise FedarenaError(f"unknown data.tokens '{cols.tokens}'; valid: {', '.join(TOKENS)}")
    ds, where = load_source(name, cols.files)
    if len(ds) == 0:
        raise FedarenaError(f"{where}: no rows")
    features, label = resolve_columns(ds, cols, where)
    if partition == "natural" and not cols.partition_by:
        raise FedarenaError("--partition natural needs data.partition_by, the column whose values are the clients")
    kind = _kind(ds.features[features[0]], ds.data.column(features[0])) if len(features) == 1 else "scalar"
    if label == NEXT and (kind != "text" or cols.tokens == "bow"):
        raise FedarenaError(f"{where}: data.label=next (next-token windows) needs a text feature and data.tokens "
                            f"char or word; column '{features[0]}' is {ds.features[features[0]]}")
    if partition == "feature" and (kind == "text" and cols.tokens != "bow"):
        raise FedarenaError("--partition feature adds noise to float features; token indices cannot take it")
    split = replace(DataConfig(), test_fraction=test_fraction, min_train=min_train, min_test=min_test)
    least = min_train + min_test
    details: dict[str, Any] = {"source": name, "files": cols.files, "features": ",".join(features), "label": label,
                               "partition_by": cols.partition_by, "test_fraction": test_fraction}
    if kind == "text":
        details["tokens"] = cols.tokens
    if label == NEXT:
        return _next_token(ds, features[0], cols, partition, num_clients, split, details, where, seed)
    y, k, mapping = _labels(ds, label, cols.tokens == "char" and kind == "text", where)
    details["label_mapping"] = mapping if len(mapping) <= 1000 else f"{len(mapping)} classes"
    if partition == "natural":
        names, parts, missing = natural_clients(ds.data.column(cols.partition_by).to_pylist(), cols.partition_by, where)
        names, parts, dropped = _keep(names, parts, [len(p) for p in parts], least, num_clients, where)
        details |= {"rows_without_id": missing, "dropped_clients": len(dropped)}
    else:
        parts = split_clients(partition, y, num_clients or 20, alpha=alpha, shards_per_client=shards_per_client,
                              min_size=least, seed=seed)
        names = [str(i) for i in range(len(parts))]
        details |= {"alpha": alpha} if partition in ("dirichlet", "quantity") else {}
        details |= {"shards_per_client": shards_per_client} if partition == "shards" else {}
        details |= {"feature_sigma": feature_sigma} if partition == "feature" else {}
    splits = [split_train_test(p, i, split, seed) for i, p in enumerate(parts)]
    train, test = [tr for tr, _ in splits], [te for _, te in splits]
    train_rows, test_rows = np.concatenate(train), np.concatenate(test)
    vocab: dict[str, int] = {}
    if kind == "text" and cols.tokens != "char":
        vocab = word_vocab(ds.data.column(features[0]).take(train_rows).to_pylist(), cols.vocab_size)
        details["vocabulary_size"] = len(vocab) + 2
    x_train = features_of(ds, features, train_rows, cols, vocab, where)
    x_test = features_of(ds, features, test_rows, cols, vocab, where)
    train_offsets, test_offsets = _offsets(train), _offsets(test)
    if partition == "feature":
        add_feature_noise(x_train, train_offsets, feature_sigma, seed, "train")
        add_feature_noise(x_test, test_offsets, feature_sigma, seed, "test")
    return FederatedData(
        name=name, client_ids=tuple(names),
        x_train=torch.from_numpy(np.ascontiguousarray(x_train)), y_train=torch.from_numpy(y[train_rows]),
        train_offsets=train_offsets,
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)), y_test=torch.from_numpy(y[test_rows]),
        test_offsets=test_offsets, num_classes=k, partition=partition, details=details,
    )


def _next_token(ds: Any, column: str, cols: Columns, partition: str, num_clients: int | None, split: DataConfig,
                details: dict[str, Any], where: str, seed: int) -> FederatedData:
    """Next-token windows of each client's text (see the module docstring)."""
    if partition not in ("natural", "iid", "quantity"):
        raise FedarenaError(f"--partition {partition} needs class labels; next-token windows take natural, iid or "
                            "quantity")
    texts = ds.data.column(column)
    if texts.null_count:
        raise FedarenaError(f"{where}: column '{column}' has {texts.null_count} missing values")
    values = texts.to_pylist()
    if partition == "natural":
        names, parts, missing = natural_clients(ds.data.column(cols.partition_by).to_pylist(), cols.partition_by, where)
        details["rows_without_id"] = missing
    else:
        parts = split_clients(partition, np.zeros(len(values), dtype=np.int64), num_clients or 20, alpha=0.3,
                              shards_per_client=1, min_size=1, seed=seed)
        parts = [np.sort(p) for p in parts]  # a client's text in row order
        names = [str(i) for i in range(len(parts))]
    seq_len = cols.seq_len or (CHAR_SEQ_LEN if cols.tokens == "char" else WORD_SEQ_LEN)
    if cols.tokens == "char":
        streams: list[Any] = ["".join(values[r] + "\n" for r in p) for p in parts]
        cuts = [split_point(len(s), split.test_fraction) for s in streams]
        codes = [encode(s) for s in streams]
        k = len(VOCAB)
    else:
        streams = [[w for r in p for w in _words(values[r])] for p in parts]
        cuts = [split_point(len(s), split.test_fraction) for s in streams]
        counts = Counter(w for s, c in zip(streams, cuts) for w in s[:c])
        ranked = sorted(counts, key=lambda w: (-counts[w], w))[: cols.vocab_size]
        vocab = {w: i + 2 for i, w in enumerate(ranked)}
        codes = [np.array([vocab.get(w, UNK) for w in s], dtype=np.int64) for s in streams]
        k = len(vocab) + 2
        details["vocabulary_size"] = k
    starts = [(window_starts(0, c, seq_len, seq_len), window_starts(c, len(s), seq_len, seq_len))
              for s, c in zip(codes, cuts)]
    sizes = [min(len(tr) - split.min_train, len(te) - split.min_test) for tr, te in starts]
    if partition == "natural":
        total = [len(tr) + len(te) if size >= 0 else -1 for (tr, te), size in zip(starts, sizes)]
        names, kept, dropped = _keep(names, [np.array([i]) for i in range(len(names))], total, 0, num_clients, where)
        chosen = [int(p[0]) for p in kept]
        details["dropped_clients"] = len(dropped)
    else:
        bad = [i for i, s in enumerate(sizes) if s < 0]
        if bad:
            raise FedarenaError(f"{partition} partition gives client {bad[0]} fewer than data.min_train "
                                f"{split.min_train} train or data.min_test {split.min_test} test windows of {seq_len} "
                                "tokens; use fewer clients")
        chosen = list(range(len(parts)))
    xs = {"train": [], "test": []}
    ys = {"train": [], "test": []}
    for i in chosen:
        for j, s in enumerate(("train", "test")):
            x, y = windows(codes[i], starts[i][j], seq_len)
            xs[s].append(x)
            ys[s].append(y)
    details["seq_len"] = seq_len
    return FederatedData(
        name=details["source"], client_ids=tuple(names),
        x_train=torch.from_numpy(np.concatenate(xs["train"])), y_train=torch.from_numpy(np.concatenate(ys["train"])),
        train_offsets=_offsets(ys["train"]),
        x_test=torch.from_numpy(np.concatenate(xs["test"])), y_test=torch.from_numpy(np.concatenate(ys["test"])),
        test_offsets=_offsets(ys["test"]), num_classes=k, partition=partition, details=details,
    )


__all__ = ["BUILDERS", "PREFIX", "TOKENS", "Columns", "load_hf", "load_source", "log_mel", "mel_filterbank",
           "offline", "parse_name", "word_vocab"]

