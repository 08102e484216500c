"""What training keeps so that a client can be forgotten later, and reading it back.

Kept per algorithm under ``forget/<algorithm>/`` in the run directory (`forget.keep`):
- ``server-rNNNN.safetensors``: the server state after round NNNN (``r0000``: before training) — lets exact
  retraining resume from the last round before the forgotten client first took part;
- ``norms.json``: per round, per client that uploaded: its weight and the L2 norm of its update of each
  shared tensor (upload - broadcast). FedEraser's calibration (Liu et al. 2021, Eq. 3) uses only these
  norms of the stored updates, so fedarena keeps the norms rather than the full updates;
- with ``keep = "all"`` also ``client-<id>-rNNNN.safetensors``: a client's state after each round it took
  part in (personal layers, personal models): exact retraining from a mid-run checkpoint and FedEraser's
  calibration of personalized algorithms need them.
Everything is safetensors or JSON; nothing is pickled.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, overload

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedarena.core.params import split
from fedarena.core.types import ClientState, FedarenaError, Params, ServerState, Upload

KEEP = ("none", "server", "all")


def encode_state(state: ServerState | ClientState, **meta: str) -> bytes:
    tensors = {f"params/{k}": v.detach().cpu().contiguous() for k, v in state.params.items()}
    tensors |= {f"extra/{k}": v.detach().cpu().contiguous() for k, v in state.extra.items()}
    if not tensors:
        tensors = {"empty": torch.zeros(0)}  # safetensors needs a tensor; marks an empty state
    return st_save(tensors, metadata=meta or None)


@overload
def decode_state(payload: bytes, kind: type[ServerState], what: str, like: Params | None = None) -> ServerState: ...
@overload
def decode_state(payload: bytes, kind: type[ClientState], what: str, like: Params | None = None) -> ClientState: ...


def decode_state(payload: bytes, kind: type[ServerState] | type[ClientState], what: str,
                 like: Params | None = None) -> ServerState | ClientState:
    """A kept state; FedarenaError naming `what` when it is not one. With `like`, its params must have exactly
    these keys, shapes and dtypes (the algorithm's: a state that does not fit would fail in training)."""
    try:
        tensors = st_load(payload)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise FedarenaError(f"{what} is not a valid safetensors file: {exc}") from None
    params = {k[7:]: v for k, v in sorted(tensors.items()) if k.startswith("params/")}
    extra = {k[6:]: v for k, v in sorted(tensors.items()) if k.startswith("extra/")}
    if like is not None:
        _check_like(params, like, what)
    if kind is ServerState:
        n = int.from_bytes(payload[:8], "little")
        raw = json.loads(payload[8 : 8 + n]).get("__metadata__", {}).get("round", "0")  # safetensors checked it
        try:
            rnd = int(raw)
        except ValueError:
            rnd = -1
        if rnd < 0:
            raise FedarenaError(f"{what}: its round metadata must be an integer >= 0, got {raw!r}")
        return ServerState(params=params, round=rnd, extra=extra)
    return ClientState(params=params, extra=extra)


def _check_like(params: Params, like: Params, what: str) -> None:
    if params.keys() != like.keys():
        missing, unknown = sorted(like.keys() - params.keys()), sorted(params.keys() - like.keys())
        raise FedarenaError(f"{what} does not hold the algorithm's parameters (missing: {', '.join(missing) or 'none'}; "
                            f"unknown: {', '.join(unknown) or 'none'})")
    for key, ref in like.items():
        got = params[key]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise FedarenaError(f"{what}: params/{key} is {got.dtype} of shape {tuple(got.shape)}, expected {ref.dtype} "
                                f"of shape {tuple(ref.shape)}")


@dataclass
class Recorder:
    """Collects one algorithm's forget material during training (the engine's `record` hook)."""

    keep: str
    client_ids: tuple[str, ...]
    updates_visible: bool = True  # False under secure aggregation: single updates never reach the server
    files: dict[str, bytes] = field(default_factory=dict)
    norms: dict[int, dict[str, Any]] = field(default_factory=dict)

    def start(self, server: ServerState) -> None:
        if self.keep != "none":
            self.files["server-r0000.safetensors"] = encode_state(server, round="0")

    def __call__(self, rnd: int, before: ServerState, after: ServerState, uploads: dict[int, Upload],
                 states: dict[int, ClientState]) -> None:
        if self.keep == "none":
            return
        self.files[f"server-r{rnd:04d}.safetensors"] = encode_state(after, round=str(rnd))
        if self.updates_visible:
            self.norms[rnd] = self._norms(before, uploads)
        if self.keep == "all":
            for c, s in states.items():
                if s.params or s.extra:
                    self.files[f"client-{self.client_ids[c]}-r{rnd:04d}.safetensors"] = encode_state(s)

    def _norms(self, before: ServerState, uploads: dict[int, Upload]) -> dict[str, Any]:
        return {
            self.client_ids[c]: {
                "weight": u.num_samples,
                "norms": {k: float(torch.linalg.vector_norm((v - before.params[k]).double()))
                          for k, v in sorted(u.params.items()) if k in before.params},
            }
            for c, u in sorted(uploads.items())
        }

    def all_files(self) -> dict[str, bytes]:
        if self.keep == "none":
            return {}
        if not self.updates_visible:
            return dict(self.files)
        norms = json.dumps({str(r): v for r, v in sorted(self.norms.items())}, indent=1)
        return {**self.files, "norms.json": norms.encode()}


_CLIENT = re.compile(r"client-(?P<id>.+)-r(?P<round>\d{4})\.safetensors")


@dataclass(frozen=True)
class Stored:
    """One algorithm's forget material read back from a run directory. Where the algorithm is known (`of`), every
    state read must have its structure and `norms.json` may name only the run's clients and the keys it uploads."""

    root: Path
    keep: str
    server_like: Params | None = None  # the server state's params (an initial one's)
    client_like: Params | None = None  # a client state's params
    clients: tuple[str, ...] | None = None  # the run's client ids
    norm_keys: tuple[str, ...] | None = None  # the keys of each norms.json entry (Recorder._norms)

    @classmethod
    def of(cls, root: Path, keep: str, algo: Any, initial: Params, clients: tuple[str, ...]) -> "Stored":
        """The material of `algo`, trained from `initial` on `clients`."""
        server = algo.init_server(split(initial, algo.personal)[0]).params
        uploaded = sorted(k for k in server if k in initial and algo.personal(k) == algo.uploads_personal)
        return cls(root, keep, server, algo.init_client(initial).params, tuple(clients), tuple(uploaded))

    def server(self, rnd: int) -> ServerState:
        path = self.root / f"server-r{rnd:04d}.safetensors"
        if not path.is_file():
            raise FedarenaError(f"{path} is missing: the run kept no server checkpoint for round {rnd}")
        state = decode_state(path.read_bytes(), ServerState, str(path), self.server_like)
        if state.round != rnd:
            raise FedarenaError(f"{path} holds the server state of round {state.round}, not {rnd}")
        return state

    @cached_property
    def snapshots(self) -> dict[str, list[tuple[int, Path]]]:
        """Client id -> its (round, file) snapshots in round order, from one listing of the directory."""
        out: dict[str, list[tuple[int, Path]]] = {}
        for path in self.root.glob("client-*-r*.safetensors"):
            m = _CLIENT.fullmatch(path.name)
            if m:
                out.setdefault(m["id"], []).append((int(m["round"]), path))
        return {c: sorted(v) for c, v in out.items()}

    def client_state(self, client: str, rnd: int) -> ClientState | None:
        """The client's state after round `rnd`: its latest snapshot at or before it (None: initial)."""
        best = [path for r, path in self.snapshots.get(client, []) if r <= rnd]
        return None if not best else decode_state(best[-1].read_bytes(), ClientState, str(best[-1]), self.client_like)

    def norms(self) -> dict[int, dict[str, Any]]:
        """norms.json: round -> client id -> {"weight": its sample count > 0, "norms": {key: L2 norm >= 0}}."""
        path = self.root / "norms.json"
        if not path.is_file():
            raise FedarenaError(f"{path} is missing: the run kept no update norms (forget.keep=none)")
        try:
            out = {int(r): v for r, v in json.loads(path.read_text()).items()}
        except (ValueError, AttributeError, RecursionError) as exc:
            raise FedarenaError(f"{path} is malformed: {exc}") from None
        for rnd, per_client in out.items():
            if rnd < 1 or not isinstance(per_client, dict):
                raise FedarenaError(f"{path} is malformed: round {rnd} must be >= 1 and map client ids to norms")
            for cid, entry in per_client.items():
                if self.clients is not None and cid not in self.clients:
                    raise FedarenaError(f"{path}: round {rnd} names client {cid!r}, which is not one of the run's")
                if not _norms_entry(entry, self.norm_keys):
                    raise FedarenaError(f"{path}: round {rnd}, client {cid!r}: expected {{\"weight\": n >= 0 (> 0 with "
                                        f"norms), \"norms\": {{key: norm >= 0}}}} over {list(self.norm_keys or [])}, "
                                        f"got {str(entry)[:200]}")
        return out

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.iterdir() if p.is_file())


def _norms_entry(entry: Any, keys: tuple[str, ...] | None) -> bool:
    def number(x: Any, least: float) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and least <= x <= sys.float_info.max

    if not isinstance(entry, dict) or not isinstance(entry.get("norms"), dict):
        return False
    norms = entry["norms"]  # an upload of no tensor (every key personal) may weigh 0; one that FedEraser rescales may not
    return (number(entry.get("weight"), 1 if norms else 0) and (keys is None or sorted(norms) == list(keys))
            and all(number(v, 0) for v in norms.values()))
