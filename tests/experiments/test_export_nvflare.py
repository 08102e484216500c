"""`fedarena export nvflare`: the job folder's structure, the refusals, the messages' checks, and the exported job
computing the reference engine's numbers (in process through a stand-in for NVFlare's transport; and, `-m slow`, on
NVFlare's own simulator) with no personal key in any message."""

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedarena import config as cfg
from fedarena.algorithms import REGISTRY
from fedarena.cli import app
from fedarena.core.types import ClientState, FedarenaError
from fedarena.data import load_federated
from fedarena.experiments.compare import run_compare
from fedarena.nvflare_job import common as c
from fedarena.sim.engine import sample_clients
from fedarena.sim.runtime import initial_model

runner = CliRunner()
# digits, 4 clients, every client in every round; mlp with 16 hidden units so that FedPer has shared (body) and
# personal (head) keys (with mlr every key is FedPer's head, and FedPer is refused)
SMALL = """
[data]
name = "digits"
num_clients = 4
partition = "dirichlet"
[model]
name = "mlp"
hidden = 16
[train]
rounds = 3
clients_per_round = 4
eval_every = 3
[run]
seed = 1
algorithms = ["fedavg", "fedprox", "fedper", "ditto"]
engine = "reference"
"""


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "small.toml"
    path.write_text(SMALL)
    return path


@pytest.fixture(scope="module")
def job(small, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "job"
    result = invoke("export", "nvflare", small, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"nvflare simulator {out} -n 4 -t 4" in result.output
    return out


def test_the_job_folder_is_nvflares_format(job):
    meta = json.loads((job / "meta.json").read_text())
    apps = ["app_server", "app_site-1", "app_site-2", "app_site-3", "app_site-4"]
    assert meta["deploy_map"] == {"app_server": ["server"], **{f"app_site-{i}": [f"site-{i}"] for i in range(1, 5)}}
    assert meta["min_clients"] == 4
    assert sorted(p.name for p in job.iterdir()) == sorted(["meta.json", *apps])
    for a in apps:
        assert sorted(p.name for p in (job / a).iterdir()) == ["config", "custom"]
    server = json.loads((job / "app_server" / "config" / "config_fed_server.json").read_text())
    (workflow,) = server["workflows"]
    assert workflow["path"] == "fedarena.nvflare_job.controller.FedarenaController"
    args = workflow["args"]
    data = load_federated(cfg.build(None, {}, ["data.num_clients=4", "data.partition=dirichlet"]).data, seed=1)
    assert args["algorithms"] == ["fedavg", "fedprox", "fedper", "ditto"]
    assert args["sites"] == ["site-1", "site-2", "site-3", "site-4"] and args["client_ids"] == ["0", "1", "2", "3"]
    assert args["train_sizes"] == [data.client(i).num_train for i in range(4)]
    assert args["test_sizes"] == [data.client(i).num_test for i in range(4)]
    # digits has 1797 samples: every one is in some client's train, validation (15% of its train) or test split
    val = sum(data.client(i).num_val for i in range(4))
    assert sum(args["train_sizes"]) + sum(args["test_sizes"]) + val == 1797
    assert args["input_shape"] == [1, 8, 8] and args["num_classes"] == 10
    for i in range(4):
        app_dir = job / f"app_site-{i + 1}"
        client = json.loads((app_dir / "config" / "config_fed_client.json").read_text())
        (executor,) = client["executors"]
        assert executor["tasks"] == ["train", "validate"]
        assert executor["executor"]["path"] == "nvflare.app_common.executors.client_api_executor.ClientAPIExecutor"
        assert executor["executor"]["args"] == {"execution_mode": "in_process", "task_script_path": "fedarena_client.py",
                                                "task_script_args": f"--client {i} --num-classes 10",
                                                "params_exchange_format": "numpy"}
        script = (app_dir / "custom" / "fedarena_client.py").read_text()
        assert script == c.CLIENT_SCRIPT
        compile(script, "fedarena_client.py", "exec")


def test_every_app_carries_the_resolved_config(job):
    for a in ("app_server", "app_site-3"):
        config = c.read_config(job / a)
        assert config.run.algorithms == ("fedavg", "fedprox", "fedper", "ditto")
        assert (config.run.seed, config.run.seeds, config.data.num_clients) == (1, 1, 4)
        assert (config.train.rounds, config.train.clients_per_round, config.model.hidden) == (3, 4, 16)


def test_a_run_directory_exports_its_config_and_algorithms_can_be_chosen(small, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(small, run / "config.toml")
    out = tmp_path / "job"
    result = invoke("export", "nvflare", run, "--out", out, "--algorithms", "ditto", "--sites", "a,b,c,d",
                    "--set", "train.rounds=2")
    assert result.exit_code == 0, result.output
    assert f"nvflare simulator {out} -c a,b,c,d" in result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["deploy_map"] == {"app_server": ["server"], "app_a": ["a"], "app_b": ["b"], "app_c": ["c"], "app_d": ["d"]}
    config = c.read_config(out / "app_b")
    assert config.run.algorithms == ("ditto",) and config.train.rounds == 2


def test_which_algorithms_fit_is_read_from_their_capabilities():
    config = cfg.build(None, {}, ["model.name=mlp", "model.hidden=8"])
    mlp = initial_model(cfg.make_config_task(config, (1, 8, 8), 10), 0)
    refused = {n: c.refusal(cls(), mlp) for n, cls in REGISTRY.items() if c.refusal(cls(), mlp)}
    assert sorted(refused) == ["centralized", "ifca", "local", "mocha", "scaffold"]
    assert "communicates=False" in refused["local"] and "communicates=False" in refused["centralized"]
    for name in ("scaffold", "ifca", "mocha"):
        assert "server step is 'custom'" in refused[name]
    mlr = initial_model(cfg.make_config_task(cfg.build(None, {}, ["model.name=mlr"]), (1, 8, 8), 10), 0)
    assert sorted(mlr) == ["head.bias", "head.weight"]
    assert "every key of this model is personal" in c.refusal(REGISTRY["fedper"](), mlr)
    assert c.refusal(REGISTRY["fedper"](personal_layers=()), mlr) is None  # nothing personal: FedAvg
    # a capability, not a name: an algorithm declaring that it uploads personal weights is refused for that
    fake = types.SimpleNamespace(communicates=True, server_step="mean", uploads_personal=True,
                                 personal=REGISTRY["fedper"]().personal)
    assert "uploads_personal" in c.refusal(fake, mlp)


@pytest.mark.parametrize("args, message", [
    (["--algorithms", "fedavg,local"], "local is not exported to NVFlare: it sends no message (communicates=False"),
    (["--algorithms", "scaffold"], "scaffold is not exported to NVFlare: its server step is 'custom'"),
    (["--set", "model.name=mlr", "--algorithms", "fedavg,fedper"],
     "fedper is not exported to NVFlare: every key of this model is personal"),
    (["--algorithms", "nope"], "unknown algorithm 'nope'"),
    (["--set", "run.seeds=2"], "run.seeds is 2: a job runs one seed"),
    (["--set", "privacy.secagg=true"], "not exported to NVFlare: privacy"),
    (["--set", "privacy.dp_clip=1", "--set", "privacy.dp_noise=1"], "not exported to NVFlare: privacy"),
    (["--set", "data.new_clients=0.25"], "data.new_clients=0.25"),
    (["--set", "attack.kind=label-flip", "--set", "attack.malicious=0.25"], "attack.kind=label-flip"),
    (["--set", "forget.probe=2"], "forget.probe"),
    (["--sites", "a,b"], "--sites names 2 sites; the config has 4 clients"),
    (["--sites", "a,b,c,a"], "--sites names a site twice"),
    (["--sites", "a,b,c,d e"], "'d e' is not a usable NVFlare site name"),
    (["--timeout", "-1"], "--timeout must be >= 0"),
])
def test_refusals_exit_2_with_one_line(small, tmp_path, args, message):
    result = invoke("export", "nvflare", small, "--out", tmp_path / "job", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "job").exists()


def test_bad_sources_and_outputs_exit_2(small, tmp_path):
    result = invoke("export", "nvflare", tmp_path / "absent.toml", "--out", tmp_path / "job")
    assert result.exit_code == 2 and "config or run directory not found" in result.output
    result = invoke("export", "nvflare", tmp_path, "--out", tmp_path / "job")
    assert result.exit_code == 2 and "without config.toml: not a run directory" in result.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    result = invoke("export", "nvflare", small, "--out", tmp_path / "full")
    assert result.exit_code == 2 and "exists and is not empty" in result.output


def test_params_travel_as_the_same_bits_and_malformed_ones_are_refused():
    params = {"w": torch.randn(3, 2), "n": torch.tensor(7, dtype=torch.int64)}
    arrays = c.to_arrays(params)
    assert arrays["w"].dtype == np.float32 and arrays["n"].dtype == np.int64
    expected = c.expected_shapes(params)
    back = c.from_arrays(arrays, expected, "test")
    assert all(torch.equal(back[k], params[k]) and back[k].dtype == params[k].dtype for k in params)
    arrays["w"][0, 0] = 99.0  # the received tensors are copies, not views of the message's arrays
    assert back["w"][0, 0] != 99.0
    for bad, problem in [
        ({"w": arrays["w"]}, "missing ['n']"),
        ({**arrays, "head.weight": arrays["w"]}, "unexpected ['head.weight']"),
        ({**arrays, "w": arrays["w"].astype(np.float64)}, "params/w must be float32 [3, 2], got float64 [3, 2]"),
        ({**arrays, "w": arrays["w"][:2]}, "params/w must be float32 [3, 2], got float32 [2, 2]"),
        ({**arrays, "w": np.full((3, 2), np.nan, dtype=np.float32)}, "params/w has NaN or infinite values"),
        ({**arrays, "w": [[0.0] * 2] * 3}, "params/w must be float32 [3, 2], got list"),
        ([1, 2], "params must be a dict of arrays, got list"),
    ]:
        with pytest.raises(FedarenaError, match="^test: ") as info:
            c.from_arrays(bad, expected, "test")
        assert problem in str(info.value)
    assert c.meta_int({"k": 3}, "k", "m", least=1) == 3
    for meta in ({}, {"k": 0}, {"k": True}, {"k": "3"}, None):
        with pytest.raises(FedarenaError, match="meta 'k' must be an integer >= 1"):
            c.meta_int(meta, "k", "m", least=1)


def test_the_state_file_is_safetensors(tmp_path):
    state = ClientState(params={"head.weight": torch.arange(6.0).reshape(2, 3)}, extra={"alpha": torch.tensor(0.25)})
    path = tmp_path / "state.safetensors"
    assert c.load_state(path) is None
    c.save_state(path, state)
    header = json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")])
    assert sorted(k for k in header if k != "__metadata__") == ["extra/alpha", "params/head.weight"]
    back = c.load_state(path)
    assert torch.equal(back.params["head.weight"], state.params["head.weight"])
    assert torch.equal(back.extra["alpha"], state.extra["alpha"])


# ---------------------------------------------------------------- the job's code, in process and on NVFlare


def deploy(job: Path, root: Path) -> dict:
    """The job's apps as NVFlare deploys them, each in its own workspace (``root/<site>/job/app_<site>``, as the
    simulator's ``<workspace>/<site>/simulate_job/app_<site>``); the server workflow's arguments."""
    for app_name, (site,) in json.loads((job / "meta.json").read_text())["deploy_map"].items():
        shutil.copytree(job / app_name, root / site / "job" / app_name)
    return json.loads((job / "app_server" / "config" / "config_fed_server.json").read_text())["workflows"][0]["args"]


def run_in_process(job: Path, root: Path, tamper=None) -> dict:
    """The exported controller and Client API code, with NVFlare's task delivery replaced by a call in this process
    (each site's `Site` handles the FLModel the controller sends; `tamper(task, site, reply)` may alter a reply)."""
    pytest.importorskip("nvflare", reason="the job's code needs the `nvflare` extra: pip install -e '.[nvflare]'")
    from fedarena.nvflare_job.client import Site
    from fedarena.nvflare_job.controller import FedarenaController

    args = deploy(job, root)
    sites = {s: Site(root / s / "job" / f"app_{s}", i, args["num_classes"]) for i, s in enumerate(args["sites"])}

    def send_model_and_wait(task_name, data, targets, timeout):
        replies = []
        for s in targets:
            reply = sites[s].train(data) if task_name == c.TRAIN else sites[s].evaluate(data)
            reply.meta["client_name"] = s  # what NVFlare's controller adds to a result
            replies.append(tamper(task_name, s, reply) if tamper else reply)
        return replies

    ctl = FedarenaController(**args)
    ctl.send_model_and_wait = send_model_and_wait
    ctl.get_app_dir = lambda: str(root / "server" / "job" / "app_server")
    ctl.get_run_dir = lambda: str(root / "server" / "job")
    ctl.engine = types.SimpleNamespace(get_clients=lambda: [types.SimpleNamespace(name=s) for s in args["sites"]])
    ctl.info = lambda msg: None
    ctl.run()
    return json.loads((root / "server" / "job" / "fedarena" / "result.json").read_text())


@pytest.fixture(scope="module")
def reference(small, tmp_path_factory, one_torch_thread):
    """`fedarena compare --engine reference` of the small config: its summary."""
    out = tmp_path_factory.mktemp("reference") / "run"
    return run_compare(cfg.build(str(small), {}, []), out)


def check_parity(reference: dict, final: dict) -> None:
    """Every exported algorithm's final per-client accuracies (`final`: algorithm -> client id -> accuracy, as the
    sites measured them) are the reference engine's."""
    for run in reference["runs"]:
        expected = run["final"]["personal_acc_per_client"]
        assert final[run["algorithm"]] == pytest.approx(expected, abs=1e-9), run["algorithm"]


def check_no_personal_key(folder_of, sites, received: list[dict]) -> None:
    """No personal key in any message: every train reply sent (each site's log) and received (the server's log)
    holds exactly the shared keys, FedPer's `head.*` never; evaluation replies hold no params."""
    shared = {"body.fc1.weight", "body.fc1.bias", "body.fc2.weight", "body.fc2.bias"}
    everything = shared | {"head.weight", "head.bias"}
    expected = {"fedavg": everything, "fedprox": everything, "ditto": everything, "fedper": shared}
    sent = [json.loads(line) | {"site": s} for s in sites for line in (folder_of(s) / c.SENT_LOG).read_text().splitlines()]
    for log in (sent, received):
        trains = [r for r in log if r["task"] == c.TRAIN]
        assert len(trains) == 4 * 3 * 4  # algorithms x rounds x clients
        for r in trains:
            assert set(r["keys"]) == expected[r["algorithm"]], r
        assert all(r["keys"] == [] for r in log if r["task"] == c.EVALUATE)
    assert sorted((r["algorithm"], r["round"], r["site"], r["task"], tuple(r["keys"])) for r in sent) == \
        sorted((r["algorithm"], r["round"], r["site"], r["task"], tuple(r["keys"])) for r in received)


def site_metrics(folder_of, sites) -> dict:
    """algorithm -> client id -> the final accuracy each site wrote to its metrics.json."""
    out: dict = {}
    for s in sites:
        m = json.loads((folder_of(s) / c.METRICS).read_text())
        for name, evaluations in m["algorithms"].items():
            assert [e["round"] for e in evaluations] == [3]  # eval_every = 3: the last round only
            out.setdefault(name, {})[m["client"]] = evaluations[-1]["acc"]
    return out


def test_the_jobs_code_computes_the_reference_engines_numbers(job, reference, tmp_path, one_torch_thread):
    result = run_in_process(job, tmp_path)
    sites = ["site-1", "site-2", "site-3", "site-4"]

    def folder_of(s):
        return tmp_path / s / "job" / "fedarena"

    check_parity(reference, site_metrics(folder_of, sites))
    received = [json.loads(line) for line in (tmp_path / "server" / "job" / "fedarena" / c.RECEIVED_LOG).read_text().splitlines()]
    check_no_personal_key(folder_of, sites, received)
    for run in reference["runs"]:
        mine = result[run["algorithm"]]
        assert mine["evaluations"][-1]["per_client_acc"] == pytest.approx(run["final"]["personal_acc_per_client"])
        assert mine["evaluations"][-1]["global_acc"] == pytest.approx(run["final"]["global_acc"])
        assert mine["bytes"] == {"up_total": run["bytes"]["up_total"], "down_total": run["bytes"]["down_total"]}
        assert mine["storage_bytes_per_client"] == run["storage_bytes_per_client"]
        assert mine["rejected"] == []
    # the state stays on the sites: FedPer keeps its head (10 x 16 + 10 floats), Ditto its personal model
    state = c.load_state(folder_of("site-2") / "state-fedper.safetensors")
    assert sorted(state.params) == ["head.bias", "head.weight"] and state.params["head.weight"].shape == (10, 16)
    assert sorted(c.load_state(folder_of("site-2") / "state-ditto.safetensors").params) == sorted(
        ["body.fc1.weight", "body.fc1.bias", "body.fc2.weight", "body.fc2.bias", "head.weight", "head.bias"])


def test_a_site_refuses_to_send_a_personal_key(job, tmp_path, monkeypatch):
    pytest.importorskip("nvflare", reason="the job's code needs the `nvflare` extra: pip install -e '.[nvflare]'")
    from fedarena.nvflare_job import client

    real = client.train_client

    def leaky(algo, task, b, state, d, seed, rnd, k):
        upload, new = real(algo, task, b, state, d, seed, rnd, k)
        return type(upload)(params={**upload.params, **new.params}, num_samples=upload.num_samples), new

    monkeypatch.setattr(client, "train_client", leaky)
    small_job = tmp_path / "fedper"
    assert invoke("export", "nvflare", job / "app_server" / "config" / c.JOB_CONFIG, "--out", small_job,
                  "--algorithms", "fedper", "--set", "train.rounds=1").exit_code == 0
    with pytest.raises(FedarenaError, match=r"round 1: fedper's upload holds keys .*'head.bias'.*only the shared keys"):
        run_in_process(small_job, tmp_path / "ws")
    assert not (tmp_path / "ws" / "site-1" / "job" / "fedarena" / c.SENT_LOG).exists()  # nothing was sent


def test_the_server_rejects_malformed_replies(job, tmp_path):
    """A reply with another sample count, a personal key, or an evaluation with an impossible accuracy is rejected
    (logged, the round goes on without it); the other sites' replies are used."""
    small_job = tmp_path / "job"
    assert invoke("export", "nvflare", job / "app_server" / "config" / c.JOB_CONFIG, "--out", small_job,
                  "--algorithms", "fedper", "--set", "train.rounds=1", "--set", "train.eval_every=1").exit_code == 0

    def tamper(task, site, reply):
        if task == c.TRAIN and site == "site-1":
            reply.meta[c.NUM_SAMPLES] += 1
        if task == c.TRAIN and site == "site-2":
            reply.params["head.weight"] = np.zeros((10, 16), dtype=np.float32)
        if task == c.EVALUATE and site == "site-3":
            reply.metrics["acc"] = 1.5
        return reply

    result = run_in_process(small_job, tmp_path / "ws", tamper)["fedper"]
    reasons = {r["client"]: r["reason"] for r in result["rejected"]}
    assert sorted(reasons) == ["0", "1", "2"]
    assert "training samples, the export counted" in reasons["0"]
    assert "unexpected ['head.weight']" in reasons["1"]
    assert "inconsistent metrics" in reasons["2"]
    assert sorted(result["evaluations"][-1]["per_client_acc"]) == ["0", "1", "3"]  # client 2's evaluation rejected


@pytest.mark.slow
def test_nvflare_simulator_runs_the_job_with_the_reference_engines_numbers(job, reference, tmp_path):
    """`nvflare simulator JOB -n 4 -t 4`: 4 algorithms x 3 rounds on 4 sites (loopback only; ~2 min on 2 cores)."""
    pytest.importorskip("nvflare", reason="the NVFlare simulator test needs the `nvflare` extra")
    workspace = tmp_path / "workspace"
    done = subprocess.run([sys.executable, "-m", "nvflare.cli", "simulator", str(job), "-n", "4", "-t", "4",
                           "-w", str(workspace)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sites = ["site-1", "site-2", "site-3", "site-4"]

    def folder_of(s):
        return workspace / s / "simulate_job" / "fedarena"

    check_parity(reference, site_metrics(folder_of, sites))
    server = workspace / "server" / "simulate_job" / "fedarena"
    received = [json.loads(line) for line in (server / c.RECEIVED_LOG).read_text().splitlines()]
    check_no_personal_key(folder_of, sites, received)
    result = json.loads((server / "result.json").read_text())
    for run in reference["runs"]:
        assert result[run["algorithm"]]["bytes"] == {"up_total": run["bytes"]["up_total"],
                                                     "down_total": run["bytes"]["down_total"]}


@pytest.mark.slow
def test_every_exported_algorithm_computes_the_reference_engines_numbers(tmp_path, one_torch_thread):
    """All 15 algorithms that fit, 2 rounds, evaluated every round, on an MLP with batch norm (FedBN's personal
    norm layers; int64 buffers travel too), 3 of 4 clients per round (the round samples), through the job's code in
    process (~30 s on 2 shared cores)."""
    fits = sorted(n for n, cls in REGISTRY.items() if n not in ("centralized", "ifca", "local", "mocha", "scaffold"))
    assert len(fits) == 15
    path = tmp_path / "all.toml"
    path.write_text(SMALL.replace("rounds = 3", "rounds = 2").replace("eval_every = 3", "eval_every = 1")
                    .replace("clients_per_round = 4", "clients_per_round = 3").replace("hidden = 16", 'hidden = 8\nnorm = "bn"')
                    .replace('algorithms = ["fedavg", "fedprox", "fedper", "ditto"]', f"algorithms = {json.dumps(fits)}"))
    assert invoke("export", "nvflare", path, "--out", tmp_path / "job").exit_code == 0
    result = run_in_process(tmp_path / "job", tmp_path / "ws")
    reference = run_compare(cfg.build(str(path), {}, []), tmp_path / "reference")
    for run in reference["runs"]:
        mine = result[run["algorithm"]]
        assert [e["round"] for e in mine["evaluations"]] == [1, 2]
        assert mine["sampled"] == [[str(k) for k in sample_clients(1, rnd, [0, 1, 2, 3], 3)] for rnd in (1, 2)]
        assert all(len(s) == 3 for s in mine["sampled"])
        assert mine["evaluations"][-1]["per_client_acc"] == pytest.approx(run["final"]["personal_acc_per_client"],
                                                                          abs=1e-9), run["algorithm"]
        assert mine["evaluations"][-1]["global_acc"] == pytest.approx(run["final"]["global_acc"]), run["algorithm"]
        assert mine["bytes"] == {"up_total": run["bytes"]["up_total"], "down_total": run["bytes"]["down_total"]}
        assert mine["rejected"] == []
