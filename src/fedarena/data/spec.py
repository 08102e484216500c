"""What data a run asks for: the ``[data]``, ``[synthetic]`` and ``[shakespeare]`` specs, their checks and their rules.

The data layer owns these types; the config module (config.py) imports them (and re-exports them under the
same names) to build the TOML schema. Each spec's :meth:`validate` is the one place its range and
compatibility checks live: ``config.validate`` calls it, and so does :func:`fedarena.data.load_federated`.
Checks that need the data itself (enough samples per client, npz headers) happen where it is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedarena.core.types import FedarenaError

DATASETS = ("digits", "synthetic", "shakespeare", "npz-dir:PATH", "hf:NAME[:CONFIG]")
PARTITIONS = ("iid", "dirichlet", "shards", "quantity", "feature", "natural")
NPZ_PREFIX = "npz-dir:"
HF_PREFIX = "hf:"  # Hugging Face datasets (fedarena/data/hf.py)
HF_BUILDERS = ("parquet", "csv", "json", "disk")  # hf: sources read from data.files
HF_TOKENS = ("char", "word", "bow")  # data.tokens: how hf text features become numbers
HF_KEYS = ("files", "features", "label", "partition_by")  # read for hf data only
DEFAULT_NUM_CLIENTS = 20  # data.num_clients when unset, for digits and synthetic
DEFAULT_CLIENTS_PER_ROUND = 10  # train.clients_per_round when unset: min(this, training clients)


def _check(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise FedarenaError(message)


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"  # digits | synthetic | shakespeare | npz-dir:PATH
    partition: str = "auto"  # auto: dirichlet for digits, natural for synthetic, shakespeare and npz-dir
    # None (unset): the dataset's default, see resolved_num_clients; npz-dir ignores it (its files are its clients)
    num_clients: int | None = None
    alpha: float = 0.3  # Dirichlet concentration (dirichlet label skew, quantity skew)
    shards_per_client: int = 2  # classes per client for `shards`
    feature_sigma: float = 0.1  # `feature`: client i gets Gaussian noise of std sigma*i/N (NIID-Bench)
    test_fraction: float = 0.25  # share of each client's samples held out as its own test split
    # share of each client's train split moved into its validation split (fedarena/data/validation.py); 0: none
    val_fraction: float = 0.15
    min_train: int = 5  # no client may have fewer train samples than this (resampled, else refused)
    min_test: int = 2
    new_clients: float = 0.0  # fraction of clients held out of training and onboarded at the end
    # hf:NAME data only (fedarena/data/hf.py, docs/data.md)
    files: str = ""  # hf:parquet/csv/json: paths or globs, comma-separated; hf:disk: a save_to_disk directory
    features: str = ""  # feature column, or comma-separated scalar columns ("": by name, see hf.py)
    label: str = ""  # label column ("": by name; "next": next-token windows of a text feature)
    partition_by: str = ""  # natural partition: the column whose values are the clients
    tokens: str = "char"  # text features: char | word | bow
    seq_len: int = 0  # tokens per text sample (0: 80 characters, 25 words)
    vocab_size: int = 10_000  # word | bow: the most frequent words kept (plus padding and unknown)
    image_size: int = 0  # images resized to image_size x image_size (0: as stored)

    def resolved_partition(self) -> str:
        """``partition``, with ``auto`` resolved: dirichlet for digits, natural for the others."""
        if self.partition != "auto":
            return self.partition
        if self.name.startswith(HF_PREFIX):
            return "natural" if self.partition_by else "iid"
        return "dirichlet" if self.name == "digits" else "natural"

    def resolved_num_clients(self) -> int | None:
        """``num_clients``, or when unset the dataset's default: 20 for digits and synthetic (and npz-dir, which
        ignores it), None for shakespeare (every role that qualifies: known once the text is parsed)."""
        if self.num_clients is not None:
            return self.num_clients
        if self.name == "shakespeare" or (self.name.startswith(HF_PREFIX) and self.resolved_partition() == "natural"):
            return None  # every client that qualifies: known once the data is read
        return DEFAULT_NUM_CLIENTS

    def validate(self) -> DataConfig:
        """Range and compatibility checks that need no data; raises :class:`FedarenaError` naming the key."""
        _check([
            (self.num_clients is None or self.num_clients >= 1, "data.num_clients must be >= 1"),
            (self.alpha > 0, f"data.alpha (Dirichlet concentration) must be > 0, got {self.alpha}"),
            (self.shards_per_client >= 1, "data.shards_per_client must be >= 1"),
            (self.feature_sigma >= 0, "data.feature_sigma must be >= 0"),
            (0 < self.test_fraction < 1, f"data.test_fraction must be in (0, 1), got {self.test_fraction}"),
            (0 <= self.val_fraction < 1, f"data.val_fraction must be in [0, 1) (0: no validation split), "
                                         f"got {self.val_fraction}"),
            (self.min_train >= 1 and self.min_test >= 1, "data.min_train and data.min_test must be >= 1"),
            (self.partition in PARTITIONS + ("auto",),
             f"unknown partition '{self.partition}'; valid: {', '.join(PARTITIONS)}"),
            (0 <= self.new_clients < 1, f"data.new_clients must be a fraction in [0, 1), got {self.new_clients}"),
        ])
        name, partition = self.name, self.partition
        if name.startswith(HF_PREFIX):
            self._validate_hf()
        elif any(getattr(self, key) for key in HF_KEYS):
            key = next(key for key in HF_KEYS if getattr(self, key))
            raise FedarenaError(f"data.{key} is read for hf:NAME data only (the dataset is '{name}')")
        if name not in ("digits", "synthetic", "shakespeare") and not name.startswith((NPZ_PREFIX, HF_PREFIX)):
            raise FedarenaError(f"unknown dataset '{name}'; valid: {', '.join(DATASETS)}")
        if name.startswith(NPZ_PREFIX) and partition not in ("auto", "natural"):
            raise FedarenaError(f"--partition {partition} cannot be used with npz-dir data: its clients are the files")
        if name == "synthetic" and partition not in ("auto", "natural"):
            raise FedarenaError(
                f"--partition {partition} cannot be used with synthetic data: the generator makes each "
                "client's distribution itself (use synthetic.alpha/beta/iid)"
            )
        if name == "shakespeare" and partition not in ("auto", "natural"):
            raise FedarenaError(f"--partition {partition} cannot be used with shakespeare: its clients are the "
                                "speaking roles (partition natural)")
        if name == "digits" and partition == "natural":
            raise FedarenaError("digits has no natural partition; use iid, dirichlet, shards, quantity or feature")
        return self

    def _validate_hf(self) -> None:
        # data.files for a local source and data.partition_by for a natural partition are checked when the data
        # is read (fedarena/data/hf.py): --data comes before --set, so they may still be unset here
        source = self.name[len(HF_PREFIX):].partition(":")[0]
        _check([
            (bool(source), "hf: needs a dataset: hf:parquet, hf:csv, hf:json, hf:disk or hf:OWNER/NAME[:CONFIG]"),
            (self.tokens in HF_TOKENS, f"unknown data.tokens '{self.tokens}'; valid: {', '.join(HF_TOKENS)}"),
            (self.seq_len >= 0, f"data.seq_len must be >= 0 (0: 80 characters, 25 words), got {self.seq_len}"),
            (self.vocab_size >= 1, f"data.vocab_size must be >= 1, got {self.vocab_size}"),
            (self.image_size >= 0, f"data.image_size must be >= 0 (0: as stored), got {self.image_size}"),
            (source in HF_BUILDERS or not self.files,
             f"data.files is for hf:parquet, hf:csv, hf:json and hf:disk; hf:{source} is a Hub dataset"),
        ])


@dataclass(frozen=True)
class SyntheticConfig:
    """Synthetic(alpha, beta) of Li et al. (FedProx, MLSys 2020), Sec. 5.1."""

    alpha: float = 1.0  # model heterogeneity: u_k ~ N(0, alpha)
    beta: float = 1.0  # feature heterogeneity: B_k ~ N(0, beta)
    iid: bool = False  # Synthetic-IID: one shared W, b and v = 0
    num_features: int = 60
    num_classes: int = 10
    samples_per_client: int = 0  # 0: log-normal sizes as in the FedProx generator

    def validate(self) -> SyntheticConfig:
        _check([
            (self.alpha >= 0 and self.beta >= 0, "synthetic.alpha and synthetic.beta must be >= 0"),
            (self.num_features >= 1 and self.num_classes >= 2, "synthetic needs >= 1 feature and >= 2 classes"),
            (self.samples_per_client >= 0, "synthetic.samples_per_client must be >= 0"),
        ])
        return self


@dataclass(frozen=True)
class ShakespeareConfig:
    """``--data shakespeare`` (fedarena/data/shakespeare.py): which roles are clients and what a sample is."""

    min_turns: int = 20  # a speaking role is a client when it has at least this many turns
    stride: int = 80  # characters between the starts of two windows (80: windows do not overlap)
    seq_len: int = 80  # characters in a window; its label is the next character (LEAF: 80)

    def validate(self) -> ShakespeareConfig:
        _check([
            (self.min_turns >= 1, f"shakespeare.min_turns must be >= 1, got {self.min_turns}"),
            (self.stride >= 1, f"shakespeare.stride must be >= 1, got {self.stride}"),
            (1 <= self.seq_len <= 10_000, f"shakespeare.seq_len must be in [1, 10000], got {self.seq_len}"),
        ])
        return self


def shakespeare_details(s: ShakespeareConfig) -> dict[str, Any]:
    """What ``FederatedData.details`` records for shakespeare (beside the roles that qualify and ``test_fraction``)."""
    return {"min_turns": s.min_turns, "stride": s.stride, "seq_len": s.seq_len, "vocabulary": "LEAF, 80 characters"}


def partition_details(spec: DataConfig, partition: str | None = None) -> dict[str, Any]:
    """The parameters of ``partition`` (default: the spec's resolved one) that ``FederatedData.details``
    records for embedded data."""
    d = spec
    return {
        "iid": {},
        "dirichlet": {"alpha": d.alpha},
        "shards": {"shards_per_client": d.shards_per_client},
        "quantity": {"alpha": d.alpha},
        "feature": {"feature_sigma": d.feature_sigma},
    }.get(partition or spec.resolved_partition(), {})


def synthetic_details(s: SyntheticConfig) -> dict[str, Any]:
    """What ``FederatedData.details`` records for Synthetic(alpha, beta) (``test_fraction`` aside)."""
    return {"alpha": s.alpha, "beta": s.beta, "iid": s.iid, "num_features": s.num_features,
            "samples_per_client": s.samples_per_client}


def new_client_count(num_clients: int, fraction: float) -> int:
    """How many of ``num_clients`` clients ``data.new_clients = fraction`` holds out of training:
    max(1, round(fraction * N)), none when the fraction is 0; refuses holding out every client."""
    if fraction <= 0:
        return 0
    k = max(1, round(fraction * num_clients))
    if k >= num_clients:
        raise FedarenaError(f"data.new_clients={fraction} would hold out all {num_clients} clients")
    return k


def resolve_clients_per_round(requested: int | None, num_clients: int, new_clients: float) -> int:
    """``train.clients_per_round`` for a run of ``num_clients`` clients of which ``data.new_clients``
    are held out: ``requested``, or min(10, training clients) when it is None (not set). Refuses a
    request above the number of training clients."""
    held_out = new_client_count(num_clients, new_clients)
    training = num_clients - held_out
    if requested is None:
        return min(DEFAULT_CLIENTS_PER_ROUND, training)
    if requested > training:
        raise FedarenaError(
            f"train.clients_per_round ({requested}) exceeds the {training} clients that train"
            + (f" ({held_out} of data.num_clients {num_clients} held out by data.new_clients)" if held_out else
               f" (data.num_clients {num_clients})")
            + "; lower it, or leave it unset for min(10, training clients)"
        )
    return requested


__all__ = [
    "DATASETS",
    "DEFAULT_CLIENTS_PER_ROUND",
    "DEFAULT_NUM_CLIENTS",
    "HF_BUILDERS",
    "HF_KEYS",
    "HF_PREFIX",
    "HF_TOKENS",
    "NPZ_PREFIX",
    "PARTITIONS",
    "DataConfig",
    "ShakespeareConfig",
    "SyntheticConfig",
    "new_client_count",
    "partition_details",
    "resolve_clients_per_round",
    "shakespeare_details",
    "synthetic_details",
]
