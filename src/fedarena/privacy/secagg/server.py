"""The server's side of one SecAgg round: collecting, forwarding and unmasking (Bonawitz et al., ACM CCS 2017,
Fig. 4, honest-but-curious variant: rounds 0 AdvertiseKeys, 1 ShareKeys, 2 MaskedInputCollection,
4 Unmasking; round 3, ConsistencyCheck, and the signatures exist only for an actively malicious server and
are NOT implemented), with the SecAgg+ graph of Bell et al., "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", ACM CCS 2020: each client shares secrets with and masks against only its k
neighbours in a graph the server draws.

Unmasking (round 4): the server sums y_u over the survivors U3, subtracts PRG(b_u) for u in U3 (b_u rebuilt
from t Shamir shares) and, for each v in U2 \\ U3, rebuilds s_v^SK from t shares and removes the orphaned
pairwise masks Delta_{u,v} PRG(s_{u,v}) of its neighbours u in U3. Pairwise masks between two survivors
cancel. The result is sum_{u in U3} x_u mod 2^bits, exactly.

SecAgg+ graph: a Harary graph H_{k,n} (each client linked to the k/2 nearest on each side of a ring; k even;
k-connected, every degree exactly k) over a uniformly random relabelling of the clients alive after
AdvertiseKeys, drawn from the server's secure randomness — the graph used by Flower's SecAgg+ and by the
reference simulations of Bell et al.; their analysis uses random graphs of degree O(log n).
``neighbours=None`` (or k >= n - 1) is the complete graph: SecAgg.

Dropouts: every stage needs at least t live clients (and, for each client, t live members of its
neighbourhood, itself included); otherwise ``SecAggAbort`` and no aggregate at all.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedarena.privacy import shamir
from fedarena.privacy.fixedpoint import storage_dtype
from fedarena.privacy.secagg.config import KEY_BYTES, MAX_ID, SecAggConfig, abort
from fedarena.privacy.secagg.crypto import Randomness, agree, derive, expand_mask, public
from fedarena.privacy.secagg.messages import AdvertiseKeys, EncryptedShares, KeyList, MaskedInput, UnmaskRequest, UnmaskShares


def harary_graph(ids: Iterable[int], k: int | None, randomness: Randomness) -> dict[int, frozenset[int]]:
    """Neighbours per client: complete graph if k is None or k >= n - 1, else H_{k,n} on a random ring."""
    order = sorted(ids)
    n = len(order)
    if k is None or k >= n - 1:
        return {u: frozenset(order) - {u} for u in order}
    for i in range(n - 1, 0, -1):  # Fisher-Yates with secure randomness
        j = randomness.below(i + 1)
        order[i], order[j] = order[j], order[i]
    links: dict[int, set[int]] = {u: set() for u in order}
    for i, u in enumerate(order):
        for offset in range(1, k // 2 + 1):
            v = order[(i + offset) % n]
            links[u].add(v)
            links[v].add(u)
    return {u: frozenset(vs) for u, vs in links.items()}


class Server:
    """The server's side of one round; ``receive_*`` take the clients' messages and return replies."""

    def __init__(self, config: SecAggConfig, randomness: Randomness | None = None) -> None:
        self.config = config
        self._rand = randomness or Randomness()
        self.keys: dict[int, tuple[bytes, bytes]] = {}
        self.graph: dict[int, frozenset[int]] = {}
        self.alive: dict[str, frozenset[int]] = {}
        self._masked: dict[int, np.ndarray] = {}
        self._requests: dict[int, UnmaskRequest] = {}

    def step(self, stage: str) -> Callable[[list[bytes]], Any]:
        """The method that takes the clients' messages of ``stage`` (one of ``STAGES``)."""
        return {
            "advertise_keys": self.receive_keys,
            "share_keys": self.receive_shares,
            "masked_input": self.receive_masked,
            "unmasking": self.receive_unmask,
        }[stage]

    def _need(self, stage: str, ids: Iterable[int]) -> frozenset[int]:
        ids = frozenset(ids)
        if len(ids) < self.config.threshold:
            raise abort(f"only {len(ids)} clients answered {stage}, threshold is {self.config.threshold}")
        self.alive[stage] = ids
        return ids

    def _parse(
        self, messages: Iterable[bytes], parser: Callable[[bytes], Any], allowed: frozenset[int] | None, stage: str
    ) -> dict[int, Any]:
        out = {}
        for data in messages:
            msg = parser(data)
            sender = msg.sender
            if msg.round_id != self.config.round_id:
                raise abort(f"{stage} message from client {sender} is for round {msg.round_id}")
            if sender in out or (allowed is not None and sender not in allowed) or sender > MAX_ID:
                raise abort(f"unexpected or repeated {stage} message from client {sender}")
            out[sender] = msg
        return out

    def receive_keys(self, messages: Iterable[bytes]) -> dict[int, bytes]:
        """Round 0: collect public keys (U1), draw the graph, send each client its neighbours' keys."""
        msgs = self._parse(messages, AdvertiseKeys.from_bytes, None, "advertise_keys")
        u1 = self._need("advertise_keys", msgs)
        self.keys = {u: (m.c_pk, m.s_pk) for u, m in msgs.items()}
        self.graph = harary_graph(u1, self.config.neighbours, self._rand)
        return {
            u: KeyList(self.config.round_id, tuple((v, b"".join(self.keys[v])) for v in sorted(vs))).to_bytes()
            for u, vs in self.graph.items()
        }

    def _check_groups(self, stage: str, alive: frozenset[int], holders: frozenset[int]) -> None:
        """Every client in ``alive`` needs t members of its group (itself included) in ``holders``."""
        for u in sorted(alive):
            have = len((self.graph[u] | {u}) & holders)
            if have < self.config.threshold:
                raise abort(f"client {u} has {have} live neighbours (itself included) after {stage}, "
                            f"threshold is {self.config.threshold}")

    def receive_shares(self, messages: Iterable[bytes]) -> dict[int, bytes]:
        """Round 1: collect encrypted shares (U2) and forward each to its receiver."""
        msgs = self._parse(messages, EncryptedShares.from_bytes, self.alive["advertise_keys"], "share_keys")
        for u, m in msgs.items():
            if {v for v, _ in m.ciphertexts} != self.graph[u]:
                raise abort(f"client {u} sent shares to clients other than its neighbours")
        u2 = self._need("share_keys", msgs)
        self._check_groups("share_keys", u2, u2)
        inbox: dict[int, list[tuple[int, bytes]]] = {v: [] for v in u2}
        for u in sorted(u2):
            for v, ct in msgs[u].ciphertexts:
                if v in u2:
                    inbox[v].append((u, ct))
        return {v: EncryptedShares(self.config.round_id, v, tuple(it)).to_bytes() for v, it in inbox.items()}

    def receive_masked(self, messages: Iterable[bytes]) -> dict[int, bytes]:
        """Round 2: collect masked inputs (U3); ask each survivor for self-mask or mask-key shares."""
        msgs = self._parse(messages, MaskedInput.from_bytes, self.alive["share_keys"], "masked_input")
        dims = {len(m.vector) for m in msgs.values()}
        if len(dims) > 1 or any(m.bits != self.config.bits for m in msgs.values()):
            raise abort(f"masked inputs disagree on length {sorted(dims)} or bits (need {self.config.bits})")
        u3 = self._need("masked_input", msgs)
        u2 = self.alive["share_keys"]
        self._check_groups("masked_input", u3, u3)
        self._masked = {u: m.vector for u, m in msgs.items()}
        for u in u3:
            group = (self.graph[u] | {u}) & u2
            survived, dropped = tuple(sorted(group & u3)), tuple(sorted(group - u3))
            self._requests[u] = UnmaskRequest(self.config.round_id, survived, dropped)
        return {u: r.to_bytes() for u, r in self._requests.items()}

    def receive_unmask(self, messages: Iterable[bytes]) -> np.ndarray:
        """Round 4: rebuild b_u (u in U3) and s_v^SK (v in U2 minus U3); return sum_{U3} x_u mod 2^bits."""
        msgs = self._parse(messages, UnmaskShares.from_bytes, self.alive["masked_input"], "unmasking")
        for u, m in msgs.items():
            asked = self._requests[u]
            if tuple(v for v, _ in m.self_mask) != asked.self_mask_ids or tuple(
                    v for v, _ in m.mask_key) != asked.mask_key_ids:
                raise abort(f"client {u} answered a different unmask request than it was sent")
        self._need("unmasking", msgs)
        self_mask = _collect(msgs, "self_mask")
        mask_key = _collect(msgs, "mask_key")
        bits, u3 = self.config.bits, self.alive["masked_input"]
        dim = len(next(iter(self._masked.values())))
        total = np.zeros(dim, dtype=storage_dtype(bits))
        for u in sorted(u3):
            total += self._masked[u]
            total -= expand_mask(self._secret(self_mask, u, "self-mask seed"), dim, bits)
        for v in sorted(v for v in self.alive["share_keys"] - u3 if self.graph[v] & u3):
            self._remove_pairwise(total, v, self._secret(mask_key, v, "mask key"))
        return total & total.dtype.type((1 << bits) - 1)

    def _secret(self, shares: Mapping[int, dict[int, bytes]], owner: int, what: str) -> bytes:
        held = shares.get(owner, {})
        if len(held) < self.config.threshold:
            t = self.config.threshold
            raise abort(f"only {len(held)} shares of client {owner}'s {what} arrived, threshold is {t}")
        first = dict(sorted(held.items())[: self.config.threshold])
        return shamir.reconstruct_bytes({h + 1: s for h, s in first.items()}, KEY_BYTES)

    def _remove_pairwise(self, total: np.ndarray, v: int, raw_key: bytes) -> None:
        """Subtract Delta_{u,v} PRG(s_{u,v}) that survivors u added for the dropped neighbour v."""
        key = X25519PrivateKey.from_private_bytes(raw_key)
        if public(key) != self.keys[v][1]:
            raise abort(f"the rebuilt mask key of client {v} does not match its advertised public key")
        for u in sorted(self.graph[v] & self.alive["masked_input"]):
            shared = agree(key, self.keys[u][1], "server")
            seed = derive(shared, b"pairwise-mask", self.config.round_id, u, v)
            mask = expand_mask(seed, len(total), self.config.bits)
            if u > v:
                total -= mask
            else:
                total += mask


def _collect(msgs: Mapping[int, UnmaskShares], kind: str) -> dict[int, dict[int, bytes]]:
    """{owner: {holder: share}} from the unmask responses."""
    out: dict[int, dict[int, bytes]] = {}
    for holder, m in msgs.items():
        for owner, share in getattr(m, kind):
            out.setdefault(owner, {})[holder] = share
    return out
