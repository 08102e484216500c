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
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedarena.core.types import ClientState, FedarenaError, ServerState, Upload

KEEP = ("none", "server", "all")


def encode_state(state: ServerState | ClientState, **meta: str) -> bytes:
    tensors = {f"params/{k}": v.detach().cpu().contiguous() for k, v in state.params.items()}
    tensors |= {f"extra/{k}": v.detach().cpu().contiguous() for k, v in state.extra.items()}
    if not tensors:
        tensors = {"empty": torch.zeros(0)}  # safetensors needs a tensor; marks an empty state
    return st_save(tensors, metadata=meta or None)


def decode_state(payload: bytes, kind: type[ServerState] | type[ClientState], what: str) -> ServerState | ClientState:
    try:
        tensors = st_load(payload)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise FedarenaError(f"{what} is not a valid safetensors file: {exc}") from None
    params = {k[7:]: v for k, v in sorted(tensors.items()) if k.startswith("params/")}
    extra = {k[6:]: v for k, v in sorted(tensors.items()) if k.startswith("extra/")}
    if kind is ServerState:
        n = int.from_bytes(payload[:8], "little")
        rnd = int(json.loads(payload[8 : 8 + n]).get("__metadata__", {}).get("round", "0"))
        return ServerState(params=params, round=rnd, extra=extra)
    return ClientState(params=params, extra=extra)


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
    """One algorithm's forget material read back from a run directory."""

    root: Path
    keep: str

    def server(self, rnd: int) -> ServerState:
        path = self.root / f"server-r{rnd:04d}.safetensors"
        if not path.is_file():
            raise FedarenaError(f"{path} is missing: the run kept no server checkpoint for round {rnd}")
        return decode_state(path.read_bytes(), ServerState, str(path))

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
        return None if not best else decode_state(best[-1].read_bytes(), ClientState, str(best[-1]))

    def norms(self) -> dict[int, dict[str, Any]]:
        path = self.root / "norms.json"
        if not path.is_file():
            raise FedarenaError(f"{path} is missing: the run kept no update norms (forget.keep=none)")
        try:
            return {int(r): v for r, v in json.loads(path.read_text()).items()}
        except (ValueError, AttributeError) as exc:
            raise FedarenaError(f"{path} is malformed: {exc}") from None

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.iterdir() if p.is_file())
