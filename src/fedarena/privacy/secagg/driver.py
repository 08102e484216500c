"""The one SecAgg stage driver: a `Server` and its clients through advertise_keys, share_keys, masked_input
and unmasking (Bonawitz et al., ACM CCS 2017, Fig. 4 rounds 0, 1, 2, 4; SecAgg+ of Bell et al., ACM CCS 2020),
over any transport.

``exchange(stage, outgoing)`` delivers the server's message of ``stage`` to each client in ``outgoing``
(empty bytes for advertise_keys, which asks for the keys) and returns the bytes of the clients that
answered; a client missing from the reply has dropped out for the rest of the round. The in-process
simulation (`run_secagg`) passes an exchange that calls local `Client` objects; the Flower runtime
(`fedarena.flower.secagg_stages`) passes one that sends Flower messages. A reply from a client that was not
asked, or whose embedded sender id is another client, is dropped (logged). The driver counts each
client's bytes per stage (`StageBytes`) from the blobs actually exchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np

from fedarena.core.types import FedarenaError
from fedarena.privacy.secagg.client import Client
from fedarena.privacy.secagg.config import STAGES, SecAggConfig, log
from fedarena.privacy.secagg.crypto import Randomness
from fedarena.privacy.secagg.messages import MaskedInput, StageBytes, sender_of
from fedarena.privacy.secagg.server import Server

Exchange = Callable[[str, dict[int, bytes]], Mapping[int, bytes]]  # (stage, blob per client) -> replies' blobs

_BYTE_FIELDS = {  # stage -> (StageBytes field of the clients' replies, of the server's next messages)
    "advertise_keys": ("advertise_up", "keys_down"),
    "share_keys": ("shares_up", "shares_down"),
    "masked_input": ("masked_up", "request_down"),
    "unmasking": ("unmask_up", None),
}


@dataclass(frozen=True, eq=False)
class SecAggResult:
    """One round: ``sum`` = sum of the survivors' inputs mod 2^bits (wire dtype)."""

    sum: np.ndarray
    bits: int
    survivors: frozenset[int]  # U3: exactly the clients whose inputs are in ``sum``
    stage_clients: dict[str, frozenset[int]]  # who answered each stage (U1, U2, U3, U5)
    neighbours: dict[int, frozenset[int]]
    bytes_per_client: dict[int, StageBytes]
    client_seconds: dict[str, float]  # per stage: inside ``exchange`` (the clients' work and the transport)
    server_seconds: dict[str, float]  # per stage: the server's own steps
    seeded: bool  # True: deterministic TEST mode — keys and masks are not secret
    masked: dict[int, np.ndarray] | None = field(default=None)

    @property
    def seconds(self) -> float:
        """The whole protocol's time: exchanges and server steps."""
        return sum(self.client_seconds.values()) + sum(self.server_seconds.values())

    def summary(self) -> dict[str, object]:
        n = len(self.stage_clients.get("advertise_keys", ()))
        degree = max((len(v) for v in self.neighbours.values()), default=0)
        return {
            "protocol": "SecAgg+" if degree < n - 1 else "SecAgg",
            "bits": self.bits,
            "survivors": len(self.survivors),
            "seeded_test_mode": self.seeded,
            "overhead_up_bytes": sum(b.overhead_up for b in self.bytes_per_client.values()),
            "overhead_down_bytes": sum(b.overhead_down for b in self.bytes_per_client.values()),
            "masked_up_bytes": sum(b.masked_up for b in self.bytes_per_client.values()),
        }


def run_stages(
    config: SecAggConfig,
    participants: Iterable[int],
    exchange: Exchange,
    *,
    randomness: Randomness | None = None,
    keep_masked: bool = False,
) -> SecAggResult:
    """Drive one round between a `Server` (``randomness``: the OS's by default) and ``participants``
    reached through ``exchange``. Raises ``SecAggAbort`` when fewer than t clients (or neighbours) remain."""
    server = Server(config, randomness)
    ids = sorted(set(participants))
    counts = {u: dict.fromkeys(StageBytes.__dataclass_fields__, 0) for u in ids}
    client_seconds, server_seconds = dict.fromkeys(STAGES, 0.0), dict.fromkeys(STAGES, 0.0)
    outgoing: dict[int, bytes] = {u: b"" for u in ids}
    total: np.ndarray | None = None
    masked: dict[int, np.ndarray] | None = None
    for stage in STAGES:
        up, down = _BYTE_FIELDS[stage]
        start = time.perf_counter()
        replies = exchange(stage, dict(outgoing))
        client_seconds[stage] = time.perf_counter() - start
        uploads = _checked(stage, outgoing, replies)
        for u, data in uploads.items():
            counts[u][up] += len(data)
        if stage == "masked_input" and keep_masked:
            masked = {u: MaskedInput.from_bytes(d).vector for u, d in uploads.items()}
        start = time.perf_counter()
        reply = server.step(stage)(list(uploads.values()))
        server_seconds[stage] = time.perf_counter() - start
        if down is None:
            total = reply
        else:
            outgoing = reply
            for u, data in outgoing.items():
                counts[u][down] += len(data)
    assert total is not None
    return SecAggResult(
        sum=total,
        bits=config.bits,
        survivors=server.alive["masked_input"],
        stage_clients=dict(server.alive),
        neighbours=dict(server.graph),
        bytes_per_client={u: StageBytes(**c) for u, c in counts.items()},
        client_seconds=client_seconds,
        server_seconds=server_seconds,
        seeded=randomness is not None and randomness.seeded,
        masked=masked,
    )


def _checked(stage: str, asked: Mapping[int, bytes], replies: Mapping[int, bytes]) -> dict[int, bytes]:
    """The replies of clients that were asked and name themselves as sender, in client order."""
    out = {}
    for u, blob in sorted(replies.items()):
        if u not in asked or not isinstance(blob, bytes) or sender_of(blob) != u:
            log.warning("secagg: dropped a %s reply from client %s (not asked, or naming another sender)", stage, u)
            continue
        out[u] = blob
    return out


# --- the in-process simulation ------------------------------------------------------------------


def _check_run_inputs(vectors: Mapping[int, np.ndarray], dropouts: Mapping[str, set[int]]) -> None:
    unknown = set(dropouts) - set(STAGES)
    if unknown:
        raise FedarenaError(f"secagg dropouts: unknown stages {sorted(unknown)}, expected some of {STAGES}")
    stray = set().union(*dropouts.values()) - set(vectors) if dropouts else set()
    if stray:
        raise FedarenaError(f"secagg dropouts name clients {sorted(stray)} that have no vector")
    if len({np.shape(v) for v in vectors.values()}) != 1:
        raise FedarenaError("secagg: all client vectors must have the same shape")


def run_secagg(
    vectors: Mapping[int, np.ndarray],
    *,
    threshold: int,
    bits: int,
    neighbours: int | None = None,
    dropouts: Mapping[str, set[int]] | None = None,
    seed: int | None = None,
    round_id: int = 0,
    keep_masked: bool = False,
) -> SecAggResult:
    """Run one round between in-process ``Client``s and a ``Server`` that exchange only bytes.

    ``vectors``: client id -> fixed-point encoded 1-D unsigned vector (see ``fixedpoint``).
    ``dropouts``: stage -> clients that stop answering at that stage (they answered the earlier ones).
    ``seed``: None (default) uses OS randomness; an int gives the deterministic test mode.
    Raises ``SecAggAbort`` when fewer than ``threshold`` clients (or neighbours) remain at any stage.
    """
    dropouts = dict(dropouts or {})
    config = SecAggConfig(threshold, bits, neighbours, round_id)
    config.validate(len(vectors))
    _check_run_inputs(vectors, dropouts)
    if seed is not None:
        log.warning("secagg runs in the seeded TEST mode: keys and masks are deterministic, not secret")
    server_randomness = Randomness.for_party(seed, f"round/{round_id}/server")
    clients = {u: Client(u, config, Randomness.for_party(seed, f"round/{round_id}/client/{u}")) for u in vectors}
    alive = set(clients)

    def exchange(stage: str, outgoing: dict[int, bytes]) -> dict[int, bytes]:
        alive.difference_update(dropouts.get(stage, ()))
        return {u: clients[u].answer(stage, outgoing[u], vectors[u]) for u in sorted(outgoing) if u in alive}

    return run_stages(config, clients, exchange, randomness=server_randomness, keep_masked=keep_masked)
