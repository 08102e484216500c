"""Columns into tensors: labels, images, log-mel audio, text tokens (see the package docstring)."""



from __future__ import annotations

import io
import re
import wave
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fedarena.core.types import FedarenaError
from fedarena.data.hf.columns import (
    CHAR_SEQ_LEN,
    CLIP_SAMPLES,
    FEATURE_COLUMNS,
    HOP,
    LABEL_COLUMNS,
    N_FFT,
    N_MELS,
    NEXT,
    PAD,
    SAMPLE_RATE,
    UNK,
    WIN,
    WORD_SEQ_LEN,
    Columns,
)
from fedarena.data.shakespeare import VOCAB, encode


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
    source = io.BytesIO(raw["bytes"]) if raw.get("bytes") else raw.get("path")
    if not source:  # wave.open(None) raises AttributeError
        raise FedarenaError(f"{where}: column '{column}' row {row} holds no audio (neither bytes nor a path)")
    try:
        with wave.open(source, "rb") as w:
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
