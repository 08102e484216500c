"""The generic Flower ClientApp: one SuperNode serves one fedarena client, for any algorithm.

A node loads only its own client's data, named by its node config (``flower-supernode
--node-config``):

- ``partition-id=I``: client I of an embedded dataset (digits, synthetic), partitioned as
  `compare` partitions it for the run's config and seed;
- ``npz-dir="PATH" client="STEM"``: ``PATH/train/STEM.npz`` and ``PATH/test/STEM.npz`` only;
- ``state-dir="PATH"``: where the node keeps its clients' state (personal keys, control
  variates, ...) between rounds, as safetensors files per (deployment, seed, algorithm, client). State
  never leaves the node and survives a SuperNode restart; it is kept per deployment (the id `fedarena deploy`
  sends with every message, else the Flower run's), so a ServerApp restarted with `deploy --resume` finds it,
  and it is stamped with its round so that the node answers with its state as of the server's checkpoint
  (`common.NodeState`).
- a virtual SuperNode of Flower's simulation runtime (`--engine flower-sim`) has only
  ``partition-id`` and ``num-partitions``: it serves client I (for npz-dir data, the I-th file stem
  in sorted order) and keeps its state, as the same safetensors bytes, in the node's
  ``context.state``, which the simulation runtime holds per virtual node between messages.
- ``wire-log="PATH"`` (optional): a JSON line per message and direction with the fedarena payload
  bytes, Flower's record bytes and the bytes of Flower's serialized message objects;
  ``wire-capture="DIR"`` (optional) also stores those serialized objects for inspection.

Messages (every type and key in `fedarena.flower.messages`): ``query.describe`` (client id, split sizes, label
counts, input shape), ``train`` (a Broadcast in, an Upload out), ``train.private`` and the ``query.secagg_*``
stages (the update protected on the node: local DP noise, or secure aggregation; see
`fedarena.flower.secagg_stages`), ``evaluate`` (the personal model's and the global model's accuracy on the
client's own test split), ``query.onboard`` (a new client adapts to the shared state and reports its accuracy
before and after) and, on flower-sim's virtual nodes only, ``query.state`` (the client's final state). The node
computes with the same functions as the in-process runtime (`train_client`, `personal_model`,
`evaluate_client`, `onboard_client` of `fedarena.sim.runtime`), whose random
streams derive from (seed, round, client), so a deployment computes the simulator's numbers.

Each node computes on the run config's `run.device` as it resolves it itself (`auto`: its own GPU if it has one): its
client's data, the model and what a message brings are moved there, and what it sends or keeps (the upload, the
state) is moved back to the CPU first. A node without the device refuses every message, its describe first, naming
the problem (core/device.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fedarena import config as cfg
from fedarena.core.codec import encode
from fedarena.core.device import CPU, resolve_device, to_device
from fedarena.core.params import nbytes
from fedarena.core.types import ClientData, ClientState, FedarenaError, FederatedData
from fedarena.flower import common, records, secagg_stages
from fedarena.flower import messages as m
from fedarena.privacy.dpsgd import SampleLevel
from fedarena.sim.runtime import evaluate_client, initial_model, onboard_client, personal_model, task_on, train_client

log = logging.getLogger(__name__)
STATE_FIELD = "safetensors"  # a virtual node's state record holds the state's safetensors bytes here


def wire_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Measure what Flower carries for this node, both directions (node config ``wire-log``)."""
    reply = call_next(msg, context)
    target = context.node_config.get(m.WIRE_LOG)
    if target:
        capture = context.node_config.get(m.WIRE_CAPTURE)
        algorithm = str(records.fields(msg).get(m.ALGORITHM, "")) if msg.has_content() else ""
        lines = [_measure(message, direction, msg.metadata.message_type, algorithm, capture)
                 for message, direction in ((msg, "down"), (reply, "up"))]
        with open(str(target), "a") as fh:
            fh.writelines(json.dumps(line) + "\n" for line in lines)
    return reply


def _measure(message: Message, direction: str, message_type: str, algorithm: str, capture: Any) -> dict[str, Any]:
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    objects = get_all_nested_objects(message)
    blobs = {oid: obj.deflate() for oid, obj in objects.items()}
    record = records.fields(message) if message.has_content() else {}
    payload = sum(len(v) for k, v in record.items() if k.startswith(records.PAYLOAD) and isinstance(v, bytes))
    line = {"type": message_type, "direction": direction, "algorithm": algorithm, "round": record.get(m.ROUND),
            "client": record.get(m.CLIENT), "payload_bytes": payload,
            "record_bytes": sum(r.count_bytes() for r in message.content.values()) if message.has_content() else 0,
            "object_bytes": sum(len(b) for b in blobs.values())}
    if capture:
        folder = Path(str(capture))
        folder.mkdir(parents=True, exist_ok=True)
        for oid, blob in blobs.items():
            (folder / f"{algorithm or 'none'}-{message_type}-{direction}-{oid}.bin").write_bytes(blob)
    return line


app = ClientApp(mods=[wire_mod])


@functools.lru_cache(maxsize=2)
def _embedded(config_text: str) -> FederatedData:
    """An embedded dataset as `compare` partitions it, built once per process and config (a simulation
    actor serves many virtual nodes of one run; each node still takes only its own client)."""
    from fedarena.data import load_federated

    config = common.config_from_text(config_text)
    return load_federated(config.data, seed=config.run.seed, synthetic=config.synthetic, shakespeare=config.shakespeare)


class Node:
    """This node's client for one message: config, seed, data and state location."""

    def __init__(self, msg: Message, context: Context) -> None:
        torch.set_num_threads(1)
        self.record = records.fields(msg)
        self.config = cfg.with_seed(common.config_from_text(str(context.run_config[m.CONFIG])),
                                       int(records.number(self.record, m.SEED)))
        self.node_config = context.node_config
        self.context = context
        self.run_id = int(context.run_id)
        self.device = resolve_device(self.config.run.device)  # refused here, naming the problem, on every message
        self.client_id, self.index, data, self.num_classes = self._load()
        self.data = to_device(data, self.device)

    def _load(self) -> tuple[str, int, ClientData, int]:
        nc = self.node_config
        if m.PARTITION_ID in nc:
            i = int(nc[m.PARTITION_ID])
            if self.config.data.name.startswith("npz-dir:"):
                return self._virtual_npz_node(i)
            fd = _embedded(common.config_text(self.config))
            if not 0 <= i < fd.num_clients:
                raise FedarenaError(f"node config partition-id={i} is outside 0..{fd.num_clients - 1}")
            return fd.client_ids[i], i, fd.client(i), fd.num_classes
        if m.NPZ_DIR in nc and m.NODE_CLIENT in nc:
            from fedarena.data.npz import load_npz_client

            d = self.config.data
            data, max_label = load_npz_client(str(nc[m.NPZ_DIR]), str(nc[m.NODE_CLIENT]), min_train=d.min_train,
                                              min_test=d.min_test, val_fraction=d.val_fraction, seed=self.config.run.seed)
            return str(nc[m.NODE_CLIENT]), -1, data, max_label + 1
        raise FedarenaError("node config needs partition-id=I (embedded data) or npz-dir=PATH and client=ID")

    def _virtual_npz_node(self, i: int) -> tuple[str, int, ClientData, int]:
        """A simulation node I on npz-dir data: the I-th client in sorted file-stem order."""
        from fedarena.data.npz import load_npz_client

        if m.NUM_PARTITIONS not in self.node_config:
            raise FedarenaError("node config partition-id is for embedded datasets; npz-dir nodes need npz-dir and client")
        stems = [str(n[m.NODE_CLIENT]) for n in common.node_clients(self.config)]
        if not 0 <= i < len(stems):
            raise FedarenaError(f"node config partition-id={i} is outside 0..{len(stems) - 1}")
        d = self.config.data
        root = self.config.data.name.removeprefix("npz-dir:")
        data, max_label = load_npz_client(str(Path(root).expanduser()), stems[i], min_train=d.min_train, min_test=d.min_test,
                                          val_fraction=d.val_fraction, seed=self.config.run.seed)
        return stems[i], -1, data, max_label + 1

    def task(self):
        """The model task, with the algorithm's own learning rate where the config gives one, on the node's device."""
        task = cfg.make_config_task(self.config, tuple(self.data.x_train.shape[1:]),
                                    int(records.number(self.record, m.NUM_CLASSES)))
        return task_on(cfg.algorithm_task(self.config, str(self.record[m.ALGORITHM]), task), self.device)

    def on_device(self, value: Any) -> Any:
        return to_device(value, self.device)

    def algorithm(self) -> Any:
        return cfg.hyperparameters(self.config, str(self.record[m.ALGORITHM]))

    def kept(self) -> common.NodeState:
        """The client's state files: under the deployment's id where the server sends one (a restarted ServerApp
        sends the same), else under the Flower run's."""
        if m.STATE_DIR not in self.node_config:
            raise FedarenaError("node config needs state-dir=PATH (where this node keeps its personal state)")
        deployment = self.record.get(m.DEPLOYMENT, self.run_id)
        if not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", str(deployment)):
            raise FedarenaError(f"record entry {m.DEPLOYMENT!r} must be 1-64 letters, digits, '-' or '_', got {deployment!r}")
        start = int(records.number(self.record, m.FROM_ROUND)) if m.FROM_ROUND in self.record else 0
        if start < 0:
            raise FedarenaError(f"record entry {m.FROM_ROUND!r} must be >= 0, got {start}")
        path = common.state_path(Path(str(self.node_config[m.STATE_DIR])), str(deployment), self.config.run.seed,
                                 str(self.record[m.ALGORITHM]), self.client_id)
        return common.NodeState(path, str(self.run_id), start)

    def virtual(self) -> bool:
        """A virtual SuperNode of the simulation runtime without a state directory."""
        return m.STATE_DIR not in self.node_config and m.NUM_PARTITIONS in self.node_config

    def _state_key(self) -> str:
        return f"fedarena-state-seed-{self.config.run.seed}-{self.record[m.ALGORITHM]}"

    def state(self, algo: Any, task: Any, through: int):
        """The saved state as of round `through` (a state directory keeps the one before the latest round: see
        `common.NodeState`), or the initial one (`init_client` of the run's initial model)."""
        if self.virtual():
            kept = self.context.state.get(self._state_key())
            saved = common.state_from_bytes(kept[STATE_FIELD]) if isinstance(kept, ConfigRecord) else None
        else:
            saved = self.kept().load(through)
        if saved is not None:
            return saved
        return algo.init_client(initial_model(task, self.config.run.seed))

    def save(self, state: ClientState, rnd: int) -> None:
        """Keep the state trained in round `rnd` on this node: its state directory, or a virtual node's `context.state`."""
        if self.virtual():
            self.context.state[self._state_key()] = ConfigRecord({STATE_FIELD: common.state_to_bytes(state)})
        else:
            self.kept().save(state, rnd)


@app.query(m.DESCRIBE_ACTION)
def describe(msg: Message, context: Context) -> Message:
    node = Node(msg, context)
    d = node.data
    counts = np.bincount(d.y_train.cpu().numpy(), minlength=node.num_classes).tolist()
    return Message(records.content({
        m.CLIENT_ID: node.client_id, m.INDEX: node.index, m.NUM_TRAIN: d.num_train, m.NUM_TEST: d.num_test,
        m.NUM_CLASSES: node.num_classes, m.LABEL_COUNTS: [int(c) for c in counts],
        m.INPUT_SHAPE: [int(s) for s in d.x_train.shape[1:]],
    }), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _train(msg, context, private=False)


@app.train(m.PRIVATE_ACTION)
def train_private(msg: Message, context: Context) -> Message:
    """`train` whose update is protected here before it leaves (the message's ClientPrivacy): local DP noise,
    or SecAgg's first stage (then only AdvertiseKeys leaves)."""
    return _train(msg, context, private=True)


def _secret_store(record: dict, context: Context) -> secagg_stages.SecretStore | None:
    state_dir = context.node_config.get(m.STATE_DIR)
    if state_dir is None:
        return None
    return secagg_stages.SecretStore(Path(str(state_dir)), int(context.run_id), int(records.number(record, m.SEED)),
                                     str(record[m.ALGORITHM]))


def _secagg_stage(stage: str, action: str) -> Any:
    """The handler of one SecAgg stage after advertise_keys (``stage`` as `privacy.secagg.STAGES` names it)."""

    def handler(msg: Message, context: Context) -> Message:
        record = records.fields(msg)
        store = _secret_store(record, context)
        if store is None:
            raise FedarenaError("secure aggregation needs the node config state-dir=PATH")
        rnd, client = int(records.number(record, m.ROUND)), int(records.number(record, m.CLIENT))
        blob = secagg_stages.client_step(store, rnd, stage, records.payload(record, m.SECAGG))
        return Message(records.content({m.ROUND: rnd, m.CLIENT: client}, **{m.SECAGG: blob}), reply_to=msg)

    handler.__name__ = action
    return handler


for _stage, _action in m.SECAGG_ACTIONS.items():
    app.query(_action)(_secagg_stage(_stage, _action))


def _train(msg: Message, context: Context, private: bool) -> Message:
    t0 = time.perf_counter()
    node = Node(msg, context)
    algo, task = node.algorithm(), node.task()
    rnd, client = int(records.number(node.record, m.ROUND)), int(records.number(node.record, m.CLIENT))
    broadcast = records.decode_broadcast(records.payload(node.record))
    # DP-SGD on the node, its noise and lots seeded from the OS as every deployment's noise is
    dpsgd = SampleLevel.build(dataclasses.replace(node.config.privacy, secure_noise=True))
    before = node.on_device(node.state(algo, task, rnd - 1))  # as of the round before: see common.NodeState
    upload, state = to_device(train_client(algo, task, node.on_device(broadcast), before, node.data,
                                           node.config.run.seed, rnd, client, dpsgd), CPU)
    node.save(state, rnd)
    log.info("client %s trained round %d", node.client_id, rnd)
    stored = nbytes(state.params) + nbytes(state.extra)
    payload, blob = encode(upload), b""
    if private:
        cp = secagg_stages.privacy_from_fields(node.record)
        payload, blob = secagg_stages.protect(cp, broadcast, upload, client, _secret_store(node.record, context))
    facts = {m.ROUND: rnd, m.CLIENT: client, m.COMPUTE_S: time.perf_counter() - t0, m.STATE_BYTES: stored}
    if dpsgd is not None:  # the server accounts the client's sample-level epsilon from these
        facts |= {m.DPSGD_STEPS: dpsgd.steps[(rnd, client)], m.DPSGD_RATE: dpsgd.rates[client]}
    return Message(records.content(facts, payload, **{m.SECAGG: blob}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    t0 = time.perf_counter()
    node = Node(msg, context)
    algo, task = node.algorithm(), node.task()
    rnd, client = int(records.number(node.record, m.ROUND)), int(records.number(node.record, m.CLIENT))
    broadcast = records.decode_broadcast(records.payload(node.record))
    personal = personal_model(algo, task, node.on_device(broadcast), node.on_device(node.state(algo, task, rnd)),
                              node.data, node.config.run.seed, rnd, client)
    global_params = node.on_device(records.decode_params(records.payload(node.record, m.GLOBAL)))
    result = evaluate_client(task, personal, global_params, node.data)
    out = {m.ROUND: rnd, m.CLIENT: client, m.ACC: result.acc, m.LOSS: result.loss, m.NUM_TEST: result.num_test,
           m.NUM_VAL: result.num_val, m.COMPUTE_S: time.perf_counter() - t0}
    if result.global_acc is not None:
        out[m.GLOBAL_ACC] = result.global_acc
    if result.val_acc is not None:
        out[m.VAL_ACC] = result.val_acc
    return Message(records.content(out), reply_to=msg)


@app.query(m.ONBOARD_ACTION)
def onboard(msg: Message, context: Context) -> Message:
    """A new client (held out of training): adapt to the downloaded shared state from the run's initial model,
    as `sim.local.LocalClients.onboard` does, and report accuracy before and after."""
    t0 = time.perf_counter()
    node = Node(msg, context)
    algo, task = node.algorithm(), node.task()
    client, seed = int(records.number(node.record, m.CLIENT)), node.config.run.seed
    broadcast = records.decode_broadcast(records.payload(node.record))
    result = onboard_client(algo, task, node.on_device(broadcast), node.on_device(initial_model(task, seed)), node.data,
                            seed, client)
    return Message(records.content({m.CLIENT: client, m.BEFORE: result.before, m.AFTER: result.after,
                                    m.STEPS: result.steps, m.COMPUTE_S: time.perf_counter() - t0}), reply_to=msg)


@app.query(m.FETCH_STATE_ACTION)
def fetch_state(msg: Message, context: Context) -> Message:
    """The client's final state (flower-sim: its virtual node does not outlive the run; the run directory keeps
    it so that `fedarena continue` and `fedarena forget` can use the run). Refused on a real SuperNode: there the
    personal state never leaves the node."""
    node = Node(msg, context)
    if not node.virtual():
        raise FedarenaError("a SuperNode's personal state never leaves it; only flower-sim's virtual nodes send it")
    algo, task = node.algorithm(), node.task()
    state = common.state_to_bytes(node.state(algo, task, int(records.number(node.record, m.ROUND))))
    return Message(records.content({m.CLIENT: int(records.number(node.record, m.CLIENT))}, state), reply_to=msg)
