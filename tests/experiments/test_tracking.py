"""`--track mlflow[:URI]` and `--track tensorboard[:DIR]`: a tiny comparison logged to both, read back through
MlflowClient and TensorBoard's EventAccumulator, every value checked against summary.json and metrics.parquet."""

import json
import os
import sys

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fedarena.cli import app
from fedarena.experiments import tracking

pytest.importorskip("mlflow", reason="the tracking tests need the `track` extra: pip install -e '.[track]'")
pytest.importorskip("tensorboard", reason="the tracking tests need the `track` extra: pip install -e '.[track]'")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

runner = CliRunner()
TINY = ["--data", "digits", "--clients", "4", "--rounds", "3", "--model", "mlr", "--seed", "3", "--seeds", "2",
        "--algorithms", "fedavg,fedper"]
HISTORY = ("personal_acc_mean", "personal_acc_worst10", "global_acc")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """fedavg and fedper, 3 rounds, seeds 3 and 4, with a report, tracked to the default MLflow database and the
    default TensorBoard directory."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    result = invoke("compare", *TINY, "--report", "--out", run, "--track", "mlflow", "--track", "tensorboard")
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    return run, summary, result.output


def expected_bytes(run):
    """Per (algorithm, seed, round): bytes up and down summed over clients and rounds 1..round, from the parquet."""
    rows = pq.read_table(run / "metrics.parquet").to_pylist()
    out = {}
    for key in {(r["algorithm"], r["seed"]) for r in rows}:
        up = down = 0
        for rnd in sorted({r["round"] for r in rows if (r["algorithm"], r["seed"]) == key}):
            up += sum(r["bytes_up"] for r in rows if (r["algorithm"], r["seed"], r["round"]) == (*key, rnd))
            down += sum(r["bytes_down"] for r in rows if (r["algorithm"], r["seed"], r["round"]) == (*key, rnd))
            out[(*key, rnd)] = (up, down)
    return out


def test_mlflow_parent_children_params_metrics_and_artifacts(tracked):
    run, summary, output = tracked
    uri = f"sqlite:///{run.parent / 'mlflow.db'}"
    assert f"at {uri}" in output
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("fedarena")
    assert experiment.artifact_location == (run.parent / "mlartifacts").as_uri()
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == "tiny" and parent.info.status == "FINISHED"
    assert parent.data.tags["fedarena.run_dir"] == str(run.resolve())
    assert parent.data.params["data.num_clients"] == "4"
    assert parent.data.params["run.algorithms"] == '["fedavg", "fedper"]'
    assert parent.data.params["train.lr"] == json.dumps(summary["config"]["train"]["lr"])
    assert sorted(a.path for a in client.list_artifacts(parent.info.run_id)) == [
        "config.toml", "report.html", "report.md", "summary.json"]

    children = {(r.data.params["algorithm"], int(r.data.params["seed"])): r for r in runs if r is not parent}
    assert sorted(children) == [("fedavg", 3), ("fedavg", 4), ("fedper", 3), ("fedper", 4)]
    byte_totals = expected_bytes(run)
    for entry in summary["runs"]:
        key = (entry["algorithm"], entry["seed"])
        child = children[key]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.run_name == f"{key[0]} seed {key[1]}" and child.info.status == "FINISHED"
        assert child.data.params["family"] == entry["family"]
        assert child.data.params["local_training.lr"] == json.dumps(entry["local_training"]["lr"])
        assert child.data.params["data.num_clients"] == "4"
        for name in HISTORY:
            want = [(h["round"], h[name]) for h in entry["history"] if h[name] is not None]
            got = [(m.step, m.value) for m in client.get_metric_history(child.info.run_id, name)]
            assert sorted(got) == want, name
        assert [h["round"] for h in entry["history"]] == [1, 2, 3]
        for direction, i in (("up", 0), ("down", 1)):
            got = sorted((m.step, m.value) for m in client.get_metric_history(child.info.run_id, f"bytes_{direction}_cumulative"))
            assert got == [(r, byte_totals[(*key, r)][i]) for r in (1, 2, 3)]
        # the two directions add up to summary.json's bytes_cumulative and, at the last round, to its totals
        last = client.get_run(child.info.run_id).data.metrics  # each metric's value at its last step
        assert last["bytes_up_cumulative"] + last["bytes_down_cumulative"] == entry["history"][-1]["bytes_cumulative"]
        assert last["bytes_up_cumulative"] == entry["bytes"]["up_total"]
        models = sorted(a.path for a in client.list_artifacts(child.info.run_id, "models"))
        on_disk = sorted(f"models/{p.name}" for p in (run / "models" / f"seed-{key[1]}" / key[0]).iterdir())
        assert models == on_disk and models
    assert "global_acc" not in children[("fedper", 3)].data.metrics  # fedper has no global model
    assert "epsilon" not in children[("fedavg", 3)].data.metrics  # no DP


def test_tensorboard_scalars_equal_the_run_directory(tracked):
    run, summary, output = tracked
    base = run / "tensorboard"
    assert f"tensorboard: {base.resolve()}" in output
    byte_totals = expected_bytes(run)
    assert sorted(p.relative_to(base).as_posix() for p in base.glob("*/*")) == [
        "fedavg/seed-3", "fedavg/seed-4", "fedper/seed-3", "fedper/seed-4"]
    for entry in summary["runs"]:
        key = (entry["algorithm"], entry["seed"])
        events = EventAccumulator(str(base / key[0] / f"seed-{key[1]}"))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert ("global_acc" in tags) == (key[0] == "fedavg")
        for name in HISTORY:
            if name in tags:  # TensorBoard keeps 32-bit floats
                assert [(e.step, e.value) for e in events.Scalars(name)] == [
                    (h["round"], pytest.approx(h[name], rel=1e-6)) for h in entry["history"]]
        assert [(e.step, e.value) for e in events.Scalars("bytes_down_cumulative")] == [
            (r, pytest.approx(byte_totals[(*key, r)][1], rel=1e-6)) for r in (1, 2, 3)]


def test_file_uri_and_a_given_tensorboard_dir(tracked, tmp_path, monkeypatch):
    """A `file:` store works (MLflow's opt-in is set only while logging, not left behind); a TensorBoard DIR given
    gets the run under its name."""
    run, summary, _ = tracked
    monkeypatch.delenv(tracking.FILE_STORE_OPT_IN, raising=False)
    uri = f"file:{tmp_path / 'mlruns'}"
    dests = tracking.prepare([f"mlflow:{uri}", f"tensorboard:{tmp_path / 'tb'}"], run)
    assert [d.target for d in dests] == [uri, str(tmp_path / "tb")]
    lines = tracking.track_run(dests, run)
    assert tracking.FILE_STORE_OPT_IN not in os.environ
    assert lines[0].startswith("mlflow: run ") and "(4 child runs)" in lines[0]
    assert sorted(p.relative_to(tmp_path / "tb").as_posix() for p in (tmp_path / "tb").glob("*/*/*")) == [
        "tiny/fedavg/seed-3", "tiny/fedavg/seed-4", "tiny/fedper/seed-3", "tiny/fedper/seed-4"]
    monkeypatch.setenv(tracking.FILE_STORE_OPT_IN, "true")  # reading a file store back needs the opt-in too
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("fedarena").experiment_id])
    assert len(runs) == 5
    fedper = next(r for r in runs if r.data.params.get("algorithm") == "fedper" and r.data.params["seed"] == "4")
    entry = next(e for e in summary["runs"] if (e["algorithm"], e["seed"]) == ("fedper", 4))
    assert [(m.step, m.value) for m in sorted(client.get_metric_history(fedper.info.run_id, "personal_acc_mean"),
                                              key=lambda m: m.step)] == [
        (h["round"], h["personal_acc_mean"]) for h in entry["history"]]
    assert fedper.data.params["hyperparameters.personal_layers"] == '["head.*"]'


@pytest.mark.parametrize("value, says", [
    ("foo", "expected mlflow, mlflow:URI, tensorboard or tensorboard:DIR, got 'foo'"),
    ("mlflow:", "nothing after the colon"),
    ("mlflow:runs/mlflow.db", "an MLflow tracking URI starts with its scheme"),
    ("MLflow", "expected mlflow, mlflow:URI"),
])
def test_a_malformed_track_exits_2_before_any_work(tmp_path, value, says):
    result = invoke("compare", *TINY, "--out", tmp_path / "run", "--track", value)
    assert result.exit_code == 2 and says in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()


def test_track_splits_at_the_first_colon():
    assert tracking.Track.parse("mlflow:sqlite:///x/m.db") == tracking.Track("mlflow", "sqlite:///x/m.db")
    assert tracking.Track.parse("tensorboard:C:/tb") == tracking.Track("tensorboard", "C:/tb")
    assert tracking.Track.parse("tensorboard") == tracking.Track("tensorboard", None)


@pytest.mark.parametrize("module, kind", [("mlflow", "mlflow"), ("tensorboard", "tensorboard")])
def test_without_the_extra_track_exits_2_naming_the_install(tmp_path, monkeypatch, module, kind):
    monkeypatch.setitem(sys.modules, module, None)  # `import mlflow` now raises ImportError
    for cmd in (["compare", *TINY], ["sweep", "--cells", "iid", "--rounds", "2"]):
        result = invoke(*cmd, "--out", tmp_path / cmd[0], "--track", kind)
        assert result.exit_code == 2, result.output
        assert "pip install 'fedarena[track]'" in " ".join(result.output.split())
        assert not (tmp_path / cmd[0]).exists()


def test_mlflow_is_not_imported_unless_track_asks(tmp_path):
    """Importing mlflow takes about 1.5 s: the CLI and the tracking module import it only for --track mlflow."""
    import subprocess

    code = ("import sys; from typer.testing import CliRunner; from fedarena.cli import app; "
            f"r = CliRunner().invoke(app, ['compare', '--out', {str(tmp_path / 'run')!r}, '--track', 'foo']); "
            "print(r.exit_code, 'mlflow' in sys.modules, 'torch.utils.tensorboard' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["2", "False", "False"]


def mlflow_runs(uri, monkeypatch):
    monkeypatch.setenv(tracking.FILE_STORE_OPT_IN, "true")
    client = MlflowClient(tracking_uri=uri)
    return client, client.search_runs([client.get_experiment_by_name("fedarena").experiment_id])


@pytest.mark.slow
def test_sweep_tracks_one_run_above_each_cell_comparison(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    uri = f"file:{tmp_path / 'mlruns'}"
    result = invoke("sweep", "--cells", "iid,shards-2", "--seeds", "1", "--rounds", "2", "--clients", "4",
                    "--model", "mlr", "--algorithms", "fedavg,fedper", "--out", out,
                    "--track", f"mlflow:{uri}", "--track", "tensorboard")
    assert result.exit_code == 0, result.output
    assert "(2 comparisons, 4 runs)" in result.output
    client, runs = mlflow_runs(uri, monkeypatch)
    by_id = {r.info.run_id: r for r in runs}
    (top,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert top.info.run_name == "sweep" and top.data.tags["fedarena.kind"] == "sweep"
    assert top.data.params["cells"] == "iid,shards-2"
    assert {a.path for a in client.list_artifacts(top.info.run_id)} >= {"sweep.json", "sweep.html", "sweep.md"}
    cells = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == top.info.run_id}
    assert sorted(cells) == ["iid", "shards-2"]
    assert cells["shards-2"].data.params["data.partition"] == "shards"
    leaves = [r for r in runs if by_id.get(r.data.tags.get("mlflow.parentRunId", "")) in cells.values()]
    assert sorted((by_id[r.data.tags["mlflow.parentRunId"]].info.run_name, r.info.run_name) for r in leaves) == [
        ("iid", "fedavg seed 0"), ("iid", "fedper seed 0"), ("shards-2", "fedavg seed 0"), ("shards-2", "fedper seed 0")]
    summary = json.loads((out / "cells" / "iid" / "summary.json").read_text())
    fedper = next(r for r in leaves if r.info.run_name == "fedper seed 0"
                  and by_id[r.data.tags["mlflow.parentRunId"]].info.run_name == "iid")
    entry = next(e for e in summary["runs"] if e["algorithm"] == "fedper")
    assert sorted((m.step, m.value) for m in client.get_metric_history(fedper.info.run_id, "personal_acc_worst10")) == [
        (h["round"], h["personal_acc_worst10"]) for h in entry["history"]]
    assert sorted(p.relative_to(out / "tensorboard").as_posix() for p in (out / "tensorboard").glob("*/*/*")) == [
        "iid/fedavg/seed-0", "iid/fedper/seed-0", "shards-2/fedavg/seed-0", "shards-2/fedper/seed-0"]


@pytest.mark.slow
def test_deploy_is_tracked_from_its_run_directory(tmp_path, monkeypatch):
    out = tmp_path / "deployed"
    uri = f"file:{tmp_path / 'mlruns'}"
    result = invoke("deploy", "--local", "2", "--rounds", "2", "--model", "mlr", "--algorithms", "fedavg",
                    "--out", out, "--track", f"mlflow:{uri}", "--track", f"tensorboard:{tmp_path / 'tb'}")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    client, runs = mlflow_runs(uri, monkeypatch)
    (child,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert child.data.tags["fedarena.engine"] == "flower"
    entry = summary["runs"][0]
    assert sorted((m.step, m.value) for m in client.get_metric_history(child.info.run_id, "global_acc")) == [
        (h["round"], h["global_acc"]) for h in entry["history"]]
    events = EventAccumulator(str(tmp_path / "tb" / "deployed" / "fedavg" / "seed-0"))
    events.Reload()
    assert [e.step for e in events.Scalars("personal_acc_mean")] == [h["round"] for h in entry["history"]]


def test_track_is_declared_once_for_compare_sweep_and_deploy():
    import typer

    commands = typer.main.get_command(app).commands
    declared = [next(p for p in commands[name].params if "--track" in p.opts) for name in ("compare", "sweep", "deploy")]
    assert len({(p.help, p.type.name, p.default, p.multiple) for p in declared}) == 1 and declared[0].multiple
