"""Deployment on Flower against the reference simulator (slow: real SuperLink and SuperNodes).

One TLS deployment of fedavg and fedper (3 SuperNodes, 3 rounds) is shared by the parity, wire
and ledger tests; the fault test kills a SuperNode mid-run. Every test checks that no process it
started is left.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from running import run_loop
from safetensors.torch import load_file
from typer.testing import CliRunner

from fedarena import config as cfg
from fedarena.cli import app as cli_app
from fedarena.data import load_federated
from fedarena.experiments.compare import run_compare
from fedarena.experiments.deploy import Timeouts
from fedarena.sim.local import LocalClients, ReferenceExecutor
from flower.deploying import comparable_metrics, deploy_and_reap


def _config(algorithms: str, **train) -> cfg.Config:
    return cfg.build(None, {"data": {"num_clients": 3},
                            "train": {"rounds": 3, "clients_per_round": 3, **train},
                            "run": {"algorithms": algorithms, "engine": "reference", "target": 0.5}}, [])


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy")
    config = _config("fedavg,fedper,local")
    summary = deploy_and_reap(tmp, config, Timeouts(round=120, evaluate=120, start=120), tls=True)
    sim = run_compare(config, tmp / "sim")
    return tmp, summary, sim


@pytest.mark.slow
def test_deploy_matches_the_reference_simulator(deployed):
    tmp, summary, sim = deployed
    assert summary["engine"] == "flower" and summary["deployment"]["skipped"] == ["local"]
    # the same clients; of the validation split the server knows val_fraction, not how each node drew its rows
    nodes_only = ("val_split", "val_stratified_clients")
    assert {k: v for k, v in sim["dataset"]["heterogeneity"]["details"].items() if k in nodes_only}
    for block in (summary["dataset"], sim["dataset"]):
        block["heterogeneity"]["details"] = {k: v for k, v in block["heterogeneity"]["details"].items()
                                             if k not in nodes_only}
    assert summary["dataset"] == sim["dataset"]
    runs = {r["algorithm"]: r for r in summary["runs"]}
    assert set(runs) == {"fedavg", "fedper"}
    for ref in sim["runs"]:
        if ref["algorithm"] in runs:
            assert comparable_metrics(runs[ref["algorithm"]]) == comparable_metrics(ref), ref["algorithm"]
    assert runs["fedper"]["storage_bytes_per_client"] > 0
    got = load_file(tmp / "run" / "models" / "fedavg" / "global.safetensors")
    want = load_file(tmp / "sim" / "models" / "fedavg" / "global.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert pq.read_table(tmp / "run" / "metrics.parquet").num_rows == 2 * 3 * 3


def _wire(tmp: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((tmp / "work" / "nodes").glob("*/wire.jsonl"))
            for line in f.read_text().splitlines()]


@pytest.mark.slow
def test_ledger_counts_the_payload_flower_carried(deployed):
    tmp, summary, _ = deployed
    lines = _wire(tmp)
    for run in summary["runs"]:
        train = [x for x in lines if x["algorithm"] == run["algorithm"] and x["type"] == "train"]
        assert len(train) == 2 * 3 * 3  # down and up, 3 clients, 3 rounds
        assert sum(x["payload_bytes"] for x in train if x["direction"] == "down") == run["bytes"]["down_total"]
        assert sum(x["payload_bytes"] for x in train if x["direction"] == "up") == run["bytes"]["up_total"]
        overhead = sum(x["object_bytes"] - x["payload_bytes"] for x in train)
        assert overhead > 0  # Flower's framing, reported apart from the ledger
        print(f"{run['algorithm']}: payload {run['bytes']['up_total'] + run['bytes']['down_total']} B, "
              f"Flower object framing {overhead} B over {len(train)} messages")


@pytest.mark.slow
def test_a_personal_key_never_crosses_the_wire(deployed):
    tmp, _, _ = deployed
    capture = list((tmp / "work" / "nodes").glob("*/capture/*.bin"))
    fedper = [p.read_bytes() for p in capture if p.name.startswith("fedper-")]
    fedavg = [p.read_bytes() for p in capture if p.name.startswith("fedavg-")]
    assert fedper and fedavg
    personal = cfg.hyperparameters(cfg.Config(), "fedper").personal
    assert personal("head.weight") and not personal("body.fc1.weight")
    assert any(b"head.weight" in blob for blob in fedavg)  # the check can see a head key when one is sent
    assert any(b"body.fc1.weight" in blob for blob in fedper)
    assert not any(b"head." in blob for blob in fedper)
    # and the nodes kept it: fedper's state files hold the personal head
    states = list((tmp / "work" / "nodes").glob("*/state/run-*/seed-0/fedper/client-*.safetensors"))
    assert len(states) == 3 and all(any(k.startswith("params/head.") for k in load_file(p)) for p in states)


class _Survivors:
    """The in-process runtime, training in each round only the clients that replied in the deployment."""

    def __init__(self, inner: LocalClients, replied: dict[int, set[int]]) -> None:
        self.inner, self.replied = inner, replied
        self.ids, self.pooled, self.states, self.ledger = inner.ids, inner.pooled, inner.states, inner.ledger
        self.onboard_bytes = 0

    protects_updates = False
    transport = "in-process (simulated messages)"

    def train(self, rnd, broadcasts):
        return self.inner.train(rnd, {c: b for c, b in broadcasts.items() if c in self.replied[rnd]})

    def evaluate(self, rnd, broadcasts, global_params, membership=False):
        return self.inner.evaluate(rnd, broadcasts, global_params, membership=membership)

    def close(self):
        self.inner.close()

    def summary(self):
        return {}


@pytest.mark.slow
def test_killed_supernode_the_survivors_aggregate_matches(tmp_path):
    config = _config("fedavg", eval_every=3)
    timeouts = Timeouts(round=20, evaluate=150, start=120)

    def kill_node_2(fed):
        wire = fed.root / "nodes" / "2" / "wire.jsonl"
        def replied_round_1() -> bool:
            lines = [json.loads(x) for x in wire.read_text().splitlines()] if wire.exists() else []
            return any(x["type"] == "train" and x["round"] == 1 and x["direction"] == "up" for x in lines)

        while not replied_round_1():
            time.sleep(0.05)
        time.sleep(1.0)  # the SuperNode pushes the reply, then hangs before round 2: a dead node
        fed.processes["supernode-2"].signal(signal.SIGSTOP)
        time.sleep(timeouts.round + 5)
        fed.kill_node(2)
        fed.start_node(2)  # it comes back with the state it kept on disk

    summary = deploy_and_reap(tmp_path, config, timeouts, during=kill_node_2)
    table = pq.read_table(tmp_path / "run" / "metrics.parquet").to_pylist()
    replied = {r: {int(x["client"]) for x in table if x["round"] == r and x["sampled"]} for r in (1, 2, 3)}
    assert any(2 not in replied[r] for r in (2, 3)) and all(replied[r] >= {0, 1} for r in (1, 2, 3)), replied
    data = load_federated(config.data, seed=config.run.seed, synthetic=config.synthetic)
    task = cfg.make_config_task(config, data.input_shape, data.num_classes)
    algo = cfg.hyperparameters(config, "fedavg")

    def runtime(algo, task, data, training, full, seed, dpsgd):
        return _Survivors(LocalClients(algo, task, data, training, full, seed, ReferenceExecutor(task, algo.name), dpsgd),
                          replied)

    ref = run_loop(algo, task, data, rounds=3, clients_per_round=3, eval_every=3, seed=0, runtime=runtime)
    got = load_file(tmp_path / "run" / "models" / "fedavg" / "global.safetensors")
    want = algo.global_model(ref.server)
    assert all(torch.equal(got[k], want[k]) for k in want)
    final = summary["runs"][0]["final"]
    assert final["personal_acc_mean"] == ref.evaluations[-1].personal_acc_mean


def test_deploy_cli_refuses_bad_flags(tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli_app, ["deploy"]).exit_code == 2
    assert runner.invoke(cli_app, ["deploy", "--local", "2", "--superlink", "127.0.0.1:1"]).exit_code == 2
    assert runner.invoke(cli_app, ["deploy", "--local", "0"]).exit_code == 2
    res = runner.invoke(cli_app, ["deploy", "--superlink", "nohost", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "HOST:PORT" in res.output
