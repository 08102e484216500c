"""Secure aggregation and local DP on a Flower deployment: the SecAgg stages as Flower messages.

Protocol: Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning", ACM CCS
2017 (eprint 2017/281), Fig. 4 rounds 0 AdvertiseKeys, 1 ShareKeys, 2 MaskedInputCollection, 4 Unmasking,
with the SecAgg+ neighbourhood graph of Bell et al., ACM CCS 2020 (eprint 2020/704). The cryptography, the
messages and the one stage driver are :mod:`fedarena.privacy.secagg`; this module is the Flower transport
around them (message types and record keys from :mod:`fedarena.flower.messages`):

    message type                 server -> client                 client -> server
    train.private                Broadcast + ClientPrivacy        AdvertiseKeys (SecAgg) or a noised Upload
    query.secagg_share_keys      KeyList                          EncryptedShares
    query.secagg_masked_input    EncryptedShares (forwarded)      MaskedInput (y_u)
    query.secagg_unmask          UnmaskRequest                    UnmaskShares

The first message trains: the node computes its update against the broadcast (upload params minus the
broadcast's shared params), clips and noises it for local DP (noise from the OS), and under SecAgg encodes
(n_k/W * update, n_k/W) with the fixed point of the round (`privacy.encoding.encode_update`, the simulator's own
function). Only the masked vector and the protocol's keys and shares ever reach the server; personal keys are
never part of an upload, so they are neither masked nor sent.

Client secrets between stages: Flower 1.42 starts a fresh ClientApp process per message. Its
``context.state`` does persist between messages of a run (the SuperNode keeps the run's context in its
in-memory NodeState and takes the updated one back after each message: flwr/supernode/start_client_internal.py,
``set_run_series_context``), but it crosses the SuperNode's ClientAppIo API with every message and is lost when
the SuperNode restarts. The secrets are instead kept in one file per round under the node's ``state-dir``
(`SecretStore`: directory mode 0700, file mode 0600, written atomically): the client's export
(`secagg.Client.export_secrets`, restored with `secagg.Client.restore_secrets`, both validated) and, until
masking, the plain encoding; rewritten after each stage, deleted after unmasking; files of earlier rounds that
aborted are deleted when the next secure round starts on the node.

Dropouts: each stage waits `round-timeout` seconds; a node that does not answer is a dropout for the rest of
the round. The driver aborts (``SecAggAbort``) when fewer than t clients remain at any stage; the engine then
keeps the previous server state (privacy/round.py). A reply whose embedded sender id is not the client the node
serves is dropped.

Bytes: the per-stage byte counts of the summary (`StageBytes`) are the lengths of the protocol blobs the
Flower records actually carried (counted by the driver as sent and received); the ledger's upload is the
masked vector (what was carried instead of the plain upload).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from fedarena.core.types import Broadcast, FedarenaError, Upload
from fedarena.flower import messages as m
from fedarena.privacy import secagg

if TYPE_CHECKING:  # privacy.encoding (scipy) is imported only by the messages that need it: a
    from fedarena.privacy.encoding import ClientPrivacy  # ClientApp process starts per message

log = logging.getLogger(__name__)


# --- ClientPrivacy <-> record fields ------------------------------------------------------------


def privacy_fields(cp: ClientPrivacy) -> dict[str, int | float | bool]:
    """The round's ClientPrivacy as ConfigRecord scalars (``privacy-<field>``)."""
    return {m.PRIVACY_PREFIX + k: v for k, v in dataclasses.asdict(cp).items()}


def privacy_from_fields(record: Mapping[str, Any]) -> ClientPrivacy:
    """The inverse of `privacy_fields`, type-checked; FedarenaError names the first bad entry."""
    from fedarena.privacy.encoding import ClientPrivacy

    values: dict[str, Any] = {}
    for f in dataclasses.fields(ClientPrivacy):
        # annotations are strings under `from __future__ import annotations`
        name, kind = f.name, str(getattr(f.type, "__name__", f.type))
        value = record.get(m.PRIVACY_PREFIX + name)
        ok = {"bool": isinstance(value, bool), "int": isinstance(value, int) and not isinstance(value, bool),
              "float": isinstance(value, (int, float)) and not isinstance(value, bool)}[kind]
        if not ok:
            raise FedarenaError(f"record entry {m.PRIVACY_PREFIX + name!r} must be a {kind}, got {value!r}")
        values[name] = float(value) if kind == "float" else value  # type: ignore[arg-type]  # checked: a number
    cp = ClientPrivacy(**values)
    if cp.dp_clip < 0 or cp.dp_noise < 0 or cp.clients < 1 or cp.max_weight < 1:
        raise FedarenaError(f"inconsistent client privacy settings: {cp}")
    if cp.skellam_clip < 0 or cp.skellam_scale < 0 or cp.skellam_variance < 0 or (cp.skellam_clip > 0) != (
            cp.skellam_scale > 0):
        raise FedarenaError(f"inconsistent client privacy settings: {cp}")
    if cp.secagg:
        cp.secagg_config().validate(cp.clients)
        if not cp.skellam_clip:
            cp.fixed_point()  # refuses a capacity overflow
    return cp


# --- the node's update, protected before it leaves ------------------------------------------------


def protect(cp: ClientPrivacy, broadcast: Broadcast, upload: Upload, client: int,
            store: "SecretStore | None") -> tuple[bytes, bytes]:
    """(Upload payload, SecAgg blob) of a node's reply: local DP noises the update (OS noise); under SecAgg
    the update is encoded, stage 0 runs and only AdvertiseKeys leaves (the payload is empty)."""
    from fedarena.core.codec import encode
    from fedarena.privacy import dp
    from fedarena.privacy.encoding import client_delta, encode_update

    missing = sorted(set(upload.params) - set(broadcast.params))
    if missing:
        raise FedarenaError(f"upload keys {missing} are not in the broadcast: no reference for the update")
    ref = {k: broadcast.params[k] for k in upload.params}
    delta = client_delta(ref, upload.params, cp, dp.SecureNoise())
    if not cp.secagg:
        # no metrics: the training loss depends on the data and is not covered by the DP noise
        noised = Upload(params={k: ref[k] + delta[k] for k in delta}, num_samples=upload.num_samples)
        return encode(noised), b""
    if store is None:
        raise FedarenaError("secure aggregation needs the node config state-dir=PATH (where the round's secrets are kept)")
    # fixed point clips (the client-side range check); central DP clips to C and adds the client's Skellam share
    vector = encode_update(delta, upload.num_samples, cp, dp.SecureNoise())
    return b"", client_start(store, cp, client, vector)


# --- client secrets between stages --------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class NodeSecrets:
    """What a node keeps between two stages: the client's exported secrets, and the encoding until it is masked."""

    secrets: secagg.ClientSecrets
    vector: np.ndarray | None

    def to_bytes(self) -> bytes:
        arrays = {"secrets": np.frombuffer(self.secrets.to_bytes(), dtype=np.uint8).copy()}
        if self.vector is not None:
            arrays["vector"] = np.ascontiguousarray(self.vector)
        return save_arrays(arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> "NodeSecrets":
        """Safetensors only (nothing unpickled); the secrets are validated by `secagg.ClientSecrets.from_bytes`."""
        from safetensors import SafetensorError

        try:
            arrays = load_arrays(data)
        except (SafetensorError, ValueError, TypeError) as exc:
            raise FedarenaError(f"unreadable secagg secrets file: {exc}") from None
        if set(arrays) - {"secrets", "vector"} or "secrets" not in arrays or arrays["secrets"].dtype != np.uint8:
            raise FedarenaError(f"unreadable secagg secrets file: entries {sorted(arrays)}")
        vector = arrays.get("vector")
        if vector is not None and (vector.ndim != 1 or vector.dtype.kind != "u"):
            raise FedarenaError(f"unreadable secagg secrets file: vector of shape {vector.shape}, dtype {vector.dtype}")
        return cls(secagg.ClientSecrets.from_bytes(arrays["secrets"].tobytes()), vector)


class SecretStore:
    """One node's secagg secrets for (run, seed, algorithm): a 0600 file per round under a 0700 directory."""

    def __init__(self, state_dir: Path, run_id: int, seed: int, algorithm: str) -> None:
        self.dir = Path(state_dir) / "secagg" / f"run-{run_id}" / f"seed-{seed}" / algorithm

    def path(self, rnd: int) -> Path:
        return self.dir / f"round-{rnd}.secrets"

    def save(self, rnd: int, kept: NodeSecrets) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        tmp = self.dir / f".round-{rnd}.tmp-{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(kept.to_bytes())
        os.replace(tmp, self.path(rnd))

    def load(self, rnd: int) -> NodeSecrets:
        path = self.path(rnd)
        if not path.exists():
            raise secagg.SecAggAbort(f"secagg abort: this node holds no secrets for round {rnd} (restarted, or "
                                     "a stage arrived out of order)")
        return NodeSecrets.from_bytes(path.read_bytes())

    def delete(self, rnd: int) -> None:
        self.path(rnd).unlink(missing_ok=True)

    def purge_before(self, rnd: int) -> None:
        """Delete the secrets of earlier rounds (an aborted round never reaches unmasking)."""
        for path in self.dir.glob("round-*.secrets") if self.dir.exists() else ():
            if int(path.stem.removeprefix("round-")) < rnd:
                path.unlink(missing_ok=True)


def client_start(store: SecretStore, cp: ClientPrivacy, client: int, vector: np.ndarray) -> bytes:
    """Stage 0 on the node: fresh OS keys, AdvertiseKeys out, the secrets and the encoding kept."""
    store.purge_before(cp.round)
    c = secagg.Client(client, cp.secagg_config())
    message = c.advertise_keys()
    store.save(cp.round, NodeSecrets(c.export_secrets(), vector))
    return message


def client_step(store: SecretStore, rnd: int, stage: str, inbox: bytes) -> bytes:
    """A later stage on the node (share_keys, masked_input or unmasking, as `secagg.STAGES` names them): restore
    the client from its secrets, answer, keep its new secrets (or, after unmasking, delete them)."""
    if stage not in m.SECAGG_ACTIONS:
        raise FedarenaError(f"unknown secagg stage {stage!r}, expected one of {sorted(m.SECAGG_ACTIONS)}")
    kept = store.load(rnd)
    client = secagg.Client.restore_secrets(kept.secrets)
    if stage == "unmasking":
        try:
            return client.unmask(inbox)
        finally:
            store.delete(rnd)
    if stage == "masked_input" and kept.vector is None:
        raise FedarenaError(f"round {rnd}: no encoded update kept for the masked input")
    out = client.answer(stage, inbox, kept.vector)
    # after masking the plain encoding is no longer needed: not kept
    store.save(rnd, NodeSecrets(client.export_secrets(), kept.vector if stage == "share_keys" else None))
    return out


# --- the server's side ---------------------------------------------------------------------------


def run_server(cp: ClientPrivacy, advertised: dict[int, bytes], exchange: secagg.Exchange) -> secagg.SecAggResult:
    """The one stage driver (`secagg.run_stages`) with the AdvertiseKeys each client sent with its training reply
    as the first stage; ``exchange(stage, outgoing)`` delivers a later stage's messages (share_keys, masked_input,
    unmasking) as Flower messages and returns the blobs of the clients that answered.
    Raises ``SecAggAbort`` when too few clients remain."""

    def stages(stage: str, outgoing: dict[int, bytes]) -> Mapping[int, bytes]:
        if stage == secagg.STAGES[0]:  # already received, with the train.private replies
            return {c: advertised[c] for c in outgoing}
        return exchange(stage, outgoing)

    return secagg.run_stages(cp.secagg_config(), advertised, stages)


__all__ = ["NodeSecrets", "SecretStore", "client_start", "client_step", "privacy_fields", "privacy_from_fields",
           "protect", "run_server"]
