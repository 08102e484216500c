"""What the server knows of the deployed clients: each node's description of its client, and the stand-in
`FederatedData` (sizes and label counts, no sample) that the round loop and the summary see on the server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from fedarena import config as cfg
from fedarena.core.types import FedarenaError, FederatedData
from fedarena.flower import messages, records
from fedarena.tasks import input_dtype

MAX_COUNT = 2**31 - 1  # the largest count or dimension a describe reply may state


@dataclass(frozen=True)
class Described:
    """What a node says about its client (a describe reply)."""

    node_id: int
    client_id: str
    index: int
    num_train: int
    num_test: int
    num_classes: int
    label_counts: tuple[int, ...]
    input_shape: tuple[int, ...]

    @classmethod
    def parse(cls, node_id: int, r: Mapping[str, Any]) -> "Described":
        """A describe reply, checked: FedarenaError naming the node and the entry when it is malformed. Counts
        and dimensions must lie in [1, 2**31 - 1] (label counts and the index may be 0, the index -1 for an
        npz-dir client), the label counts sum to the train size and fit the number of classes, and the client
        id must be usable as a file name (flower-sim writes ``client-<id>.safetensors``)."""
        def count(key: str, least: int) -> int:
            try:
                value = int(records.number(r, key, least=least))
            except FedarenaError as exc:
                raise FedarenaError(f"node {node_id}: {exc}") from None
            if value > MAX_COUNT:
                raise FedarenaError(f"node {node_id}: record entry {key!r} is {value}, beyond {MAX_COUNT}")
            return value

        def counts(key: str, least: int) -> tuple[int, ...]:
            value = r.get(key)
            if not isinstance(value, list) or not all(type(v) is int and least <= v <= MAX_COUNT for v in value):
                raise FedarenaError(f"node {node_id}: record entry {key!r} must be a list of integers in [{least}, "
                                    f"{MAX_COUNT}], got {value!r}")
            return tuple(value)

        client_id = r.get(messages.CLIENT_ID)
        if (not isinstance(client_id, str) or client_id in ("", ".", "..")
                or any(c in client_id for c in "/\\\0")):
            raise FedarenaError(f"node {node_id}: record entry {messages.CLIENT_ID!r} must be a client name usable as a "
                                f"file name, got {client_id!r}")
        out = cls(node_id, client_id, count(messages.INDEX, -1), count(messages.NUM_TRAIN, 1),
                  count(messages.NUM_TEST, 1), count(messages.NUM_CLASSES, 1), counts(messages.LABEL_COUNTS, 0),
                  counts(messages.INPUT_SHAPE, 1))
        if sum(out.label_counts) != out.num_train or len(out.label_counts) > out.num_classes or not out.input_shape:
            raise FedarenaError(f"node {node_id} describes inconsistent sizes for client {out.client_id}: "
                                f"{len(out.label_counts)} label counts summing to {sum(out.label_counts)} for "
                                f"{out.num_train} train samples and {out.num_classes} classes, input shape "
                                f"{list(out.input_shape)}")
        return out


def stand_in(config: cfg.Config, clients: list[Described], details: Mapping[str, Any]) -> FederatedData:
    """The FederatedData `run_algorithm` and `build_summary` see on the server: client ids, split sizes
    and train label counts as the nodes described them. It holds no sample: labels are rebuilt from the
    counts (sorted) and features are a broadcast zero row, of the model's input dtype (int64 character indices
    for lstm, whose embedding takes no float)."""
    shape, k = clients[0].input_shape, max(d.num_classes for d in clients)
    zero = torch.zeros((), dtype=input_dtype(config.model.name))  # expanded below: no row is allocated
    counts = [torch.tensor(d.label_counts + (0,) * (k - len(d.label_counts))) for d in clients]
    y_train = torch.cat([torch.repeat_interleave(torch.arange(k), c) for c in counts])
    n_train, n_test = sum(d.num_train for d in clients), sum(d.num_test for d in clients)
    offsets = lambda sizes: tuple([0, *torch.tensor(sizes).cumsum(0).tolist()])  # noqa: E731
    return FederatedData(
        name=config.data.name, client_ids=tuple(d.client_id for d in clients),
        x_train=zero.expand(n_train, *shape), y_train=y_train,
        train_offsets=offsets([d.num_train for d in clients]),
        x_test=zero.expand(n_test, *shape), y_test=torch.zeros(n_test, dtype=torch.int64),
        test_offsets=offsets([d.num_test for d in clients]), num_classes=k,
        partition=cfg.resolved_partition(config), details=dict(details),
    )


def dataset_details(config: cfg.Config) -> dict[str, Any]:
    """`FederatedData.details` as the loaders set them, from the config alone. Of the validation split it holds
    `val_fraction` only: how each node drew its validation rows (`val_split`: stratified or random, which depends
    on the node's labels) is not reported to the server."""
    from fedarena.data.spec import partition_details, synthetic_details

    name = config.data.name
    val = {"val_fraction": config.data.val_fraction} if config.data.val_fraction > 0 else {}
    if name.startswith("npz-dir:"):
        return {"path": str(Path(name.removeprefix("npz-dir:")).expanduser()), **val}
    details = synthetic_details(config.synthetic) if name == "synthetic" else partition_details(config.data)
    return {**details, "test_fraction": config.data.test_fraction, **val}
