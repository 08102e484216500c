"""The payload codec and the byte ledger: every engine counts bytes through these two.

Wire format: safetensors (an 8-byte header length, a JSON header naming every tensor with dtype,
shape and offsets, then the raw little-endian tensor bytes; never pickle). Tensor names are
``params/<key>`` and ``extra/<key>``; scalars travel in the header's string metadata. A message with
no tensor is not sent and costs 0 bytes (e.g. `local`'s upload).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import overload

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedarena.core.types import Broadcast, FedarenaError, Params, Upload

WIRE_DTYPES = (torch.float32, torch.float64, torch.int64, torch.int32, torch.uint8, torch.bool)


def _tensors(message: Broadcast | Upload) -> dict[str, torch.Tensor]:
    out = {f"params/{k}": v for k, v in message.params.items()}
    out.update({f"extra/{k}": v for k, v in message.extra.items()})
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}  # the wire carries CPU bytes (core/device.py)


def _meta(message: Broadcast | Upload) -> dict[str, str]:
    meta = {"kind": type(message).__name__}
    if isinstance(message, Upload):
        meta["num_samples"] = str(int(message.num_samples))
        # fixed-width numbers, so that a message's size never depends on the values it reports
        meta["metrics"] = json.dumps({k: f"{float(v):+.16e}" for k, v in sorted(message.metrics.items())})
    return meta


def encode(message: Broadcast | Upload) -> bytes:
    tensors = _tensors(message)
    if not tensors:
        return b""
    return st_save(tensors, metadata=_meta(message))


def _size_key(message: Broadcast | Upload) -> tuple[object, ...]:
    """Everything the encoded size depends on: each tensor's name, dtype and shape, and the length of
    each metadata string as it is written into the JSON header (the header's offsets follow from the
    shapes). Two messages with equal keys encode to the same number of bytes (tested)."""
    tensors = [(f"params/{k}", v) for k, v in message.params.items()] + [(f"extra/{k}", v) for k, v in message.extra.items()]
    return (
        type(message).__name__,
        tuple((name, v.dtype, tuple(v.shape)) for name, v in tensors),
        tuple((k, len(json.dumps(v))) for k, v in _meta(message).items()) if tensors else (),
    )


def _metadata(payload: bytes) -> dict[str, str]:
    n = int.from_bytes(payload[:8], "little")
    if n <= 0 or 8 + n > len(payload):
        raise FedarenaError("payload header length is out of range")
    try:
        header = json.loads(payload[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FedarenaError(f"payload header is not JSON: {exc}") from None
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FedarenaError("payload metadata must map strings to strings")
    return meta


@overload
def decode(payload: bytes, kind: type[Broadcast]) -> Broadcast: ...
@overload
def decode(payload: bytes, kind: type[Upload]) -> Upload: ...


def decode(payload: bytes, kind: type[Broadcast] | type[Upload]) -> Broadcast | Upload:
    """Parse and validate a payload (dtypes, finite values, known sections); never unpickles."""
    if not payload:
        return kind()
    try:
        tensors = st_load(payload)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise FedarenaError(f"payload is not a valid safetensors message: {exc}") from None
    meta = _metadata(payload)
    if meta.get("kind") != kind.__name__:
        raise FedarenaError(f"expected a {kind.__name__} payload, got {meta.get('kind')!r}")
    params: Params = {}
    extra: Params = {}
    for name in sorted(tensors):  # safetensors' dict order varies between processes
        tensor = tensors[name]
        section, _, key = name.partition("/")
        if section not in ("params", "extra") or not key:
            raise FedarenaError(f"payload tensor {name!r} is not params/<key> or extra/<key>")
        if tensor.dtype not in WIRE_DTYPES:
            raise FedarenaError(f"payload tensor {name!r} has unsupported dtype {tensor.dtype}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise FedarenaError(f"payload tensor {name!r} has NaN or Inf values")
        (params if section == "params" else extra)[key] = tensor
    if kind is Broadcast:
        return Broadcast(params=params, extra=extra)
    try:
        num_samples = int(meta.get("num_samples", "0"))
        metrics = {str(k): float(str(v)) for k, v in json.loads(meta.get("metrics", "{}")).items()}
    except (ValueError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise FedarenaError(f"upload metadata is malformed: {exc}") from None
    if num_samples < 0 or not all(math.isfinite(v) for v in metrics.values()):
        raise FedarenaError("upload num_samples must be >= 0 and metrics finite")
    return Upload(params=params, num_samples=num_samples, extra=extra, metrics=metrics)


@dataclass
class Ledger:
    """Bytes per (round, client, direction), from the encoded payloads themselves.

    With ``verify`` (the reference engine) every receiver uses the decoded payload, exactly what
    crossed the wire. Without it (the vectorized engine) the receiver uses the message itself,
    which is the same bits (the codec round trip is the identity on its wire dtypes, tested), a
    broadcast that is the very same object for several clients of a round is encoded once, and an
    upload is encoded once per structure (names, dtypes, shapes, metadata lengths: see `_size_key`)
    since its size does not depend on its values.
    """

    up: dict[tuple[int, int], int] = field(default_factory=dict)
    down: dict[tuple[int, int], int] = field(default_factory=dict)
    verify: bool = True
    _last: tuple[int, Broadcast | None, int] = (0, None, 0)  # (round, message, size)
    _sizes: dict[tuple[object, ...], int] = field(default_factory=dict)  # encoded size per _size_key (verify off)

    def send_down(self, rnd: int, client: int, message: Broadcast) -> Broadcast:
        last_round, last_message, last_size = self._last
        if not self.verify and last_round == rnd and _same(last_message, message):
            self.down[(rnd, client)] = self.down.get((rnd, client), 0) + last_size
            return message
        payload = encode(message)
        self._last = (rnd, message, len(payload))
        self.down[(rnd, client)] = self.down.get((rnd, client), 0) + len(payload)
        return decode(payload, Broadcast) if self.verify else message

    def send_up(self, rnd: int, client: int, message: Upload) -> Upload:
        if self.verify:
            payload = encode(message)
            size = len(payload)
        else:  # the same bits either way: count the size, encoded once per message structure
            key = _size_key(message)
            if key not in self._sizes:
                self._sizes[key] = len(encode(message))
            size = self._sizes[key]
        self.up[(rnd, client)] = self.up.get((rnd, client), 0) + size
        return decode(payload, Upload) if self.verify else message

    def record(self, rnd: int, client: int, direction: str, nbytes: int) -> None:
        """Count `nbytes` of payload that crossed a real wire (a Flower runtime encodes and decodes itself)."""
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        table = self.up if direction == "up" else self.down
        table[(rnd, client)] = table.get((rnd, client), 0) + int(nbytes)

    def cumulative(self, rounds: int) -> list[int]:
        """Bytes up + down over all clients through each round 1..rounds (one pass over the ledger)."""
        per_round = [0] * (rounds + 1)
        for (r, _), v in [*self.up.items(), *self.down.items()]:
            per_round[r] += v
        out, total = [], 0
        for r in range(1, rounds + 1):
            total += per_round[r]
            out.append(total)
        return out


def _same(a: Broadcast | None, b: Broadcast) -> bool:
    """The same tensors under the same names (messages are never mutated, so equal contents)."""
    if a is None or a.params.keys() != b.params.keys() or a.extra.keys() != b.extra.keys():
        return False
    return all(a.params[k] is b.params[k] for k in a.params) and all(a.extra[k] is b.extra[k] for k in a.extra)
