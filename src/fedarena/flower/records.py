"""The payload codec between fedarena messages and Flower records, shared by ServerApp and ClientApp.

A Flower message carries one `ConfigRecord` named ``fedarena``. Tensors travel as exactly the bytes
of :func:`fedarena.core.codec.encode` (safetensors: a JSON header, then raw little-endian tensor
bytes) in the record's ``payload`` entry, so the byte ledger counts precisely the array payload
Flower carried; Flower's own framing (record and message objects, metadata, HTTP) is measured
separately. Plain scalars (round, client index, algorithm name, evaluation results) are
ConfigRecord entries. Nothing is ever pickled or unpickled: safetensors, JSON and Flower's
protobuf-based records only.

Every upload a server receives is checked by :func:`validate_upload` before it can reach
``aggregate``: exactly the keys the algorithm uploads (every shared key; every personal key for an
algorithm that uploads personal weights), the model's exact shapes and dtypes, finite values (the
codec), and a sample count no larger than the client's train split.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from fedarena.core.codec import decode, encode
from fedarena.core.types import Broadcast, FedarenaError, KeyFilter, Params, Upload
from fedarena.flower.messages import PAYLOAD, RECORD, payload_entry

Scalar = int | float | str | bool | bytes


def content(fields: Mapping[str, Scalar], payload: bytes = b"", **payloads: bytes):  # -> RecordDict
    """A Flower RecordDict with one ConfigRecord: `fields`, the main `payload` and named extra payloads."""
    from flwr.app import ConfigRecord, RecordDict

    record: dict[str, Any] = dict(fields)
    if payload:
        record[PAYLOAD] = payload
    record.update({payload_entry(k): v for k, v in payloads.items() if v})
    return RecordDict({RECORD: ConfigRecord(record)})


def fields(message) -> dict[str, Scalar]:  # message: flwr.app.Message
    """The fedarena record of a received message, or FedarenaError when it has none."""
    if not message.has_content():
        raise FedarenaError(f"message has no content (error: {message.error})")
    records = message.content.config_records
    if RECORD not in records:
        raise FedarenaError(f"message has no '{RECORD}' config record (has: {', '.join(records) or 'none'})")
    return dict(records[RECORD])


def payload(record: Mapping[str, Scalar], name: str = "") -> bytes:
    """The named payload bytes of a record (b'' when absent)."""
    value = record.get(payload_entry(name), b"")
    if not isinstance(value, bytes):
        raise FedarenaError(f"record entry {payload_entry(name)} must be bytes, got {type(value).__name__}")
    return value


def number(record: Mapping[str, Scalar], key: str, kind: type = int, least: float | None = None) -> int | float:
    """A required scalar entry, type-checked (bool is not a number), at least `least` where given."""
    value = record.get(key)
    x = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if x is None or (kind is int and not isinstance(x, int)) or (kind is float and not math.isfinite(float(x))):
        raise FedarenaError(f"record entry {key!r} must be a finite {kind.__name__}, got {value!r}")
    if least is not None and x < least:
        raise FedarenaError(f"record entry {key!r} must be >= {least}, got {value!r}")
    return kind(x)


def encode_broadcast(b: Broadcast) -> bytes:
    return encode(b)


def decode_broadcast(data: bytes) -> Broadcast:
    return decode(data, Broadcast)


def encode_params(params: Params | None) -> bytes:
    """A params dict (e.g. the global model for evaluation) as a Broadcast payload."""
    return b"" if params is None else encode(Broadcast(params=params))


def decode_params(data: bytes) -> Params | None:
    return None if not data else decode(data, Broadcast).params


def validate_upload(upload: Upload, model: Params, personal: KeyFilter, uploads_personal: bool,
                    max_samples: int) -> None:
    """Raise FedarenaError naming the first problem of a decoded upload.

    `params` keys must be exactly the model's shared keys (its personal keys, for an algorithm that
    uploads personal weights: MOCHA), each with the model's exact shape and dtype: a missing key would
    fail the server's weighted mean, or drop that key from the global model. `extra` keys must be
    either ``<prefix>/<model key>`` with that key's shape (e.g. SCAFFOLD's control variates) or
    one-element tensors (e.g. IFCA's cluster index). `num_samples` must lie in [1, max_samples] (the
    client's train size). NaN/Inf and unknown dtypes are already refused by the codec.
    """
    for key, tensor in upload.params.items():
        if key not in model:
            raise FedarenaError(f"upload has unknown key params/{key}")
        if personal(key) and not uploads_personal:
            raise FedarenaError(f"upload carries personal key params/{key}, which must stay on the client")
        if uploads_personal and not personal(key):
            raise FedarenaError(f"upload carries shared key params/{key}; this algorithm uploads its personal keys only")
        _check_like(f"params/{key}", tensor, model[key])
    missing = [key for key in model if personal(key) == uploads_personal and key not in upload.params]
    if missing:
        raise FedarenaError(f"upload lacks params/{missing[0]} ({len(missing)} of the model's "
                            f"{'personal' if uploads_personal else 'shared'} keys missing)")
    for key, tensor in upload.extra.items():
        _, sep, base = key.partition("/")
        if sep and base in model:
            _check_like(f"extra/{key}", tensor, model[base])
        elif tensor.numel() != 1:
            raise FedarenaError(f"upload has unknown key extra/{key} (shape {tuple(tensor.shape)})")
    if not 1 <= upload.num_samples <= max_samples:
        raise FedarenaError(f"upload num_samples={upload.num_samples} is outside [1, {max_samples}] (the client's train size)")


def _check_like(name: str, tensor: torch.Tensor, reference: torch.Tensor) -> None:
    if tuple(tensor.shape) != tuple(reference.shape):
        raise FedarenaError(f"upload {name} has shape {tuple(tensor.shape)}, expected {tuple(reference.shape)}")
    if tensor.dtype != reference.dtype:
        raise FedarenaError(f"upload {name} has dtype {tensor.dtype}, expected {reference.dtype}")


def decode_upload(data: bytes, model: Params, personal: KeyFilter, uploads_personal: bool, max_samples: int) -> Upload:
    """Decode (codec checks: safetensors only, known sections, wire dtypes, finite) and validate."""
    upload = decode(data, Upload)
    validate_upload(upload, model, personal, uploads_personal, max_samples)
    return upload
