"""The uploads the Flower fuzz tests send (tests/fuzz/test_fuzz_messages.py): an honest FedPer client's upload on a
small model, safetensors files built tensor by tensor with 0-3 defects, the oracle of what is wrong with each
(`reasons`: phrases the refusal must name), and encodings cut, overwritten or with their JSON header rewritten."""

from __future__ import annotations

import json
import math
from typing import Any

import torch
from fuzzing import canonical, mutated_bytes
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from fedarena.core.codec import WIRE_DTYPES, encode
from fedarena.core.types import FedarenaError, KeyFilter, Upload
from fedarena.flower import records

MODEL = {"body.w": torch.zeros(3, 2), "body.n": torch.zeros((), dtype=torch.int64),
         "head.w": torch.zeros(2, 3), "head.b": torch.zeros(2)}
PERSONAL = KeyFilter(("head.*",))  # FedPer's personal keys on this model
SHARED = ("body.n", "body.w")
MAX_SAMPLES = 10
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8,
          torch.uint8, torch.bool)
SPECIAL = (float("nan"), float("inf"), float("-inf"))


finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@st.composite
def tensor(draw, shape: tuple[int, ...] | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A tensor of `shape` and `dtype` (drawn when None), finite or with a NaN/Inf somewhere."""
    if shape is None:
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    dtype = dtype or draw(st.sampled_from(DTYPES))
    n = math.prod(shape)
    values = draw(st.lists(finite, min_size=n, max_size=n))
    if n and dtype.is_floating_point and draw(st.integers(0, 4)) == 0:
        values[draw(st.integers(0, n - 1))] = draw(st.sampled_from(SPECIAL))
    return torch.tensor(values, dtype=torch.float64).reshape(shape).to(dtype)


@st.composite
def honest(draw) -> Upload:
    """A valid upload of a FedPer client on MODEL."""
    values = draw(st.lists(finite, min_size=6, max_size=6))
    return Upload(params={"body.w": torch.tensor(values, dtype=torch.float32).reshape(3, 2),
                          "body.n": torch.tensor(draw(st.integers(0, 100)))},
                  num_samples=draw(st.integers(1, MAX_SAMPLES)),
                  metrics={"train_loss": draw(st.floats(0, 10)), "steps": float(draw(st.integers(1, 9)))})


NAMES = st.sampled_from(["params/body.w", "params/body.n", "params/head.w", "params/head.b", "params/body.v",
                         "params/", "params/a/b", "extra/c/body.w", "extra/c/head.w", "extra/cluster", "extra/",
                         "extra/c/nothing", "body.w", "other/x", "junk"])


@st.composite
def like(draw, name: str) -> torch.Tensor:
    """For a model key: mostly its own shape and dtype, sometimes another; otherwise anything."""
    base = name.partition("/")[2].removeprefix("c/")
    if base in MODEL and draw(st.integers(0, 3)):
        ref = MODEL[base]
        dtype = ref.dtype if draw(st.integers(0, 3)) else None
        return draw(tensor(tuple(ref.shape), dtype))
    return draw(tensor())


text_numbers = st.one_of(st.integers(-10**20, 10**20).map(str),
                         st.sampled_from(["", " 7 ", "1.5", "1e3", "0x5", "nan", "٣", "1_0"]),
                         st.text(max_size=6))
metric_values = st.one_of(finite, st.sampled_from(SPECIAL), st.sampled_from(["1.5", "inf", "nan", "x", "1_0"]),
                          st.none(), st.booleans(), st.lists(st.integers(), max_size=2), st.integers(-10**400, 10**400))


def metrics_text(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


metrics_meta = st.one_of(st.dictionaries(st.text(max_size=5), metric_values, max_size=3).map(metrics_text),
                         st.lists(st.integers(), max_size=2).map(metrics_text), st.text(max_size=10))


@st.composite
def structured(draw) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """An honest upload's tensors and metadata with 0..3 defects, or tensors and metadata drawn freely."""
    if draw(st.booleans()):
        up = draw(honest())
        tensors = {f"params/{k}": v for k, v in up.params.items()}
        meta = {"kind": "Upload", "num_samples": str(up.num_samples),
                "metrics": json.dumps({k: f"{v:+.16e}" for k, v in up.metrics.items()})}
        for _ in range(draw(st.integers(0, 3))):
            what = draw(st.sampled_from(["add", "drop", "replace", "meta", "unmeta"]))
            name = draw(NAMES)
            if what in ("add", "replace"):
                tensors[name if what == "add" else draw(st.sampled_from(sorted(tensors) or ["params/body.w"]))] = \
                    draw(like(name))
            elif what == "drop" and tensors:
                del tensors[draw(st.sampled_from(sorted(tensors)))]
            elif what == "meta":
                key = draw(st.sampled_from(["kind", "num_samples", "metrics", "other"]))
                meta[key] = draw({"kind": st.sampled_from(["Broadcast", "", "upload", "Upload "]),
                                  "num_samples": text_numbers, "metrics": metrics_meta,
                                  "other": st.text(max_size=5)}[key])
            else:
                meta.pop(draw(st.sampled_from(sorted(meta))), None)
        return tensors, meta
    names = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
    tensors = {name: draw(like(name)) for name in names}
    meta = draw(st.fixed_dictionaries({}, optional={"kind": st.sampled_from(["Upload", "Broadcast", "x"]),
                                                    "num_samples": text_numbers, "metrics": metrics_meta}))
    return tensors, meta


def reasons(tensors: dict[str, torch.Tensor], meta: dict[str, str], uploads_personal: bool = False) -> list[str]:
    """What is wrong with an upload built from `tensors` and `meta` (empty: nothing), each as a phrase of the
    message that names it. The codec and the validation stop at the first problem they meet: the message must
    name one of these."""
    out = []
    if meta.get("kind") != "Upload":
        out.append("expected a Upload payload")
    sections: dict[str, dict[str, torch.Tensor]] = {"params": {}, "extra": {}}
    for name, t in tensors.items():
        section, _, key = name.partition("/")
        if section not in sections or not key:
            out.append(f"payload tensor {name!r} is not params/<key> or extra/<key>")
        elif t.dtype not in WIRE_DTYPES:
            out.append(f"payload tensor {name!r} has unsupported dtype")
        elif t.is_floating_point() and not bool(t.isfinite().all()):
            out.append(f"payload tensor {name!r} has NaN or Inf values")
        else:
            sections[section][key] = t
    num_samples: int | None = None
    try:
        num_samples = int(meta.get("num_samples", "0"))
        values = [float(str(v)) for v in json.loads(meta.get("metrics", "{}")).values()]
        if num_samples < 0 or not all(math.isfinite(v) for v in values):
            out.append("upload num_samples must be >= 0 and metrics finite")
    except (ValueError, TypeError, AttributeError):
        out.append("upload metadata is malformed")
    for key, t in sections["params"].items():
        if key not in MODEL:
            out.append(f"upload has unknown key params/{key}")
        elif PERSONAL(key) != uploads_personal:
            out.append(f"personal key params/{key}" if PERSONAL(key) else f"shared key params/{key}")
        elif tuple(t.shape) != tuple(MODEL[key].shape):
            out.append(f"upload params/{key} has shape")
        elif t.dtype != MODEL[key].dtype:
            out.append(f"upload params/{key} has dtype")
    expected = [k for k in MODEL if PERSONAL(k) == uploads_personal]
    out += [f"upload lacks params/{k}" for k in expected if k not in sections["params"]]
    for key, t in sections["extra"].items():
        _, sep, base = key.partition("/")
        if sep and base in MODEL:
            if tuple(t.shape) != tuple(MODEL[base].shape):
                out.append(f"upload extra/{key} has shape")
            elif t.dtype != MODEL[base].dtype:
                out.append(f"upload extra/{key} has dtype")
        elif t.numel() != 1:
            out.append(f"upload has unknown key extra/{key}")
    if num_samples is not None and not 1 <= num_samples <= MAX_SAMPLES:
        out.append(f"upload num_samples={num_samples} is outside [1, {MAX_SAMPLES}]")
    return out


def encoded(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
    return st_save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta or None)


def decode(data: bytes, uploads_personal: bool = False) -> Upload:
    return records.decode_upload(data, MODEL, PERSONAL, uploads_personal, MAX_SAMPLES)


def assert_well_formed(up: Upload) -> None:
    """What every accepted upload satisfies, whatever bytes it came from."""
    assert sorted(up.params) == list(SHARED)
    for key, t in up.params.items():
        assert t.shape == MODEL[key].shape and t.dtype == MODEL[key].dtype
        assert not t.is_floating_point() or bool(t.isfinite().all())
    for key, t in up.extra.items():
        base = key.partition("/")[2]
        assert (base in MODEL and t.shape == MODEL[base].shape) or t.numel() == 1
    assert 1 <= up.num_samples <= MAX_SAMPLES and all(math.isfinite(v) for v in up.metrics.values())


def decode_or_reason(data: bytes) -> None:
    """Accepted and well-formed, or refused with FedarenaError saying something about the payload."""
    try:
        up = decode(data)
    except FedarenaError as exc:
        assert str(exc).startswith(("payload ", "upload ", "expected a Upload")), exc
        return "refused"
    assert_well_formed(up)
    return "accepted"


@st.composite
def mutated(draw) -> bytes:
    """An honest upload's encoding, cut, extended, overwritten, or with its JSON header rewritten."""
    return draw(mutated_bytes(canonical(encode(draw(honest()))), header=rewrite_header))


HEADER_VALUES = st.one_of(st.integers(-2**65, 2**65), st.text(max_size=6), st.none(), st.booleans(),
                          st.lists(st.integers(-2**40, 2**40), max_size=4), st.floats())


def rewrite_header(draw, data: bytes) -> bytes:
    """Parse the safetensors JSON header (when it still parses) and change one thing in it."""
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + n])
        assert isinstance(header, dict) and n <= len(data) - 8
    except (ValueError, AssertionError):
        return data
    names = sorted(header)
    name = draw(st.sampled_from(names)) if names else "__metadata__"
    what = draw(st.sampled_from(["dtype", "shape", "data_offsets", "drop", "value", "add", "whole"]))
    if what in ("dtype", "shape", "data_offsets") and isinstance(header.get(name), dict):
        header[name][what] = draw(st.one_of(
            HEADER_VALUES, st.sampled_from(["F32", "F64", "F16", "BF16", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3",
                                            "C64", "U64", "X"])))
    elif what == "drop":
        header.pop(name, None)
    elif what == "value":
        header[name] = draw(HEADER_VALUES)
    elif what == "add":
        header[draw(NAMES)] = {"dtype": "F32", "shape": draw(st.lists(st.integers(0, 2**33), max_size=3)),
                               "data_offsets": draw(st.lists(st.integers(0, 2**33), min_size=2, max_size=2))}
    else:
        header = draw(HEADER_VALUES)
    text = json.dumps(header, allow_nan=True, sort_keys=True).encode()
    return len(text).to_bytes(8, "little") + text + data[8 + n:]
