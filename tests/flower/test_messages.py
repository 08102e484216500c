"""flower/messages.py: the strings are the wire format (pinned here, so a rename that would break a mixed-version
deployment fails a test), the SecAgg actions match the protocol's stages, and the apps write no message type,
record key or node config key as a bare string."""

import ast
from pathlib import Path

import fedarena.flower as flower
from fedarena.flower import messages as m
from fedarena.privacy.secagg import STAGES

WIRE = {
    "DESCRIBE": "query.describe", "TRAIN": "train", "TRAIN_PRIVATE": "train.private", "EVALUATE": "evaluate",
    "RECORD": "fedarena", "PAYLOAD": "payload", "GLOBAL": "global", "SECAGG": "secagg", "PRIVACY_PREFIX": "privacy-",
    "ALGORITHM": "algorithm", "SEED": "seed", "ROUND": "round", "CLIENT": "client", "NUM_CLASSES": "num-classes",
    "CLIENT_ID": "client-id", "INDEX": "index", "NUM_TRAIN": "num-train", "NUM_TEST": "num-test",
    "LABEL_COUNTS": "label-counts", "INPUT_SHAPE": "input-shape", "COMPUTE_S": "compute-s",
    "STATE_BYTES": "state-bytes", "DPSGD_STEPS": "dpsgd-steps", "DPSGD_RATE": "dpsgd-rate", "ACC": "acc",
    "LOSS": "loss", "GLOBAL_ACC": "global-acc", "PARTITION_ID": "partition-id", "NUM_PARTITIONS": "num-partitions",
    "NPZ_DIR": "npz-dir", "NODE_CLIENT": "client", "STATE_DIR": "state-dir", "WIRE_LOG": "wire-log",
    "WIRE_CAPTURE": "wire-capture", "CONFIG": "config", "OUT_DIR": "out-dir", "EXPECT_NODES": "expect-nodes",
    "ROUND_TIMEOUT": "round-timeout", "EVAL_TIMEOUT": "eval-timeout", "START_TIMEOUT": "start-timeout",
    "DEPLOYMENT": "deployment", "FROM_ROUND": "from-round", "RESUME": "resume",
}
SECAGG_TYPES = {"share_keys": "query.secagg_share_keys", "masked_input": "query.secagg_masked_input",
                "unmasking": "query.secagg_unmask"}


def test_the_wire_strings_are_unchanged():
    assert {name: getattr(m, name) for name in WIRE} == WIRE
    assert m.SECAGG_TYPES == SECAGG_TYPES and m.payload_entry() == "payload"
    assert m.payload_entry(m.SECAGG) == "payload-secagg" and m.payload_entry(m.GLOBAL) == "payload-global"


def test_secagg_actions_are_the_stages_after_advertise_keys_and_identifiers():
    assert tuple(m.SECAGG_ACTIONS) == STAGES[1:]  # advertise_keys rides on the train.private reply
    actions = [m.DESCRIBE_ACTION, m.PRIVATE_ACTION, *m.SECAGG_ACTIONS.values()]
    assert all(a.isidentifier() for a in actions)  # Flower's action names must be Python identifiers


def test_each_message_names_its_fields_once():
    for fields in (m.REQUEST_FIELDS, m.DESCRIBE_REPLY_FIELDS, m.TRAIN_REPLY_FIELDS, m.SECAGG_REPLY_FIELDS,
                   m.EVALUATE_REPLY_FIELDS):
        assert len(set(fields)) == len(fields) and m.PAYLOAD not in fields and m.RECORD not in fields


def test_the_apps_spell_no_message_key_as_a_bare_string():
    # distinctive wire strings only: "round"/"client"/"train" also name wire-log and summary fields; the run config
    # keys are read by the ServerApp's Settings
    run_config = {m.CONFIG, m.OUT_DIR, m.EXPECT_NODES, m.ROUND_TIMEOUT, m.EVAL_TIMEOUT, m.START_TIMEOUT, m.ENGINE}
    keys = {v for v in WIRE.values() if ("-" in v or "." in v) and v not in run_config}
    keys |= set(SECAGG_TYPES.values()) | set(m.SECAGG_ACTIONS.values())
    root = Path(flower.__file__).parent
    found = []
    for name in ("client_app", "server_app", "secagg_stages", "records", "common"):
        tree = ast.parse((root / f"{name}.py").read_text())
        found += [(name, node.lineno, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in keys]
    assert not found, found


def test_a_supernode_imports_no_orchestration():
    """A SuperNode's ClientApp builds its client from the data, the tasks and the client functions only: nothing of
    the experiment layer, the report, or pyarrow (checked in a fresh interpreter)."""
    import subprocess
    import sys

    code = ("import sys, fedarena.flower.client_app; "
            "print(sorted(m for m in sys.modules if m == 'pyarrow' or m.startswith(('fedarena.experiments', "
            "'fedarena.report', 'fedarena.cli'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout
