"""The command line: a small end-to-end comparison, its run directory, and every bad-input exit."""

import json
from importlib import resources

import jsonschema
import numpy as np
import pyarrow.parquet as pq
import pytest
from running import strip_timings
from safetensors.torch import load_file
from typer.testing import CliRunner

from fedarena.algorithms import REGISTRY
from fedarena.cli import app

runner = CliRunner()
SMALL = ["--data", "digits", "--partition", "dirichlet", "--alpha", "0.5", "--clients", "6",
         "--clients-per-round", "3", "--rounds", "3", "--model", "mlr", "--seed", "1",
         "--algorithms", ",".join(REGISTRY)]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "small"
    result = invoke("compare", *SMALL, "--out", out)
    assert result.exit_code == 0, result.output
    return out, result


def test_compare_writes_a_valid_run_directory(small_run):
    out, result = small_run
    assert f"run directory: {out}" in result.output.replace("\n", "")
    summary = json.loads((out / "summary.json").read_text())
    schema = json.loads(resources.files("fedarena").joinpath("schemas/summary.schema.json").read_text())
    jsonschema.validate(summary, schema)
    assert [r["algorithm"] for r in summary["runs"]] == list(REGISTRY)
    by = {r["algorithm"]: r for r in summary["runs"]}
    assert by["local"]["final"]["global_acc"] is None and by["local"]["bytes"]["up_total"] == 0
    assert by["centralized"]["federated"] is False and by["centralized"]["bytes"]["down_total"] == 0
    assert by["fedavg"]["storage_bytes_per_client"] == 0 and by["local"]["storage_bytes_per_client"] > 0
    # fedavg: 3 rounds x 3 clients x (up + down) of a 64x10+10 float32 model plus headers
    fedavg_total = by["fedavg"]["bytes"]["up_total"] + by["fedavg"]["bytes"]["down_total"]
    assert 3 * 3 * 2 * 650 * 4 < fedavg_total < 3 * 3 * 2 * (650 * 4 + 400)
    assert summary["dataset"]["num_clients"] == 6 and summary["dataset"]["partition"] == "dirichlet"
    table = pq.read_table(out / "metrics.parquet").to_pydict()
    assert len(table["algorithm"]) == len(REGISTRY) * 3 * 6
    assert sum(table["sampled"]) == (len(REGISTRY) - 1) * 3 * 3  # centralized samples no real client
    fedavg_bytes = sum(u + d for a, u, d in zip(table["algorithm"], table["bytes_up"], table["bytes_down"]) if a == "fedavg")
    assert fedavg_bytes == by["fedavg"]["bytes"]["up_total"] + by["fedavg"]["bytes"]["down_total"]
    per_round = [sum(u + d for a, r, u, d in zip(table["algorithm"], table["round"], table["bytes_up"], table["bytes_down"])
                     if a == "fedavg" and r == rnd) for rnd in (1, 2, 3)]
    assert [h["bytes_cumulative"] for h in by["fedavg"]["history"]] == [sum(per_round[:r]) for r in (1, 2, 3)]
    g = load_file(out / "models" / "fedavg" / "global.safetensors")
    assert set(g) == {"head.weight", "head.bias"}
    assert len(list((out / "models" / "local").glob("client-*.safetensors"))) == 6
    assert not list(out.parent.glob(".*partial*"))


def test_per_client_accuracy_consistent_with_mean(small_run):
    summary = json.loads((small_run[0] / "summary.json").read_text())
    sizes = summary["dataset"]["heterogeneity"]["test_sizes"]
    for run in summary["runs"]:
        accs = list(run["final"]["personal_acc_per_client"].values())
        assert run["final"]["personal_acc_mean"] == pytest.approx(np.dot(accs, sizes) / sum(sizes))
        assert run["final"]["personal_acc_worst10"] == pytest.approx(min(accs))  # ceil(0.6) = 1 client


def test_same_seed_same_numbers_and_config_reproduces(small_run, tmp_path):
    out, _ = small_run
    again = invoke("compare", *SMALL, "--out", tmp_path / "again")
    assert again.exit_code == 0, again.output
    rerun = invoke("compare", "--config", out / "config.toml", "--out", tmp_path / "rerun")
    assert rerun.exit_code == 0, rerun.output
    first = strip_timings(json.loads((out / "summary.json").read_text()))
    assert strip_timings(json.loads((tmp_path / "again" / "summary.json").read_text())) == first
    assert strip_timings(json.loads((tmp_path / "rerun" / "summary.json").read_text())) == first
    other = invoke("compare", *SMALL, "--seed", "2", "--out", tmp_path / "other")
    assert other.exit_code == 0, other.output
    assert strip_timings(json.loads((tmp_path / "other" / "summary.json").read_text())) != first


def test_list_json_names_every_algorithm():
    result = invoke("list", "--json")
    assert result.exit_code == 0
    info = json.loads(result.output)
    assert [a["name"] for a in info["algorithms"]] == list(REGISTRY)
    assert all(a["paper"] and a["family"] in ("global", "personalized", "baseline") for a in info["algorithms"])


BAD = [
    (["--algorithms", "fedavg,nope"], "unknown algorithm 'nope'"),
    (["--data", "mnist"], "unknown dataset 'mnist'"),
    (["--partition", "zipf"], "unknown partition 'zipf'"),
    (["--model", "resnet"], "unknown model 'resnet'"),
    (["--set", "train.nope=1"], "unknown config key 'train.nope'"),
    (["--set", "nosection.key=1"], "unknown config section 'nosection'"),
    (["--set", "fedprox.gamma=1"], "unknown config key 'fedprox.gamma'"),
    (["--set", "fedprox.mu=-1"], "fedprox.mu must be >= 0"),
    (["--set", "train.lr=abc"], "train.lr: expected a number"),
    (["--set", "trainlr"], "--set expects SECTION.KEY=VALUE"),
    (["--alpha", "0"], "data.alpha"),
    (["--alpha", "-1"], "data.alpha"),
    (["--clients", "5", "--clients-per-round", "6"], "train.clients_per_round (6) exceeds the 5 clients that train"),
    (["--clients", "6", "--new-clients", "0.34", "--clients-per-round", "5"],
     "train.clients_per_round (5) exceeds the 4 clients that train (2 of data.num_clients 6 held out"),
    (["--set", "train.clients_per_round=0"], "train.clients_per_round must be >= 1"),
    (["--clients", "2", "--secagg"], "privacy.secagg needs train.clients_per_round >= 3"),
    (["--clients", "4", "--secagg", "--secagg-threshold", "5"],
     "privacy.secagg_threshold (5) exceeds train.clients_per_round (4)"),
    (["--rounds", "0"], "train.rounds must be >= 1"),
    (["--clients", "2000", "--clients-per-round", "10"], "2000"),
    (["--data", "npz-dir:/nonexistent", "--partition", "iid"], "cannot be used with npz-dir"),
    (["--data", "npz-dir:/nonexistent/fedarena"], "/nonexistent/fedarena"),
    (["--config", "/nonexistent.toml"], "config file not found"),
    (["--data", "synthetic", "--model", "cnn", "--rounds", "1"], "cnn needs image inputs"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_exits_2_with_one_line(args, message, tmp_path):
    out = tmp_path / "run"
    result = invoke("compare", *args, "--out", out)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not (out / "summary.json").exists()
    assert not list(tmp_path.glob(".*partial*"))


def test_non_empty_out_dir_refused(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    result = invoke("compare", "--rounds", "1", "--out", tmp_path)
    assert result.exit_code == 2 and "not empty" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_bad_config_file_refused(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("[train]\nrounds = 'many'\n")
    result = invoke("compare", "--config", bad, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "train.rounds: expected an integer" in result.output
    bad.write_text("[train\n")
    assert invoke("compare", "--config", bad, "--out", tmp_path / "o").exit_code == 2


def test_two_processes_give_identical_bits(tmp_path):
    """Determinism across processes (dict orders, hash seeds): every metrics row, every number."""
    import os
    import subprocess
    import sys

    import pyarrow.parquet as pq

    args = [*SMALL[:-1], "fedavg,fedprox,fedavg-ft", "--model", "mlp", "--set", "model.hidden=16"]
    for name, hashseed in (("a", "1"), ("b", "2")):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        subprocess.run([sys.executable, "-m", "fedarena.cli", "compare", *args, "--set", "fedprox.mu=0.5",
                        "--out", str(tmp_path / name)], check=True, env=env, capture_output=True)
    assert pq.read_table(tmp_path / "a" / "metrics.parquet").equals(pq.read_table(tmp_path / "b" / "metrics.parquet"))
    a, b = (strip_timings(json.loads((tmp_path / n / "summary.json").read_text())) for n in "ab")
    assert a == b


def test_new_clients_are_held_out_and_onboarded(tmp_path):
    out = tmp_path / "nc"
    result = invoke("compare", *SMALL, "--new-clients", "0.34", "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    schema = json.loads(resources.files("fedarena").joinpath("schemas/summary.schema.json").read_text())
    jsonschema.validate(summary, schema)
    by = {r["algorithm"]: r for r in summary["runs"]}
    new = by["fedavg"]["new_clients"]["clients"]
    assert len(new) == 2  # round(0.34 * 6)
    for run in summary["runs"]:
        nc = run["new_clients"]
        assert nc["clients"] == new
        assert not set(new) & set(run["final"]["personal_acc_per_client"])
        assert len(run["final"]["personal_acc_per_client"]) == 4
    assert by["fedavg"]["new_clients"]["adaptation_steps"] == 0
    assert by["fedavg"]["new_clients"]["before"] == by["fedavg"]["new_clients"]["after"]
    assert by["fedavg"]["new_clients"]["bytes_down"] == by["fedavg"]["bytes"]["down_total"] / 9 * 2  # 9 downloads in training
    assert by["local"]["new_clients"]["bytes_down"] == 0 and by["local"]["new_clients"]["adaptation_steps"] > 0
    assert by["fedavg-ft"]["new_clients"]["adaptation_steps"] > 0
    table = pq.read_table(out / "metrics.parquet").to_pydict()
    assert not set(new) & set(table["client"])


def test_shortest_compare_runs_and_records_the_resolved_clients_per_round(tmp_path):
    """`fedarena compare --clients 3 --rounds 2`: clients_per_round unset resolves to min(10, 3 training
    clients); config.toml and summary.json record 3, so a rerun from config.toml is identical."""
    out = tmp_path / "short"
    result = invoke("compare", "--clients", "3", "--rounds", "2", "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["train"]["clients_per_round"] == 3
    assert "clients_per_round = 3" in (out / "config.toml").read_text()
    rerun = invoke("compare", "--config", out / "config.toml", "--out", tmp_path / "rerun")
    assert rerun.exit_code == 0, rerun.output
    assert strip_timings(json.loads((tmp_path / "rerun" / "summary.json").read_text())) == strip_timings(summary)


@pytest.mark.parametrize(("flags", "num_clients", "expected"), [
    ({}, 20, 10), ({"data": {"num_clients": 3}}, 3, 3), ({"data": {"num_clients": 12, "new_clients": 0.5}}, 12, 6),
    ({"data": {"num_clients": 30, "new_clients": 0.1}}, 30, 10), ({"train": {"clients_per_round": 7}}, 20, 7),
])
def test_clients_per_round_unset_resolves_to_min_10_training_clients(flags, num_clients, expected):
    from fedarena import config as cfg

    conf = cfg.build(None, flags, [])
    given = flags.get("train", {}).get("clients_per_round")
    assert conf.train.clients_per_round == given  # None: not set, and not written until resolved
    assert cfg.to_tree(conf)["train"].get("clients_per_round") == given
    assert cfg.with_clients_per_round(conf, num_clients).train.clients_per_round == expected
    assert cfg.build(None, flags, ["train.clients_per_round=auto"]).train.clients_per_round is None


SHARED = ["--config", "--data", "--partition", "--alpha", "--shards-per-client", "--new-clients", "--clients-per-round",
          "--rounds", "--local-epochs", "--batch-size", "--lr", "--model", "--algorithms", "--seed", "--seeds",
          "--target", "--out", "--set", "--dp-clip", "--dp-noise", "--secagg"]


def test_options_shared_by_commands_are_declared_once():
    """compare and deploy take the same experiment flags, declared once (same help, type and default);
    sweep reuses the ones it takes."""
    import typer

    commands = typer.main.get_command(app).commands
    options = {name: {o: p for p in commands[name].params for o in p.opts} for name in ("compare", "deploy", "sweep")}
    for flag in SHARED:
        a, b = options["compare"][flag], options["deploy"][flag]
        assert (a.help, a.type.name, a.default, a.multiple) == (b.help, b.type.name, b.default, b.multiple), flag
    for flag in set(options["sweep"]) & set(SHARED) - {"--out"}:  # sweep's --out names a sweep directory
        a, b = options["compare"][flag], options["sweep"][flag]
        assert (a.help, a.type.name, a.default) == (b.help, b.type.name, b.default), flag


def test_threads_sets_torch_threads_and_refuses_zero(tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        result = invoke("compare", "--data", "digits", "--clients", "4", "--rounds", "1", "--model", "mlr",
                        "--algorithms", "fedavg", "--threads", "1", "--out", tmp_path / "run")
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    result = invoke("compare", "--threads", "0", "--out", tmp_path / "zero")
    assert result.exit_code == 2 and "--threads" in result.output and not (tmp_path / "zero").exists()
