"""The workloads `fedarena bench` times, which of them a run selects, and the data of those it generates.

Every workload is FedAvg with one local epoch; the others differ in data, model, clients and local SGD:

- ``mlr-10``, ``mlr-100``, ``mlp-10``, ``mlp-100``: `synthetic` (FedProx's Synthetic(0, 0)), 100 clients x 267
  samples (200 train, 67 test), MLR or MLP 60-200-200-10, 10 or 100 clients per round, batch 20.
- ``cnn-digits``: the cnn (512 units) on `digits`, 20 clients, 10 per round, batch 10.
- ``cnn-28``: LEAF's FEMNIST CNN (``model.hidden=2048``, :func:`fedarena.tasks.cnn_width`) on generated 28x28x1
  images of 62 classes, 10 clients x 1,000 train + 100 test samples (LEAF's 90/10 split, rounded), 5 per round,
  batch 20 (:func:`write_images`; every engine, flower-sim's nodes included, reads the same npz files).
- ``lstm-shakespeare``: LEAF's Shakespeare LSTM on the embedded text (98 roles), 10 per round, batch 10, lr 0.8.

The two LEAF workloads default to 5 rounds (:attr:`Workload.rounds`): a round of either takes seconds on a
2-core CPU. Every workload trains without a validation split (``data.val_fraction=0``), so a client trains on all
of its train samples, the sizes above.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedarena.core.types import FedarenaError

GENERATED = "generated"  # Workload.data of the workloads whose clients the bench worker writes (write_images)
DEFAULT_ROUNDS = 20
QUICK_ROUNDS = 3
QUICK_WORKLOADS = ("mlr-100", "mlp-100")
# Ray start-up and the describe step cost ~30-40 s per flower-sim run on 2 cores: --quick runs it once
QUICK_FLOWER_SIM = "mlr-100"
QUICK_FLOWER_SIM_NOTE = f"--quick runs flower-sim on {QUICK_FLOWER_SIM} only (Ray start-up ~30-40 s per run)"


@dataclass(frozen=True)
class Workload:
    """One FedAvg workload: what `_config` turns into a run config (its fields travel to the worker as JSON)."""

    name: str
    data: str  # data.name, or GENERATED
    model: str
    num_clients: int | None  # None: the dataset's own (shakespeare: every role that qualifies)
    clients_per_round: int
    samples_per_client: int = 267  # synthetic: a client's samples (25% become its test split); GENERATED: train samples
    batch_size: int = 20
    local_epochs: int = 1
    lr: float = 0.05
    hidden: int | None = None  # model.hidden; None: the model's default width
    rounds: int | None = None  # this workload's default round count (a slow one); None: DEFAULT_ROUNDS
    test_per_client: int = 0  # GENERATED: test samples per client
    image_size: int = 28  # GENERATED: images are image_size x image_size x 1
    num_classes: int = 62  # GENERATED


WORKLOADS = (
    Workload("mlr-10", "synthetic", "mlr", 100, 10),
    Workload("mlr-100", "synthetic", "mlr", 100, 100),
    Workload("mlp-10", "synthetic", "mlp", 100, 10),
    Workload("mlp-100", "synthetic", "mlp", 100, 100),
    Workload("cnn-digits", "digits", "cnn", 20, 10, batch_size=10),
    Workload("cnn-28", GENERATED, "cnn", 10, 5, samples_per_client=1000, hidden=2048, rounds=5, test_per_client=100),
    Workload("lstm-shakespeare", "shakespeare", "lstm", None, 10, batch_size=10, lr=0.8, rounds=5),
)
MEMORY_WORKLOAD = Workload("fedavg-1000-clients", "synthetic", "mlp", 1000, 100)


def select(names: str | None, quick: bool) -> list[Workload]:
    """The workloads named in `names` (comma-separated, in WORKLOADS' order); None: every workload, or
    QUICK_WORKLOADS under --quick. An unknown name raises FedarenaError naming the valid ones."""
    if names is None:
        return [w for w in WORKLOADS if not quick or w.name in QUICK_WORKLOADS]
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    known = {w.name for w in WORKLOADS}
    unknown = sorted(wanted - known)
    if unknown or not wanted:
        what = f"unknown bench workload(s) {', '.join(unknown)}" if unknown else "--workloads names no workload"
        raise FedarenaError(f"{what}; valid: {', '.join(w.name for w in WORKLOADS)}")
    return [w for w in WORKLOADS if w.name in wanted]


def rounds_for(w: Workload, rounds: int | None, quick: bool) -> int:
    """Rounds of `w`: --rounds when given, else QUICK_ROUNDS under --quick, else the workload's own default, else
    DEFAULT_ROUNDS."""
    if rounds is not None:
        return rounds
    return QUICK_ROUNDS if quick else (w.rounds or DEFAULT_ROUNDS)


def config_flags(w: Workload, data_name: str, seed: int, rounds: int, engine: str, device: str) -> dict[str, Any]:
    """The run config's flags for one FedAvg run of `w` on `engine` (what `config.build` takes). `data_name` is
    `w.data`, or the npz-dir of a GENERATED workload's files."""
    model: dict[str, Any] = {"name": w.model}
    if w.hidden is not None:
        model["hidden"] = w.hidden
    data: dict[str, Any] = {"name": data_name, "val_fraction": 0.0}  # no validation rows: all train samples train
    if w.num_clients is not None:
        data["num_clients"] = w.num_clients
    return {
        "data": data,
        "synthetic": {"samples_per_client": w.samples_per_client},
        "model": model,
        "train": {"clients_per_round": w.clients_per_round, "batch_size": w.batch_size,
                  "local_epochs": w.local_epochs, "lr": w.lr, "rounds": rounds, "eval_every": rounds},
        "run": {"seed": seed, "algorithms": ["fedavg"], "engine": engine, "device": device},
        "forget": {"keep": "none"},  # no checkpoint encoding inside the timed rounds
    }


def data_name(w: Workload, seed: int, root: Path) -> str:
    """The data.name `w` runs on: `w.data`, or for a GENERATED workload `npz-dir:ROOT` after writing its clients
    there (`root` must exist and outlive the run: the worker's temporary directory)."""
    if w.data != GENERATED:
        return w.data
    write_images(root, seed, w.num_clients or 0, w.samples_per_client, w.test_per_client, w.image_size, w.num_classes)
    return f"npz-dir:{root}"


def write_images(root: Path, seed: int, num_clients: int, train: int, test: int, size: int = 28,
                 num_classes: int = 62) -> None:
    """Write `num_clients` clients of float32 images (1 x size x size) to ``root/{train,test}/writer-NN.npz``, the
    layout `--data npz-dir:ROOT` reads, drawn from `seed` alone (the same files for the same arguments).

    An image of class c is c's mean pattern (a random 7x7 grid of [0, 1] values, each cell 4x4 pixels at 28x28),
    times the client's contrast, plus the client's brightness offset (FEMNIST's writers differ in style) and
    N(0, 1) pixel noise: learnable, not separable at a glance. Every client holds every class about equally often
    (labels are a shuffled 0, 1, ..., num_classes - 1, 0, 1, ...), so each split of each client has all the
    classes when it has at least `num_classes` samples."""
    import numpy as np

    if num_clients < 1 or train < 1 or test < 1:
        raise FedarenaError(f"generated images need clients, train and test samples >= 1, got {num_clients}, {train}, {test}")
    rng = np.random.default_rng(seed)
    cell = max(1, size // 7)
    grid = rng.uniform(0.0, 1.0, size=(num_classes, 7, 7))
    means = np.kron(grid, np.ones((cell, cell)))[:, :size, :size]
    means = np.pad(means, ((0, 0), (0, size - means.shape[1]), (0, size - means.shape[2])))
    for split in ("train", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
    for client in range(num_clients):
        contrast, brightness = rng.uniform(0.7, 1.3), rng.normal(0.0, 0.3)
        for split, n in (("train", train), ("test", test)):
            y = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
            x = contrast * means[y] + brightness + rng.standard_normal((n, size, size))
            np.savez(root / split / f"writer-{client:02d}.npz", x=x[:, None].astype(np.float32), y=y)
