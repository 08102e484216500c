"""Every name the ServerApp and the ClientApp agree on: Flower message types, the entries of the one
``fedarena`` ConfigRecord each message carries, and the node and run config keys.

These strings ARE the wire format: a deployment whose nodes run another fedarena version interoperates as
long as they are unchanged (tests/flower/test_messages.py pins them). Both apps, `records`, `common` and
`secagg_stages` use these constants; none writes a key as a bare string. The ``*_FIELDS`` tuples say which
entries each message carries, in the direction given.
"""

from __future__ import annotations

from typing import Final

# --- message types (the reply carries the same type) ----------------------------------------------
DESCRIBE_ACTION: Final = "describe"
DESCRIBE: Final = f"query.{DESCRIBE_ACTION}"  # a node names its client, split sizes and label counts (no data leaves)
TRAIN: Final = "train"  # Broadcast in, Upload out
PRIVATE_ACTION: Final = "private"  # Flower's action names must be Python identifiers
TRAIN_PRIVATE: Final = f"{TRAIN}.{PRIVATE_ACTION}"  # the update is protected on the node (local DP, SecAgg)
EVALUATE: Final = "evaluate"  # personal and global accuracy on the client's own test split
ONBOARD_ACTION: Final = "onboard"
ONBOARD: Final = f"query.{ONBOARD_ACTION}"  # a new client: the shared state in, accuracy before/after adapting out
FETCH_STATE_ACTION: Final = "state"
FETCH_STATE: Final = f"query.{FETCH_STATE_ACTION}"  # flower-sim only: a client's final state (virtual nodes end with the run)
# the SecAgg stages after advertise_keys (whose keys ride on the train.private reply): stage -> action
SECAGG_ACTIONS: Final = {"share_keys": "secagg_share_keys", "masked_input": "secagg_masked_input",
                         "unmasking": "secagg_unmask"}
SECAGG_TYPES: Final = {stage: f"query.{action}" for stage, action in SECAGG_ACTIONS.items()}

# --- the record ---------------------------------------------------------------------------------
RECORD: Final = "fedarena"  # the ConfigRecord every fedarena message holds
PAYLOAD: Final = "payload"  # its safetensors bytes; a named payload N is the entry "payload-N"
GLOBAL: Final = "global"  # named payload of `evaluate`: the global model
SECAGG: Final = "secagg"  # named payload: a SecAgg stage's protocol bytes
PRIVACY_PREFIX: Final = "privacy-"  # train.private: one entry "privacy-<field>" per ClientPrivacy field

# server -> client, every message but describe
ALGORITHM: Final = "algorithm"
SEED: Final = "seed"  # also the one entry of a describe request
ROUND: Final = "round"
CLIENT: Final = "client"  # the client's index in the run
NUM_CLASSES: Final = "num-classes"
DEPLOYMENT: Final = "deployment"  # `fedarena deploy`'s id: the node keeps the state of one deployment under it
FROM_ROUND: Final = "from-round"  # the server checkpoint this ServerApp run continues from (0: a fresh start)
# describe reply
CLIENT_ID: Final = "client-id"
INDEX: Final = "index"  # the partition id (embedded data), -1 for npz-dir clients
NUM_TRAIN: Final = "num-train"
NUM_TEST: Final = "num-test"
LABEL_COUNTS: Final = "label-counts"
INPUT_SHAPE: Final = "input-shape"
# train reply (also ROUND, CLIENT)
COMPUTE_S: Final = "compute-s"  # the node's compute seconds (train and evaluate replies)
STATE_BYTES: Final = "state-bytes"
DPSGD_STEPS: Final = "dpsgd-steps"  # DP-SGD on the node: its steps this round and its sampling rate q
DPSGD_RATE: Final = "dpsgd-rate"
# evaluate reply (also ROUND, CLIENT, NUM_TEST, COMPUTE_S)
ACC: Final = "acc"
LOSS: Final = "loss"
GLOBAL_ACC: Final = "global-acc"  # present when the server sent a global model
VAL_ACC: Final = "val-acc"  # the personal model on the client's validation split (absent where it has none)
NUM_VAL: Final = "num-val"
# onboard reply (also COMPUTE_S)
BEFORE: Final = "before"
AFTER: Final = "after"
STEPS: Final = "steps"

REQUEST_FIELDS: Final = (ALGORITHM, SEED, ROUND, CLIENT, NUM_CLASSES, FROM_ROUND)  # + DEPLOYMENT on a deploy
DESCRIBE_REPLY_FIELDS: Final = (CLIENT_ID, INDEX, NUM_TRAIN, NUM_TEST, NUM_CLASSES, LABEL_COUNTS, INPUT_SHAPE)
TRAIN_REPLY_FIELDS: Final = (ROUND, CLIENT, COMPUTE_S, STATE_BYTES)  # + DPSGD_STEPS, DPSGD_RATE under DP-SGD
SECAGG_REPLY_FIELDS: Final = (ROUND, CLIENT)  # + the SECAGG payload
EVALUATE_REPLY_FIELDS: Final = (ROUND, CLIENT, ACC, LOSS, NUM_TEST, NUM_VAL, COMPUTE_S)  # + GLOBAL_ACC, VAL_ACC
ONBOARD_REPLY_FIELDS: Final = (CLIENT, BEFORE, AFTER, STEPS, COMPUTE_S)
FETCH_STATE_REPLY_FIELDS: Final = (CLIENT,)  # + the state's safetensors bytes as the payload

# --- node config (flower-supernode --node-config) --------------------------------------------------
PARTITION_ID: Final = "partition-id"
NUM_PARTITIONS: Final = "num-partitions"  # set by Flower's simulation runtime on a virtual node
NPZ_DIR: Final = "npz-dir"
NODE_CLIENT: Final = "client"  # the npz file stem the node serves
STATE_DIR: Final = "state-dir"
WIRE_LOG: Final = "wire-log"
WIRE_CAPTURE: Final = "wire-capture"

# --- run config (flwr run --run-config) -------------------------------------------------------------
CONFIG: Final = "config"  # the fedarena config as TOML text
OUT_DIR: Final = "out-dir"
EXPECT_NODES: Final = "expect-nodes"
ROUND_TIMEOUT: Final = "round-timeout"
EVAL_TIMEOUT: Final = "eval-timeout"
START_TIMEOUT: Final = "start-timeout"
ENGINE: Final = "engine"
RESUME: Final = "resume"  # true: finish the interrupted deploy whose state lies beside OUT_DIR (experiments/deploy_resume)


def payload_entry(name: str = "") -> str:
    """The record entry of the main payload ("payload") or of a named one ("payload-<name>")."""
    return f"{PAYLOAD}-{name}" if name else PAYLOAD
