"""The generic Flower ServerApp: any registered algorithm, driven by fedarena's one round loop.

`main` reads the fedarena config from the run config, asks every SuperNode to describe its client
(id, split sizes, label counts, input shape: no sample leaves a node), and runs each algorithm with
``run_algorithm(..., runtime=FlowerClients)``: the round loop, sampling, broadcast and aggregation
are the simulator's own; only the client work moves to the nodes. Personal state stays on the
nodes (the server holds none). `centralized` and `local` (nothing to federate) are skipped with a
logged note. The run directory (summary.json, metrics.parquet, config.toml) is written to the
run config's ``out-dir`` on the machine that runs the ServerApp, plus ``deployment.json`` with
Flower's per-exchange timings.

Faults: a round waits at most ``round-timeout`` seconds for train replies and aggregates the
survivors (validated replies only, see :mod:`fedarena.flower.records`). Evaluation needs every
training client: it waits up to ``eval-timeout`` seconds, re-describing nodes that (re)connect, so a
restarted SuperNode resumes with the personal state it kept on disk. A restarted ServerApp (`deploy --resume`) sends
its deploy's id and the checkpoint it continues from with every message (`FlowerClients._fields`): the nodes answer
with their state as of that checkpoint (`flower.common.NodeState`).

Privacy (`privacy.*` of the config, `deploy --secagg/--dp-*`): the same `Privacy` object as in simulation drives
the round (`Privacy.train_and_aggregate`), its noise and keys from the OS. Central DP is the server's step on
plain uploads (trusted server). Local DP and secure aggregation happen on the nodes (`train.private`, then
SecAgg's stages as `query.secagg_*` messages, each waiting up to ``round-timeout``; see
:mod:`fedarena.flower.secagg_stages`): under SecAgg the server receives only masked vectors, keys and shares,
and the ledger counts the masked vector as the upload.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from flwr.app import Message
from flwr.serverapp import Grid

from fedarena.core.codec import Ledger, encode
from fedarena.core.types import Broadcast, ClientState, FedarenaError, Params, Upload
from fedarena.flower import common, messages, records, secagg_stages
from fedarena.flower.described import Described
from fedarena.privacy.encoding import ClientPrivacy
from fedarena.sim.runtime import ClientEval, OnboardEval

log = logging.getLogger(__name__)
Key = int  # a client index


@dataclass(frozen=True)
class Settings:
    """The deployment's knobs, from the Flower run config."""

    config: str
    out_dir: str
    expect_nodes: int
    round_timeout: float = 60.0
    eval_timeout: float = 120.0
    start_timeout: float = 120.0
    poll: float = 0.05
    engine: str = "flower"  # "flower-sim" on Flower's simulation runtime (virtual SuperNodes)
    resume: bool = False  # finish the interrupted deploy of `out_dir` (experiments/deploy_resume.py)

    @classmethod
    def from_run_config(cls, rc: Mapping[str, Any]) -> "Settings":
        def get(key: str, kind: type, default: Any = None) -> Any:
            if key not in rc:
                if default is None:
                    raise FedarenaError(f"run config lacks '{key}'")
                return default
            return kind(rc[key])

        return cls(config=get(messages.CONFIG, str), out_dir=get(messages.OUT_DIR, str),
                   expect_nodes=get(messages.EXPECT_NODES, int), round_timeout=get(messages.ROUND_TIMEOUT, float, 60.0),
                   eval_timeout=get(messages.EVAL_TIMEOUT, float, 120.0),
                   start_timeout=get(messages.START_TIMEOUT, float, 120.0), engine=get(messages.ENGINE, str, "flower"),
                   resume=get(messages.RESUME, bool, False))


@dataclass
class Link:
    """Messages to and from clients through the Grid, and which node serves which client."""

    grid: Grid
    settings: Settings
    seed: int = 0
    deployment: str = ""  # a deploy's id, sent with every message: the nodes keep its state under it
    clients: dict[Key, Described] = field(default_factory=dict)  # by client index
    order: dict[str, Key] = field(default_factory=dict)  # client id -> index, fixed by the first describe
    known_nodes: set[int] = field(default_factory=set)

    def exchange(self, messages: Mapping[Key, tuple[str, Any]], timeout: float,
                 follow_reconnects: bool = False) -> tuple[dict[Key, Message], float]:
        """Send (message type, content) to each client's node; replies with content within `timeout`
        seconds, and the wall time. Error replies are logged; with `follow_reconnects`, clients whose
        node reconnects under a new node id get their message again."""
        start = time.monotonic()
        pending = self._push({k: m for k, m in messages.items()}, timeout)
        replies: dict[Key, Message] = {}
        errors: dict[Key, str] = {}
        last_check = start
        while pending and time.monotonic() - start < timeout:
            for reply in self.grid.pull_messages(list(pending)):
                key = pending.get(reply.metadata.reply_to_message_id)
                if key is None:
                    continue
                if reply.has_content():
                    replies[key] = reply
                    del pending[reply.metadata.reply_to_message_id]
                else:
                    errors[key] = str(reply.error.reason)
            if follow_reconnects and pending and time.monotonic() - last_check > 2.0:
                last_check = time.monotonic()
                moved = self.refresh()
                again = {k for k in pending.values() if k in moved}
                if again:
                    pending = {mid: k for mid, k in pending.items() if k not in again}
                    pending.update(self._push({k: messages[k] for k in again}, timeout))
            if pending:
                time.sleep(self.settings.poll)
        for key in set(pending.values()):
            log.warning("client %s sent no reply within %.0f s%s", self._name(key), timeout,
                        f" ({errors[key]})" if key in errors else "")
        return replies, time.monotonic() - start

    def _push(self, messages: Mapping[Key, tuple[str, Any]], timeout: float) -> dict[str, Key]:
        keys = list(messages)
        out = [Message(messages[k][1], dst_node_id=self.clients[k].node_id if k in self.clients else k,
                       message_type=messages[k][0], ttl=timeout + 30.0) for k in keys]
        ids = list(self.grid.push_messages(out))
        return {mid: k for mid, k in zip(ids, keys) if mid}

    def _name(self, key: Key) -> str:
        return self.clients[key].client_id if key in self.clients else f"node {key}"

    def describe(self, node_ids: list[int], timeout: float) -> list[Described]:
        """Ask these nodes (keyed by node id here) who they are."""
        msgs = {n: (messages.DESCRIBE, records.content({messages.SEED: self.seed})) for n in node_ids}
        saved, self.clients = self.clients, {}
        try:
            replies, _ = self.exchange(msgs, timeout)
        finally:
            self.clients = saved
        out = []
        for node_id, reply in replies.items():
            try:
                out.append(Described.parse(node_id, records.fields(reply)))
            except (FedarenaError, KeyError, TypeError, ValueError) as exc:
                log.warning("node %d: bad describe reply: %s", node_id, exc)
        return out

    def start(self, expect: int) -> None:
        """Wait for `expect` nodes, describe them and fix the client order."""
        deadline = time.monotonic() + self.settings.start_timeout
        while len(nodes := sorted(self.grid.get_node_ids())) < expect:
            if time.monotonic() > deadline:
                raise FedarenaError(f"only {len(nodes)} of {expect} SuperNodes connected within "
                                    f"{self.settings.start_timeout:.0f} s")
            time.sleep(0.2)
        described = self.describe(nodes, self.settings.start_timeout)
        ids = [d.client_id for d in described]
        if len(set(ids)) != len(ids):
            raise FedarenaError(f"two SuperNodes serve the same client: {sorted(ids)}")
        if len(described) < expect:
            raise FedarenaError(f"only {len(described)} of {expect} SuperNodes described their client")
        if all(d.index >= 0 for d in described):  # embedded data: the partition id is the index
            if sorted(d.index for d in described) != list(range(len(described))):
                raise FedarenaError(f"partition ids {sorted(d.index for d in described)} are not 0..{len(described) - 1}")
            self.order = {d.client_id: d.index for d in described}
        else:  # npz-dir: clients in sorted file-stem order, as load_npz_dir orders them
            self.order = {cid: i for i, cid in enumerate(sorted(ids))}
        self.clients = {self.order[d.client_id]: d for d in described}
        self.known_nodes = set(nodes)

    def refresh(self) -> set[Key]:
        """Describe nodes that connected since; returns the clients now served by a new node."""
        new = sorted(set(self.grid.get_node_ids()) - self.known_nodes)
        if not new:
            return set()
        moved = set()
        for d in self.describe(new, min(self.settings.round_timeout, 30.0)):
            self.known_nodes.add(d.node_id)
            key = self.order.get(d.client_id)
            if key is None:
                log.warning("node %d serves unknown client %s; ignored", d.node_id, d.client_id)
                continue
            log.info("client %s reconnected as node %d", d.client_id, d.node_id)
            self.clients[key] = d
            moved.add(key)
        return moved


class FlowerClients:
    """The runtime (`sim.runtime.Runtime`) whose clients' work runs on their SuperNodes. With `fetch_states`
    (flower-sim, whose virtual nodes do not outlive the run) `close` fetches every training client's final
    state from its node into `states`; otherwise personal state never leaves the nodes."""

    pooled = False
    protects_updates = True  # local DP and SecAgg run on the nodes (privacy/round.Privacy.train_and_aggregate)
    transport = "flower messages"

    def __init__(self, link: Link, algo: Any, task: Any, training: list[int], full: Params, seed: int,
                 num_classes: int, dpsgd: Any = None, fetch_states: bool = False) -> None:
        self.link, self.algo, self.task, self.seed, self.num_classes = link, algo, task, seed, num_classes
        self.ledger = Ledger()
        self.dpsgd = dpsgd  # privacy/dpsgd.SampleLevel accounting the nodes' DP-SGD steps, or None
        self.fetch_states = fetch_states
        self.ids = list(training)
        self.model = full  # shapes and dtypes every upload must match
        self.states: dict[int, ClientState] = {}  # personal state lives on the nodes (fetched only by flower-sim)
        self.exchanges: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        self.onboard_bytes = 0
        self.state_bytes: dict[int, int] = {}  # per client, as its node reports it
        # the round before the first this runtime trains: the server's checkpoint it continues from (0: a fresh start;
        # the engine sends train messages in every round, from the one after its checkpoint)
        self.from_round: int | None = None

    def _fields(self, rnd: int, c: int) -> dict[str, Any]:
        deployment = {messages.DEPLOYMENT: self.link.deployment} if self.link.deployment else {}
        return {messages.ALGORITHM: self.algo.name, messages.SEED: self.seed, messages.ROUND: rnd, messages.CLIENT: c,
                messages.NUM_CLASSES: self.num_classes, messages.FROM_ROUND: self.from_round or 0, **deployment}

    def _send_train(self, rnd: int, broadcasts: dict[int, Broadcast],
                    protect: ClientPrivacy | None) -> tuple[dict[int, Message], float]:
        """Broadcasts out (`train`, or `train.private` with the round's ClientPrivacy), replies in."""
        if self.from_round is None:
            self.from_round = rnd - 1
        self.link.refresh()
        extra = secagg_stages.privacy_fields(protect) if protect else {}
        msgs = {}
        for c, b in broadcasts.items():
            data = encode(b)
            self.ledger.record(rnd, c, "down", len(data))
            kind = messages.TRAIN_PRIVATE if protect else messages.TRAIN
            msgs[c] = (kind, records.content({**self._fields(rnd, c), **extra}, data))
        return self.link.exchange(msgs, self.link.settings.round_timeout)

    def train_secure(self, rnd: int, broadcasts: dict[int, Broadcast],
                     cp: ClientPrivacy) -> Any:  # -> secagg.SecAggResult
        """A SecAgg round: train + AdvertiseKeys, then the protocol's stages; only its sum comes back."""
        replies, wall = self._send_train(rnd, broadcasts, cp)
        advertised, compute = {}, []
        for c in sorted(replies):
            try:
                r = records.fields(replies[c])
                advertised[c] = records.payload(r, messages.SECAGG)
                compute.append(self._reply_facts(rnd, c, r))
            except FedarenaError as exc:
                log.warning("round %d: rejected the reply of client %s: %s", rnd, self.link.clients[c].client_id, exc)
                self.rejected.append({"round": rnd, "client": self.link.clients[c].client_id, "reason": str(exc)})
        self._note("train", rnd, wall, compute, len(broadcasts), len(advertised))
        result = secagg_stages.run_server(cp, advertised, lambda stage, out: self._stage(rnd, stage, out))
        for c in sorted(result.survivors):
            self.ledger.record(rnd, c, "up", result.bytes_per_client[c].masked_up)
        return result

    def _reply_facts(self, rnd: int, c: int, r: Any) -> float:
        """What a train reply reports beside its payload: the node's compute seconds (returned), the size of the
        state it keeps and, under DP-SGD, the steps it took and its sampling rate q (counted for its epsilon
        even if the upload is then rejected: its data was used)."""
        compute = float(records.number(r, messages.COMPUTE_S, float, least=0))
        self.state_bytes[c] = int(records.number(r, messages.STATE_BYTES, least=0))
        if self.dpsgd is not None:
            self.dpsgd.record(rnd, c, int(records.number(r, messages.DPSGD_STEPS)),
                              float(records.number(r, messages.DPSGD_RATE, float)))
        return compute

    def _stage(self, rnd: int, stage: str, outgoing: dict[int, bytes]) -> dict[int, bytes]:
        """One SecAgg stage: a blob to each client, the blobs of those that answered in time."""
        msgs = {c: (messages.SECAGG_TYPES[stage],
                    records.content(self._fields(rnd, c), **{messages.SECAGG: blob})) for c, blob in outgoing.items()}
        replies, wall = self.link.exchange(msgs, self.link.settings.round_timeout)
        out = {}
        for c, reply in replies.items():
            try:
                out[c] = records.payload(records.fields(reply), messages.SECAGG)
            except FedarenaError as exc:
                log.warning("round %d: bad %s reply from client %s: %s", rnd, stage, self.link.clients[c].client_id, exc)
        self._note(stage, rnd, wall, [], len(outgoing), len(out))
        return out

    def train(self, rnd: int, broadcasts: dict[int, Broadcast],
              protect: ClientPrivacy | None = None) -> dict[int, Upload]:
        replies, wall = self._send_train(rnd, broadcasts, protect)
        uploads, compute = {}, []
        for c in sorted(replies):
            try:
                r = records.fields(replies[c])
                compute.append(self._reply_facts(rnd, c, r))  # first: DP-SGD steps count even if the upload is bad
                data = records.payload(r)
                upload = records.decode_upload(data, self.model, self.algo.personal, self.algo.uploads_personal,
                                               self.link.clients[c].num_train)
            except FedarenaError as exc:
                log.warning("round %d: rejected the reply of client %s: %s", rnd, self.link.clients[c].client_id, exc)
                self.rejected.append({"round": rnd, "client": self.link.clients[c].client_id, "reason": str(exc)})
                continue
            self.ledger.record(rnd, c, "up", len(data))
            uploads[c] = upload
        missing = sorted(set(broadcasts) - set(uploads))
        if missing and self.dpsgd is not None:
            log.warning("round %d: no DP-SGD step count from %s (no valid reply): if they trained, their sample-level "
                        "epsilon is under-counted", rnd, [self.link.clients[c].client_id for c in missing])
        if missing:
            log.warning("round %d: aggregating %d of %d clients (no valid reply from %s)", rnd, len(uploads),
                        len(broadcasts), [self.link.clients[c].client_id for c in missing])
        if not uploads:
            raise FedarenaError(f"round {rnd}: no client sent a valid reply within {self.link.settings.round_timeout:.0f} s")
        self._note("train", rnd, wall, compute, len(broadcasts), len(uploads))
        return uploads

    def evaluate(self, rnd: int, broadcasts: dict[int, Broadcast], global_params: Params | None,
                 membership: bool = False) -> dict[int, ClientEval]:
        """(`membership`: measured in simulation only; a deployment's clients do not report it.)"""
        g = records.encode_params(global_params)
        msgs = {c: (messages.EVALUATE, records.content(self._fields(rnd, c), encode(b), **{messages.GLOBAL: g}))
                for c, b in broadcasts.items()}
        replies, wall = self.link.exchange(msgs, self.link.settings.eval_timeout, follow_reconnects=True)
        out, compute = {}, []
        for c, reply in replies.items():
            r = records.fields(reply)
            d = self.link.clients[c]
            acc, num_test = float(records.number(r, messages.ACC, float)), int(records.number(r, messages.NUM_TEST))
            gacc = float(records.number(r, messages.GLOBAL_ACC, float)) if messages.GLOBAL_ACC in r else None
            num_val = int(records.number(r, messages.NUM_VAL))
            vacc = float(records.number(r, messages.VAL_ACC, float)) if messages.VAL_ACC in r else None
            if (not 0 <= acc <= 1 or num_test != d.num_test or (gacc is None) != (global_params is None)
                    or num_val < 0 or (vacc is None) != (num_val == 0) or (vacc is not None and not 0 <= vacc <= 1)):
                raise FedarenaError(f"client {d.client_id} sent an inconsistent evaluation for round {rnd}")
            out[c] = ClientEval(acc, float(records.number(r, messages.LOSS, float)), num_test, gacc,
                                val_acc=vacc, num_val=num_val)
            compute.append(float(records.number(r, messages.COMPUTE_S, float)))
        missing = sorted(set(broadcasts) - set(out))
        if missing:  # the engine evaluates over the clients that answered and logs how many did not
            log.warning("round %d: clients %s did not reply to the evaluation within %.0f s", rnd,
                        [self.link.clients[c].client_id for c in missing], self.link.settings.eval_timeout)
        self._note("evaluate", rnd, wall, compute, len(broadcasts), len(out))
        return out

    def _note(self, kind: str, rnd: int, wall: float, compute: list[float], sent: int, replied: int) -> None:
        slowest = max(compute, default=0.0)
        self.exchanges.append({"kind": kind, "round": rnd, "wall_s": wall, "slowest_client_s": slowest,
                               "flower_overhead_s": max(0.0, wall - slowest), "sent": sent, "replied": replied})

    def onboard(self, broadcasts: dict[int, Broadcast], initial: Params) -> dict[int, OnboardEval]:
        """New clients download the shared state once (counted in `onboard_bytes`) and adapt on their nodes, from
        the run's initial model (which each node rebuilds from the seed, as `initial` was built)."""
        msgs = {}
        for c, b in broadcasts.items():
            data = encode(b)
            self.onboard_bytes += len(data)
            msgs[c] = (messages.ONBOARD, records.content(self._fields(0, c), data))
        replies, wall = self.link.exchange(msgs, self.link.settings.eval_timeout, follow_reconnects=True)
        out, compute = {}, []
        for c, reply in replies.items():
            r = records.fields(reply)
            before, after = float(records.number(r, messages.BEFORE, float)), float(records.number(r, messages.AFTER, float))
            steps = int(records.number(r, messages.STEPS))
            if not (0 <= before <= 1 and 0 <= after <= 1 and steps >= 0):
                raise FedarenaError(f"client {self.link.clients[c].client_id} sent an inconsistent onboarding reply")
            out[c] = OnboardEval(before, after, steps)
            compute.append(float(records.number(r, messages.COMPUTE_S, float)))
        missing = sorted(set(broadcasts) - set(out))
        if missing:
            raise FedarenaError(f"new clients {[self.link.clients[c].client_id for c in missing]} did not reply to "
                                f"onboarding within {self.link.settings.eval_timeout:.0f} s")
        self._note("onboard", 0, wall, compute, len(broadcasts), len(out))
        return out

    def close(self) -> None:
        """With `fetch_states`: every training client's final state, from its node (safetensors, validated)."""
        if not self.fetch_states or not self.exchanges:
            return
        msgs = {c: (messages.FETCH_STATE, records.content(self._fields(0, c))) for c in self.ids}
        replies, wall = self.link.exchange(msgs, self.link.settings.eval_timeout, follow_reconnects=True)
        expected = {k: v.shape for k, v in self.algo.init_client(self.model).params.items()}
        for c in sorted(replies):
            name = self.link.clients[c].client_id
            try:
                state = common.state_from_bytes(records.payload(records.fields(replies[c])))
            except Exception as exc:  # safetensors' own errors: a malformed reply, named
                raise FedarenaError(f"client {name} sent a malformed final state: {exc}") from None
            if {k: v.shape for k, v in state.params.items()} != expected:
                raise FedarenaError(f"client {name} sent a final state whose personal keys or shapes are not "
                                    f"{self.algo.name}'s")
            self.states[c] = state
        missing = sorted(set(self.ids) - set(replies))
        if missing:
            raise FedarenaError(f"clients {[self.link.clients[c].client_id for c in missing]} did not send their final "
                                f"state within {self.link.settings.eval_timeout:.0f} s")
        self._note("fetch-state", 0, wall, [], len(msgs), len(replies))

    def summary(self) -> dict[str, Any]:
        return flower_summary(self.exchanges, self.rejected, max(self.state_bytes.values(), default=0))


def flower_summary(exchanges: list[dict[str, Any]], rejected: list[dict[str, Any]], storage: int) -> dict[str, Any]:
    """`FlowerClients.summary()`: the exchanges, rejected replies, the largest state a node reported, the means."""
    def mean(kind: str, key: str) -> float | None:
        v = [e[key] for e in exchanges if e["kind"] == kind]
        return sum(v) / len(v) if v else None

    return {"runtime": "flower", "storage_bytes_per_client": storage,
            "train_wall_s_mean": mean("train", "wall_s"),
            "train_flower_overhead_s_mean": mean("train", "flower_overhead_s"),
            "evaluate_wall_s_mean": mean("evaluate", "wall_s"),
            "evaluate_flower_overhead_s_mean": mean("evaluate", "flower_overhead_s"),
            "exchanges": list(exchanges), "rejected": list(rejected)}


def joined_summary(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The `summary()` of one run from that of its rounds before a ServerApp restart and that of the rounds after."""
    return flower_summary(before["exchanges"] + after["exchanges"], before["rejected"] + after["rejected"],
                          max(before["storage_bytes_per_client"], after["storage_bytes_per_client"]))
