"""A deployment survives its ServerApp (slow: real SuperLink and SuperNodes on 127.0.0.1): the ServerApp process is
killed mid-run, after the nodes trained a round the server had not checkpointed yet; `deploy --resume` finishes
the run, and its numbers are the simulator's (the tolerance of test_deploy.py: bit for bit)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedarena import config as cfg
from fedarena.experiments.compare import run_compare
from fedarena.experiments.deploy import Timeouts
from fedarena.experiments.deploy_resume import state_dir
from fedarena.flower.processes import marked_pids
from flower.deploying import comparable_metrics, deploy_and_reap

CUT = 2  # fedper's round whose training the nodes finish before the ServerApp dies


def _trained(wire: Path, algorithm: str, rnd: int) -> bool:
    lines = [json.loads(x) for x in wire.read_text().splitlines()] if wire.exists() else []
    return any(x["type"] == "train" and x["algorithm"] == algorithm and x["round"] == rnd and x["direction"] == "up"
               for x in lines)


def _serverapp(token: str) -> int | None:
    for pid in marked_pids(token):
        try:
            if b"flwr-serverapp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


@pytest.mark.slow
def test_a_killed_serverapp_resumes_to_the_simulators_numbers(tmp_path):
    started = time.monotonic()
    # FedPer (each node keeps a personal head: a node one round ahead would train it twice), 2 rounds evaluated after
    # the last only: the fewest Flower exchanges (seconds each) with a checkpoint before the cut-off round. Skipping
    # the (algorithm, seed)s that finished is tested in process (tests/experiments/test_deploy_resume.py)
    config = cfg.build(None, {"data": {"num_clients": 3}, "train": {"rounds": 2, "clients_per_round": 3, "eval_every": 2},
                              "run": {"algorithms": "fedper", "engine": "reference", "target": 0.5}}, [])
    timeouts = Timeouts(round=60, evaluate=60, start=120)
    out, killed = tmp_path / "run", {}

    def kill_the_serverapp(fed):
        wires = [fed.root / "nodes" / str(i) / "wire.jsonl" for i in range(3)]
        while not all(_trained(w, "fedper", CUT) for w in wires):  # every node trained round CUT: its state moved on
            if time.monotonic() - started > 240:
                return
            time.sleep(0.02)
        pid = _serverapp(fed.token)
        progress = state_dir(out) / "seed-0" / "fedper" / "progress.json"
        killed["checkpoint"] = json.loads(progress.read_text())["round"] if progress.exists() else None
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            killed["pid"], killed["at"] = pid, time.monotonic() - started

    with pytest.raises(RuntimeError, match="ended without a result"):  # Flower notices the dead ServerApp
        deploy_and_reap(tmp_path, config, timeouts, during=kill_the_serverapp)
    failed = time.monotonic() - started
    assert "pid" in killed and killed["checkpoint"] == CUT - 1, killed  # the nodes are one round ahead of the server
    assert not out.exists() and (state_dir(out) / "journal.json").is_file()
    states = list((tmp_path / "work" / "nodes").glob("*/state/run-*/seed-0/fedper/client-*.safetensors"))
    assert len(states) == 3  # each node's state of round CUT, and of round CUT - 1 under previous/
    assert len(list((tmp_path / "work" / "nodes").glob("*/state/run-*/seed-0/fedper/previous/*.safetensors"))) == 3

    summary = deploy_and_reap(tmp_path, config, timeouts, resume=True)
    resumed = time.monotonic() - started
    sim = run_compare(config, tmp_path / "sim")
    assert [r["algorithm"] for r in summary["runs"]] == ["fedper"]
    assert comparable_metrics(summary["runs"][0]) == comparable_metrics(sim["runs"][0])
    # the personal heads the nodes kept are the simulator's final client states, bit for bit
    for node in states:
        got = load_file(node)
        want = load_file(tmp_path / "sim" / "models" / "fedper" / node.name)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), node
    assert not state_dir(out).exists()  # finished: no resume state left
    deployment = json.loads((out / "deployment.json").read_text())
    assert [e["round"] for e in deployment["fedper/seed-0"]["exchanges"] if e["kind"] == "train"] == [1, 2]
    print(f"ServerApp killed at {killed['at']:.0f} s after fedper's round {CUT} trained (checkpoint "
          f"{killed['checkpoint']}); the deploy failed at {failed:.0f} s; resumed and finished at {resumed:.0f} s; "
          f"total {time.monotonic() - started:.0f} s")
