"""What an hf: dataset is read as: the columns, the token and audio constants (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass

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
