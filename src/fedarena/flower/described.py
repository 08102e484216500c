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
        out = cls(node_id, str(r[messages.CLIENT_ID]), int(records.number(r, messages.INDEX)),
                  int(records.number(r, messages.NUM_TRAIN)), int(records.number(r, messages.NUM_TEST)),
                  int(records.number(r, messages.NUM_CLASSES)), tuple(int(c) for c in r[messages.LABEL_COUNTS]),
                  tuple(int(s) for s in r[messages.INPUT_SHAPE]))
        if out.num_train < 1 or out.num_test < 1 or sum(out.label_counts) != out.num_train:
            raise FedarenaError(f"node {node_id} describes inconsistent sizes for client {out.client_id}")
        return out


def stand_in(config: cfg.Config, clients: list[Described], details: Mapping[str, Any]) -> FederatedData:
    """The FederatedData `run_algorithm` and `build_summary` see on the server: client ids, split sizes
    and train label counts as the nodes described them. It holds no sample: labels are rebuilt from the
    counts (sorted) and features are a broadcast zero row, of the model's input dtype (int64 character indices
    for lstm, whose embedding takes no float)."""
    shape, k = clients[0].input_shape, max(d.num_classes for d in clients)
    zero = torch.zeros((1, *shape), dtype=input_dtype(config.model.name))
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
