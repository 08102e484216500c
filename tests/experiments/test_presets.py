"""Use-case presets: each is a valid config file shipped with the package; `--preset` runs it, flags apply on top.
The presets that need data (a Hub download, the user's own files) refuse to run without it on one line, and run
end to end on small local datasets in their recipes' schemas (the builders of tests/data)."""

import json

import datasets
import numpy as np
import pytest
from data.test_data import write_client
from data.test_hf import fed_isic, speech_commands
from typer.testing import CliRunner

from fedarena import config as cfg
from fedarena.algorithms import REGISTRY
from fedarena.cli import app
from fedarena.experiments.presets import PRESETS, preset_file

runner = CliRunner()
EMBEDDED = ("digits", "synthetic", "shakespeare")
NEEDS_HUB = ("keyword-spotting", "medical-imaging")


def preset_config(name: str) -> cfg.Config:
    return cfg.validate(cfg.build(str(preset_file(name)), {}, []))


def run_preset(tmp_path, name: str, *args: object):
    out = tmp_path / "run"
    result = runner.invoke(app, ["compare", "--preset", name, *map(str, args), "--seed", "1", "--out", str(out)])
    return result, out


def one_line(result) -> str:
    return " ".join(result.output.split())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_config(name):
    config = cfg.validate(cfg.build(str(preset_file(name)), {}, []))
    assert config.run.algorithms and config.data.name


def test_list_names_every_preset_and_whether_it_runs_offline():
    info = json.loads(runner.invoke(app, ["list", "--json"]).output)
    assert {p["name"]: p["offline"] for p in info["presets"]} == {n: p.offline for n, p in PRESETS.items()}
    assert set(PRESETS) == {"next-word", "keyword-spotting", "medical-imaging", "mobile-iid", "wearables"}
    text = runner.invoke(app, ["list"]).output
    for name, preset in PRESETS.items():
        assert f"preset {name} ({'offline' if preset.offline else 'needs'}" in text


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_is_offline_exactly_when_its_data_is_embedded(name):
    """Offline: runs as shipped on a fresh machine. The others say what they need, in `needs` and in their file."""
    preset, header = PRESETS[name], preset_file(name).read_text().split("\n[")[0]
    assert preset.offline == (preset_config(name).data.name in EMBEDDED)
    assert header.startswith(f"# fedarena preset `{name}`:")
    assert ("runs offline" in header) == preset.offline and ("\n# NEEDS " in header) != preset.offline
    assert preset.where == ("offline" if preset.offline else f"needs {preset.needs}") and (preset.offline or preset.needs)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_compares_global_and_personalized_algorithms(name):
    families = {REGISTRY[a].family for a in preset_config(name).run.algorithms}
    assert {"global", "personalized"} <= families, families


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


# ---------------------------------------------------------------- presets that need data


@pytest.mark.parametrize("name", NEEDS_HUB)
def test_a_hub_preset_without_its_data_exits_2_naming_the_download(tmp_path, monkeypatch, name):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # nothing cached
    result, out = run_preset(tmp_path, name, "--rounds", "1")
    assert result.exit_code == 2, result.output
    line = one_line(result)
    source = preset_config(name).data.name.removeprefix("hf:").partition(":")[0]
    assert "not in the local Hugging Face cache" in line and f"load_dataset('{source}'" in line
    assert "save_to_disk" in line and "--data hf:disk --set data.files=DIR" in line
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_wearables_without_data_exits_2_saying_to_give_the_directory(tmp_path):
    result, out = run_preset(tmp_path, "wearables", "--rounds", "1")
    assert result.exit_code == 2, result.output
    assert "give --data npz-dir:PATH" in one_line(result) and not out.exists()


def summary_of(result, out, name: str, **expect) -> dict:
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [r["algorithm"] for r in summary["runs"]] == list(preset_config(name).run.algorithms)
    for key, value in expect.items():
        assert summary["dataset"][key] == value, key
    return summary


def test_wearables_runs_on_a_directory_of_per_client_npz_files(tmp_path, one_torch_thread):
    """Three wearers' accelerometer windows (20 steps x 3 axes) of 4 activities, as the user's own files."""
    rng = np.random.default_rng(0)
    for c, n in enumerate((16, 12, 10)):
        for split, m in (("train", n), ("test", n // 2)):
            y = np.arange(m) % 4
            write_client(tmp_path / "wear", split, f"wearer{c}",
                         x=(rng.standard_normal((m, 20, 3)) + y[:, None, None]).astype(np.float32), y=y)
    result, out = run_preset(tmp_path, "wearables", "--data", f"npz-dir:{tmp_path / 'wear'}", "--rounds", "2",
                             "--set", "model.hidden=8")
    s = summary_of(result, out, "wearables", num_clients=3, input_shape=[20, 3], num_classes=4)
    assert s["config"]["train"]["rounds"] == 2 and s["config"]["model"]["name"] == "mlp"


def test_keyword_spotting_runs_on_speech_commands_schema_by_speaker(tmp_path, one_torch_thread):
    path = speech_commands(tmp_path / "speech")
    result, out = run_preset(tmp_path, "keyword-spotting", "--data", "hf:disk", "--set", f"data.files={path}",
                             "--clients", "3", "--rounds", "1")
    s = summary_of(result, out, "keyword-spotting", num_clients=3, input_shape=[1, 40, 101])
    assert s["model"]["name"] == "cnn" and s["dataset"]["heterogeneity"]["details"]["rows_without_id"] == 1


def test_medical_imaging_runs_on_fed_isic2019_schema_by_hospital(tmp_path, one_torch_thread):
    files = fed_isic(tmp_path / "isic.parquet")
    result, out = run_preset(tmp_path, "medical-imaging", "--data", "hf:parquet", "--set", f"data.files={files}",
                             "--set", "data.image_size=8", "--rounds", "1")
    s = summary_of(result, out, "medical-imaging", num_clients=3, input_shape=[3, 8, 8], client_ids=["0", "1", "2"])
    assert s["model"]["norm"] == "bn"


# ---------------------------------------------------------------- summary.json's model width


def test_summary_reports_the_lstm_width_that_was_built(tmp_path, one_torch_thread):
    """model.hidden left at its default (200, the mlp's) builds LEAF's 256-unit LSTM: summary.json says 256."""
    assert cfg.model_width(preset_config("next-word")) == 256 and cfg.model_width(preset_config("mobile-iid")) == 64
    assert cfg.model_width(cfg.build(None, {"model": {"name": "lstm", "hidden": 16}}, [])) == 16
    assert cfg.model_width(cfg.build(None, {}, [])) == 200
    result, out = run_preset(tmp_path, "next-word", "--clients", "2", "--clients-per-round", "2", "--rounds", "1",
                             "--algorithms", "fedavg",
                             "--set", "shakespeare.seq_len=5", "--set", "shakespeare.stride=200")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == {"name": "lstm", "hidden": 256, "norm": "none"}
    assert summary["config"]["model"]["hidden"] == 200  # the config as given (it reproduces the run)
