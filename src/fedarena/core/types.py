"""The words of DESIGN.md as frozen dataclasses.

Params are ``dict[str, torch.Tensor]`` keyed by state-dict names. States and messages are frozen
dataclasses of named tensors and plain scalars; functions return new values and never mutate inputs.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Mapping

import torch

Params = dict[str, torch.Tensor]


class FedarenaError(Exception):
    """A user error (bad config, bad data, bad flag): the CLI prints it on one line and exits 2."""


@dataclass(frozen=True)
class KeyFilter:
    """Which parameter names stay on the client: glob patterns over state-dict keys.

    ``KeyFilter()`` matches nothing (a pure global algorithm); ``KeyFilter(("*",))`` matches all.
    """

    patterns: tuple[str, ...] = ()

    def __call__(self, key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, p) for p in self.patterns)


NOTHING = KeyFilter()
EVERYTHING = KeyFilter(("*",))


@dataclass(frozen=True)
class SGD:
    """Local SGD shared by every algorithm of one comparison (FedAvg's E, B and learning rate)."""

    epochs: int = 1
    batch_size: int = 10
    lr: float = 0.05


@dataclass(frozen=True)
class ServerState:
    params: Params  # shared (and, for global algorithms, full) model params
    round: int = 0
    extra: Params = field(default_factory=dict)


@dataclass(frozen=True)
class ClientState:
    """What a client keeps between rounds. Its byte size is `storage_bytes_per_client`."""

    params: Params = field(default_factory=dict)
    extra: Params = field(default_factory=dict)


@dataclass(frozen=True)
class Broadcast:
    """What a client downloads at the start of a round; the ledger counts its encoded size."""

    params: Params = field(default_factory=dict)
    extra: Params = field(default_factory=dict)


@dataclass(frozen=True)
class Upload:
    """What a client sends back; `num_samples` is the aggregation weight."""

    params: Params = field(default_factory=dict)
    num_samples: int = 0
    extra: Params = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientData:
    """One client's splits: views into the federated arrays, never copies. The validation split (taken out of
    the client's training data, `data.val_fraction`) is what tuning decisions read; None where there is none."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    @property
    def num_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.y_test.shape[0])

    @property
    def num_val(self) -> int:
        return 0 if self.y_val is None else int(self.y_val.shape[0])


@dataclass(frozen=True)
class FederatedData:
    """All clients' data in a few concatenated tensors with offsets (no Python object per client).

    Client ``i`` owns rows ``train_offsets[i]:train_offsets[i+1]`` of ``x_train``/``y_train`` and
    likewise for test and (where ``val_offsets`` is not empty) validation. Features are float32, labels int64
    in ``[0, num_classes)``.
    """

    name: str
    client_ids: tuple[str, ...]
    x_train: torch.Tensor
    y_train: torch.Tensor
    train_offsets: tuple[int, ...]
    x_test: torch.Tensor
    y_test: torch.Tensor
    test_offsets: tuple[int, ...]
    num_classes: int
    partition: str
    details: Mapping[str, object] = field(default_factory=dict)
    x_val: torch.Tensor | None = None  # None (and val_offsets empty): no validation split
    y_val: torch.Tensor | None = None
    val_offsets: tuple[int, ...] = ()

    @property
    def num_clients(self) -> int:
        return len(self.client_ids)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def client(self, i: int) -> ClientData:
        a, b = self.train_offsets[i], self.train_offsets[i + 1]
        c, d = self.test_offsets[i], self.test_offsets[i + 1]
        if self.x_val is None or self.y_val is None or not self.val_offsets:
            return ClientData(self.x_train[a:b], self.y_train[a:b], self.x_test[c:d], self.y_test[c:d])
        e, f = self.val_offsets[i], self.val_offsets[i + 1]
        return ClientData(self.x_train[a:b], self.y_train[a:b], self.x_test[c:d], self.y_test[c:d],
                          self.x_val[e:f], self.y_val[e:f])

    def pooled(self, clients: "list[int] | None" = None) -> ClientData:
        """These clients' (default: all) data as one client (`centralized` trains on this)."""
        if clients is None or list(clients) == list(range(self.num_clients)):
            return ClientData(self.x_train, self.y_train, self.x_test, self.y_test, self.x_val, self.y_val)
        parts = [self.client(c) for c in clients]
        splits = [torch.cat([getattr(p, f) for p in parts]) for f in ("x_train", "y_train", "x_test", "y_test")]
        if self.x_val is None or not self.val_offsets:
            return ClientData(*splits)
        return ClientData(*splits, *(torch.cat([getattr(p, f) for p in parts]) for f in ("x_val", "y_val")))


@dataclass(frozen=True)
class Onboarding:
    """A new client's model on arrival (`before`), after local adaptation (`after`), and the number
    of local SGD steps the adaptation took."""

    before: Params
    after: Params
    steps: int
