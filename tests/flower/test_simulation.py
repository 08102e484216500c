"""`--engine flower-sim`: Flower's simulation runtime with the generic ServerApp/ClientApp.

Fast tests check the federation config, the refusals, the `compare` dispatch and a virtual node's
state in `context.state`; the slow test runs fedavg and fedper on 4 virtual SuperNodes (3 rounds)
and compares summary.json with the reference engine's for the same seed.
"""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedarena import config as cfg
from fedarena.core.types import ClientState, FedarenaError
from fedarena.experiments import flower_sim as simulation
from fedarena.experiments.compare import run_compare
from fedarena.experiments.flower_sim import Resources, federation_config, simulate
from fedarena.flower import client_app, common, records
from fedarena.flower.processes import kill_marked, marked_pids


def _config(engine: str, algorithms: list[str], clients: int = 4, rounds: int = 3) -> cfg.Config:
    return cfg.build(None, {"data": {"name": "synthetic", "num_clients": clients},
                            "train": {"rounds": rounds, "clients_per_round": 3},
                            "run": {"seed": 1, "algorithms": algorithms, "engine": engine}}, [])


def test_federation_config_names_nodes_and_ray_resources():
    assert federation_config(5, Resources(client_cpus=1, num_cpus=2)) == (
        'num-supernodes=5 backend="ray" client-resources-num-cpus=1 client-resources-num-gpus=0.0 init-args-num-cpus=2')
    assert "init-args-num-cpus" not in federation_config(5, Resources())  # Ray's default: all CPUs or a cluster
    with pytest.raises(FedarenaError, match="client_cpus=3"):
        federation_config(5, Resources(client_cpus=3, num_cpus=2))


def test_simulate_refuses_without_ray_before_starting_anything(monkeypatch, tmp_path):
    monkeypatch.setattr(simulation, "ray_missing", lambda: "Ray is not installed")
    with pytest.raises(FedarenaError, match="flower-sim cannot run: Ray is not installed"):
        simulate(_config("flower-sim", ["fedavg"]), tmp_path / "run", workdir=tmp_path / "work")
    assert not (tmp_path / "run").exists() and not (tmp_path / "work").exists()


def test_simulate_refuses_more_clients_per_round_than_clients(tmp_path):
    import dataclasses

    conf = _config("flower-sim", ["fedavg"])  # 3 clients per round
    fewer = dataclasses.replace(conf, data=dataclasses.replace(conf.data, num_clients=2))
    with pytest.raises(FedarenaError, match=r"clients_per_round \(3\) exceeds the 2 clients"):
        simulate(fewer, tmp_path / "run", workdir=tmp_path / "work")
    assert not (tmp_path / "work").exists()


def test_compare_dispatches_flower_sim(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(simulation, "simulate", lambda config, out: seen.append((config.run.engine, out)) or {"ok": 1})
    assert run_compare(_config("flower-sim", ["fedavg"]), tmp_path / "run") == {"ok": 1}
    assert seen == [("flower-sim", tmp_path / "run")]


@pytest.fixture
def task_identity(monkeypatch):
    """Flower stamps messages with the process's task identity (set by its runtimes); set one here."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 7), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value, raising=False)


def _virtual_node(context: Context, algorithm: str = "fedper") -> client_app.Node:
    msg = Message(records.content({"seed": 1, "algorithm": algorithm, "num-classes": 10}), dst_node_id=context.node_id,
                  message_type="train")
    return client_app.Node(msg, context)


def test_virtual_node_keeps_state_in_its_context(task_identity):
    conf = _config("flower-sim", ["fedper"])
    context = Context(run_id=7, node_id=11, node_config={"partition-id": 2, "num-partitions": 4}, state=RecordDict(),
                      run_config={"config": common.config_text(conf)})
    node = _virtual_node(context)
    assert node.client_id == conf_client_ids(conf)[2] and node.virtual()
    algo, task = node.algorithm(), node.task()
    fresh = node.state(algo, task, 0)  # nothing kept yet: init_client of the initial model
    changed = ClientState(params={k: v + 1 for k, v in fresh.params.items()}, extra={"n": torch.tensor([3.0])})
    node.save(changed, 1)
    (key,) = list(context.state.keys())
    assert isinstance(context.state[key], ConfigRecord)
    again = _virtual_node(context).state(algo, task, 1)  # the next message to this node sees it
    assert again.params.keys() == changed.params.keys()
    assert all(torch.equal(again.params[k], changed.params[k]) for k in changed.params)
    assert torch.equal(again.extra["n"], changed.extra["n"])
    other = Context(run_id=7, node_id=12, node_config={"partition-id": 1, "num-partitions": 4}, state=RecordDict(),
                    run_config={"config": common.config_text(conf)})
    assert all(torch.equal(v, fresh.params[k]) for k, v in _virtual_node(other).state(algo, task, 1).params.items())


def test_real_node_without_state_dir_is_refused(task_identity):
    conf = _config("reference", ["fedper"])
    context = Context(run_id=7, node_id=11, node_config={"partition-id": 0}, state=RecordDict(),
                      run_config={"config": common.config_text(conf)})
    node = _virtual_node(context)
    with pytest.raises(FedarenaError, match="state-dir"):
        node.save(ClientState(params={}, extra={}), 1)


def conf_client_ids(conf: cfg.Config) -> tuple[str, ...]:
    from fedarena.data import load_federated

    return load_federated(conf.data, seed=conf.run.seed, synthetic=conf.synthetic).client_ids


@pytest.mark.slow
def test_flower_sim_summary_equals_reference(tmp_path):
    tokens: list[str] = []
    conf = _config("flower-sim", ["fedavg", "fedper", "local"])
    try:
        sim = simulate(conf, tmp_path / "sim", resources=Resources(num_cpus=2), workdir=tmp_path / "work",
                       on_started=lambda fed: tokens.append(fed.token))
    finally:
        for token in tokens:
            assert marked_pids(token) == [], "a Flower/Ray process outlived the simulation"
            kill_marked(token)
    ref = run_compare(cfg.apply(conf, {"run": {"engine": "reference", "algorithms": ["fedavg", "fedper"]}}),
                      tmp_path / "ref")
    assert sim["engine"] == "flower-sim" and [r["algorithm"] for r in sim["runs"]] == ["fedavg", "fedper"]
    assert sim["deployment"]["skipped"] == ["local"]
    for s, r in zip(sim["runs"], ref["runs"]):
        for key in ("personal_acc_mean", "personal_acc_std", "global_acc", "personal_acc_per_client"):
            assert s["final"][key] == pytest.approx(r["final"][key], abs=1e-6), (s["algorithm"], key)
        assert s["bytes"] == r["bytes"] and s["storage_bytes_per_client"] == r["storage_bytes_per_client"]
        assert [h["personal_acc_mean"] for h in s["history"]] == pytest.approx(
            [h["personal_acc_mean"] for h in r["history"]], abs=1e-6)
    for name in ("summary.json", "metrics.parquet", "config.toml", "deployment.json"):
        assert (tmp_path / "sim" / name).exists(), name
    deployment = json.loads((tmp_path / "sim" / "deployment.json").read_text())
    assert len(deployment["fedavg/seed-1"]["train_seconds"]) == 3


@pytest.mark.slow
def test_flower_sim_onboards_new_clients_and_its_run_continues_and_forgets(tmp_path):
    """What a comparison does works on flower-sim: held-out clients are onboarded on their virtual nodes, the run
    keeps the server's checkpoints and fetches its clients' final states, so `continue` and `forget --method
    retrain` take the run (recomputed on the reference engine, which computes the simulator's numbers)."""
    from fedarena.experiments.continuation import continue_run
    from fedarena.experiments.forget.run import forget

    tokens: list[str] = []
    conf = cfg.apply(_config("flower-sim", ["fedavg", "fedper"], clients=6, rounds=2),
                     {"data": {"new_clients": 0.34}})  # 2 of 6 clients held out
    try:
        sim = simulate(conf, tmp_path / "sim", resources=Resources(num_cpus=2), workdir=tmp_path / "work",
                       on_started=lambda fed: tokens.append(fed.token))
    finally:
        for token in tokens:
            kill_marked(token)
    reference = cfg.apply(conf, {"run": {"engine": "reference"}})
    ref = run_compare(reference, tmp_path / "ref")
    for s, r in zip(sim["runs"], ref["runs"]):
        assert s["new_clients"]["clients"] == r["new_clients"]["clients"] and len(s["new_clients"]["clients"]) == 2
        assert s["new_clients"]["after"]["mean"] == pytest.approx(r["new_clients"]["after"]["mean"], abs=1e-6)
        assert s["new_clients"]["bytes_down"] == r["new_clients"]["bytes_down"] > 0
        assert s["final"]["personal_acc_mean"] == pytest.approx(r["final"]["personal_acc_mean"], abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "sim" / "models" / "fedper").glob("client-*")) == sorted(
        p.name for p in (tmp_path / "ref" / "models" / "fedper").glob("client-*"))  # fetched from the virtual nodes
    assert (tmp_path / "sim" / "forget" / "fedavg" / "server-r0002.safetensors").is_file()

    longer = continue_run(tmp_path / "sim", 3, tmp_path / "sim-3")
    fresh = run_compare(cfg.apply(reference, {"train": {"rounds": 3}}), tmp_path / "ref-3")
    assert longer["continued_from"] == {"run": str(tmp_path / "sim"), "rounds": 2, "engine": "flower-sim"}
    assert longer["engine"] == "reference"
    for c, f in zip(longer["runs"], fresh["runs"]):
        assert c["final"]["personal_acc_mean"] == pytest.approx(f["final"]["personal_acc_mean"], abs=1e-6)
        assert c["bytes"] == f["bytes"]

    forgotten = sim["dataset"]["client_ids"][0] if sim["dataset"]["client_ids"][0] not in sim["runs"][0][
        "new_clients"]["clients"] else sim["dataset"]["client_ids"][1]
    result = forget(tmp_path / "sim", [forgotten], ["retrain"], tmp_path / "forgot")
    assert result["trained_on"] == "flower-sim" and result["recomputed_on"] == "reference"
    assert {r["algorithm"] for r in result["runs"] if r["refused"] is None} == {"fedavg", "fedper"}
    assert not (tmp_path / "forgot" / "models" / "fedper" / f"client-{forgotten}.safetensors").exists()


def test_flower_runs_refuse_per_round_client_snapshots_before_starting_anything(tmp_path):
    conf = cfg.apply(_config("flower-sim", ["fedavg"]), {"forget": {"keep": "all"}})
    with pytest.raises(FedarenaError, match="forget.keep=all"):
        simulate(conf, tmp_path / "run", workdir=tmp_path / "work")
    assert not (tmp_path / "work").exists()


def test_continue_and_forget_refuse_a_deployment_run(tmp_path):
    from fedarena.experiments.rundir import recompute_engine

    (tmp_path / "summary.json").write_text(json.dumps({"engine": "flower"}))
    with pytest.raises(FedarenaError, match="stay on the deployment's SuperNodes"):
        recompute_engine(tmp_path, "continue")
    (tmp_path / "summary.json").write_text(json.dumps({"engine": "flower-sim"}))
    assert recompute_engine(tmp_path, "forget") == "reference"


def test_secagg_is_refused_on_flower_sim(tmp_path):
    from fedarena import config as cfg
    from fedarena.core.types import FedarenaError
    from fedarena.experiments.flower_sim import simulate

    config = cfg.build(None, {"data": {"num_clients": 4}, "train": {"clients_per_round": 3},
                              "privacy": {"secagg": True}, "run": {"algorithms": "fedavg"}}, [])
    with pytest.raises(FedarenaError, match="not supported on flower-sim"):
        simulate(config, tmp_path / "out")
