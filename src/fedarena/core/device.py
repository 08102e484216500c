"""Where tensors live: `run.device` (`--device cpu|cuda|cuda:N|auto`) resolved to a torch device.

The clients' work (local training, personalization, evaluation) runs on this device; the server's step stays on the
CPU (below). Random streams stay on the CPU (`core.rng`: a CPU generator gives the same draws on any machine) and
their indices are moved to the device; what leaves the process (checkpoints, Flower messages, summaries) is on the
CPU.

Where the copies happen (`to_device`): a runtime moves the clients' data and the model template to the device once
per run, and a client's inputs (the broadcast, its state) to it for each piece of client work (training,
personalization, evaluation, onboarding); the results (its upload and new state) come back to the CPU. The server's
side (aggregation, privacy, the byte ledger, checkpoints, summaries) thus only ever sees CPU tensors. On the CPU
every move is the identity (the same tensor objects), so a cpu run computes exactly what it computed before devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, cast

import torch

from fedarena.core.types import FedarenaError

DEVICES = ("cpu", "cuda", "auto")  # and cuda:N
CPU = torch.device("cpu")
T = TypeVar("T")


def valid_device(name: str) -> bool:
    """Whether `name` is a device spelling fedarena takes (not whether the machine has it)."""
    if name in DEVICES:
        return True
    index = name.removeprefix("cuda:")
    return name.startswith("cuda:") and index.isdigit()


def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda[:N]` (refused when this machine has no such CUDA device) or `auto` (cuda if present, else cpu)."""
    if not valid_device(name):
        raise FedarenaError(f"unknown run.device '{name}'; valid: cpu, cuda, cuda:N, auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise FedarenaError(f"run.device={name}: this machine has no CUDA device (torch.cuda.is_available() is False); "
                            "use --device cpu or --device auto")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise FedarenaError(f"run.device={name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def to_device(value: T, device: torch.device, memo: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> T:
    """`value` with every tensor in it on `device`: a tensor, a dict, list or tuple of values, or a dataclass of them
    (Params, ClientState, Broadcast, Upload, ClientData, FederatedData). Whatever holds no tensor to move comes back as
    the very same object, so on the device a value already lives on (every value, on the CPU) this is the identity.
    `memo` (id -> (tensor, its copy)) shares one copy between values holding the same tensor (one broadcast's
    tensors, sent to every client of a round)."""
    return cast(T, _moved(value, device, {} if memo is None else memo))


def _moved(value: Any, device: torch.device, memo: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> Any:
    if isinstance(value, torch.Tensor):
        if id(value) in memo:
            return memo[id(value)][1]
        out = value.to(device)  # the same tensor where it already is
        if out is not value:
            memo[id(value)] = (value, out)  # the source is kept alive with its copy: its id cannot be reused
        return out
    if isinstance(value, dict):
        items = {k: _moved(v, device, memo) for k, v in value.items()}
        return value if all(items[k] is value[k] for k in value) else type(value)(items)
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):  # not a namedtuple
        elements = [_moved(v, device, memo) for v in value]
        return value if all(a is b for a, b in zip(elements, value)) else type(value)(elements)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for f in dataclasses.fields(value):
            if f.init:
                old = getattr(value, f.name)
                new = _moved(old, device, memo)
                if new is not old:
                    changes[f.name] = new
        return dataclasses.replace(value, **changes) if changes else value
    return value
