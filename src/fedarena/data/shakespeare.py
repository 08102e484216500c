"""Shakespeare next-character prediction, one client per speaking role (LEAF's task, on embedded text).

The text is "tiny shakespeare" of the char-rnn project (``data/tinyshakespeare/input.txt``: 40,000 lines
of the public-domain plays), shipped inside the package as ``files/tinyshakespeare.txt.xz`` with its
notice ``files/NOTICE-tinyshakespeare.md``; its sha256 is checked on every load, so nothing is downloaded
and nothing else is read.

- Turns: the text is blocks separated by blank lines; a block's first line is the speaker line
  ``NAME:`` and its other lines are the speech. A speaker line with no speech is no turn (the text has
  125, left where stage directions were removed).
- Clients: one per speaking role (the name on the speaker line; the same name in two plays is one role)
  with at least ``shakespeare.min_turns`` turns and enough text for ``data.min_train`` train and
  ``data.min_test`` test windows, in the order of their first turn in the text. A role's text is its
  speeches, each ending with a newline, in the order they are spoken. Client ids are the role names made
  safe as file names (runs of characters other than letters, digits, ``.``, ``_``, ``-`` become ``_``),
  unique even on a case-insensitive file system (a clash gets ``_2``, ``_3``, ...).
- ``data.num_clients`` unset (None): every qualifying role is a client. Set to K: the K roles with the most
  text (ties: the earlier first turn), kept in the order of their first turn, so K = all gives the same
  data as unset. Neither depends on the seed: the partition is the text's own.
- Samples: windows of ``shakespeare.seq_len`` characters (80, as LEAF), labelled with the character that
  follows, starting every ``shakespeare.stride`` characters (80: windows do not overlap).
- Split: by position in each role's text: the first ``1 - data.test_fraction`` of its characters are its
  train text, the rest its test text (spoken later); no window or label crosses the cut. Then
  :func:`fedarena.data.load_federated` makes the last ``data.val_fraction`` of each role's train windows its
  validation windows (:func:`fedarena.data.validation.split_validation`, ``by_position=True``), so a role's
  text reads train, validation, test in that order; :func:`load_shakespeare` itself splits no validation.
- Vocabulary: LEAF's 80 characters (:data:`VOCAB`); a character outside it is read as a space (in this
  text only one ``$``, a typo). ``x`` is int64 character indices of shape (N, seq_len) and ``num_classes``
  is 80.
"""

from __future__ import annotations

import functools
import hashlib
import lzma
import re
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from fedarena.core.types import FedarenaError, FederatedData
from fedarena.data.spec import DataConfig, ShakespeareConfig, shakespeare_details

TEXT_FILE = "tinyshakespeare.txt.xz"
TEXT_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"  # of the uncompressed text
# LEAF's character set (models/utils/language_utils.py ALL_LETTERS): the 80 classes of its Shakespeare task
VOCAB = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
UNKNOWN = VOCAB.index(" ")  # the index of any character outside VOCAB


@dataclass(frozen=True)
class Role:
    """One speaking role: its name, number of turns and text (its speeches, each ending with a newline)."""

    name: str
    turns: int
    text: str


def read_text() -> str:
    """The embedded text, checked against :data:`TEXT_SHA256`; a damaged file is a :class:`FedarenaError`."""
    return _embedded_text()


@functools.lru_cache(maxsize=1)
def _embedded_text() -> str:
    path = resources.files("fedarena.data").joinpath("files", TEXT_FILE)
    try:
        raw = lzma.decompress(path.read_bytes())
    except (OSError, lzma.LZMAError) as exc:
        raise FedarenaError(f"embedded shakespeare text {TEXT_FILE} cannot be read: {exc}") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != TEXT_SHA256:
        raise FedarenaError(f"embedded shakespeare text {TEXT_FILE}: sha256 {digest}, expected {TEXT_SHA256}; "
                            "the package is damaged, reinstall fedarena")
    return raw.decode("utf-8")


def parse_turns(text: str) -> list[tuple[str, str]]:
    """``(speaker, speech)`` of every turn, in order; a speaker line with no speech is skipped. Raises
    :class:`FedarenaError` naming the line where a block does not start with a speaker line ``NAME:``."""
    turns: list[tuple[str, str]] = []
    speaker: str | None = None
    speech: list[str] = []
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        if not line.strip():
            if speaker is not None and speech:
                turns.append((speaker, "".join(s + "\n" for s in speech)))
            speaker, speech = None, []
        elif speaker is None:
            if not line.rstrip().endswith(":") or not line.rstrip()[:-1].strip():
                raise FedarenaError(f"shakespeare text, line {number}: expected a speaker line 'NAME:' after a "
                                    f"blank line, got {line[:40]!r}")
            speaker = line.rstrip()[:-1].strip()
        else:
            speech.append(line)
    if speaker is not None and speech:
        turns.append((speaker, "".join(s + "\n" for s in speech)))
    return turns


def parse_roles(text: str) -> list[Role]:
    """Every speaking role of `text`, in the order of its first turn."""
    turns: dict[str, list[str]] = {}
    for speaker, speech in parse_turns(text):
        turns.setdefault(speaker, []).append(speech)
    return [Role(name, len(speeches), "".join(speeches)) for name, speeches in turns.items()]


@functools.lru_cache(maxsize=1)
def _embedded_roles() -> tuple[Role, ...]:
    return tuple(parse_roles(read_text()))


def client_ids(names: list[str]) -> tuple[str, ...]:
    """`names` made safe as file names and unique ignoring case (a clash gets ``_2``, ``_3``, ...)."""
    ids: list[str] = []
    taken: set[str] = set()
    for name in names:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "role"
        candidate, n = base, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{base}_{n}"
        taken.add(candidate.lower())
        ids.append(candidate)
    return tuple(ids)


def encode(text: str) -> np.ndarray:
    """`text` as int64 indices into :data:`VOCAB` (characters outside it: :data:`UNKNOWN`)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.full(max(int(codes.max(initial=0)) + 1, 128), UNKNOWN, dtype=np.int64)
    table[[ord(c) for c in VOCAB]] = np.arange(len(VOCAB), dtype=np.int64)
    return table[codes]


def window_starts(begin: int, end: int, seq_len: int, stride: int) -> np.ndarray:
    """Starts ``begin, begin + stride, ...`` of the windows whose ``seq_len`` characters and label lie in
    ``[begin, end)``."""
    return np.arange(begin, max(begin, end - seq_len), stride, dtype=np.int64)


def split_point(length: int, test_fraction: float) -> int:
    """Where a role's test text begins: after the first ``round(length * (1 - test_fraction))`` characters."""
    return int(round(length * (1 - test_fraction)))


def windows(codes: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (len(starts), seq_len) and the next-character labels ``y`` of the windows at `starts`."""
    x = codes[starts[:, None] + np.arange(seq_len, dtype=np.int64)]
    return x.reshape(len(starts), seq_len), codes[starts + seq_len]


def _split(role: Role, spec: DataConfig, s: ShakespeareConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A role's encoded text and its train and test window starts."""
    codes = encode(role.text)
    cut = split_point(len(codes), spec.test_fraction)
    return (codes, window_starts(0, cut, s.seq_len, s.stride),
            window_starts(cut, len(codes), s.seq_len, s.stride))


def qualifying(roles: list[Role] | tuple[Role, ...], spec: DataConfig, s: ShakespeareConfig) -> list[Role]:
    """The roles that can be clients: at least ``min_turns`` turns and ``min_train``/``min_test`` windows."""
    out = []
    for role in roles:
        if role.turns < s.min_turns:
            continue
        _, train, test = _split(role, spec, s)
        if len(train) >= spec.min_train and len(test) >= spec.min_test:
            out.append(role)
    return out


def select(roles: list[Role], num_clients: int | None) -> list[Role]:
    """All `roles` (None), or the `num_clients` with the most text (ties: the earlier), in their order."""
    if num_clients is None:
        return list(roles)
    if num_clients > len(roles):
        raise FedarenaError(f"data.num_clients ({num_clients}) exceeds the {len(roles)} shakespeare roles with at "
                            "least shakespeare.min_turns turns; lower it, or leave it unset for all of them")
    ranked = sorted(range(len(roles)), key=lambda i: (-len(roles[i].text), i))
    return [roles[i] for i in sorted(ranked[:num_clients])]


def count_clients(spec: DataConfig, s: ShakespeareConfig, text: str | None = None) -> int:
    """How many clients `spec` gives (``data.num_clients``, or every qualifying role when it is unset)."""
    roles = _embedded_roles() if text is None else parse_roles(text)
    return len(select(qualifying(roles, spec, s), spec.num_clients))


def load_shakespeare(spec: DataConfig, s: ShakespeareConfig, text: str | None = None) -> FederatedData:
    """The federated Shakespeare data of `spec` and `s` (see the module docstring); `text` replaces the
    embedded text (tests)."""
    s.validate()
    roles = _embedded_roles() if text is None else parse_roles(text)
    eligible = qualifying(roles, spec, s)
    if not eligible:
        raise FedarenaError(f"no shakespeare role has shakespeare.min_turns={s.min_turns} turns and text for "
                            f"data.min_train={spec.min_train} train and data.min_test={spec.min_test} test windows")
    chosen = select(eligible, spec.num_clients)
    ids = dict(zip((r.name for r in roles), client_ids([r.name for r in roles])))  # the same id in every selection
    xs_train, ys_train, xs_test, ys_test = [], [], [], []
    for role in chosen:
        codes, train, test = _split(role, spec, s)
        x, y = windows(codes, train, s.seq_len)
        xs_train.append(x)
        ys_train.append(y)
        x, y = windows(codes, test, s.seq_len)
        xs_test.append(x)
        ys_test.append(y)

    def offsets(parts: list[np.ndarray]) -> tuple[int, ...]:
        return (0, *(int(o) for o in np.cumsum([len(p) for p in parts])))

    return FederatedData(
        name=spec.name,
        client_ids=tuple(ids[r.name] for r in chosen),
        x_train=torch.from_numpy(np.concatenate(xs_train)),
        y_train=torch.from_numpy(np.concatenate(ys_train)),
        train_offsets=offsets(ys_train),
        x_test=torch.from_numpy(np.concatenate(xs_test)),
        y_test=torch.from_numpy(np.concatenate(ys_test)),
        test_offsets=offsets(ys_test),
        num_classes=len(VOCAB),
        partition="natural",
        details={**shakespeare_details(s), "qualifying_roles": len(eligible), "test_fraction": spec.test_fraction},
    )
