"""Use-case presets: each is a valid config file shipped with the package; `--preset` runs it, flags apply on top."""

import json

import pytest
from typer.testing import CliRunner

from fedarena import config as cfg
from fedarena.cli import app
from fedarena.experiments.presets import PRESETS, preset_file

runner = CliRunner()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_config(name):
    config = cfg.validate(cfg.build(str(preset_file(name)), {}, []))
    assert config.run.algorithms and config.data.name


def test_list_names_every_preset_and_whether_it_runs_offline():
    info = json.loads(runner.invoke(app, ["list", "--json"]).output)
    assert {p["name"]: p["offline"] for p in info["presets"]} == {n: p.offline for n, p in PRESETS.items()}


def test_a_preset_runs_with_flags_on_top(tmp_path):
    result = runner.invoke(app, ["compare", "--preset", "mobile-iid", "--rounds", "1", "--algorithms", "fedavg",
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["data"]["partition"] == "iid" and summary["config"]["train"]["rounds"] == 1
    assert [r["algorithm"] for r in summary["runs"]] == ["fedavg"]


@pytest.mark.parametrize("args, message", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--preset", "mobile-iid", "--config", "x.toml"], "--preset or --config"),
])
def test_bad_preset_use_exits_2_and_writes_nothing(tmp_path, args, message):
    result = runner.invoke(app, ["compare", *args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and message in result.output.replace("\n", " ")
    assert not (tmp_path / "run").exists()
