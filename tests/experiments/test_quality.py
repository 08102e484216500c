"""Slow end-to-end checks of result quality (run with `pytest -m slow`)."""

import json

import pytest
from typer.testing import CliRunner

from fedarena.cli import app


@pytest.mark.slow
def test_fedavg_iid_digits_within_3_points_of_centralized(tmp_path):
    args = ["compare", "--data", "digits", "--partition", "iid", "--clients", "20", "--rounds", "100",
            "--algorithms", "fedavg,centralized", "--seed", "1", "--out", str(tmp_path / "iid")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    runs = {r["algorithm"]: r for r in json.loads((tmp_path / "iid" / "summary.json").read_text())["runs"]}
    gap = runs["centralized"]["final"]["global_acc"] - runs["fedavg"]["final"]["global_acc"]
    assert gap <= 0.03, gap


@pytest.mark.slow
def test_personalization_pays_on_pathological_non_iid(tmp_path):
    """With 2 classes per client, local fine-tuning beats the global model on personal accuracy."""
    args = ["compare", "--data", "digits", "--partition", "shards", "--shards-per-client", "2", "--clients", "20",
            "--rounds", "30", "--algorithms", "fedavg,fedavg-ft,local", "--seed", "0", "--out", str(tmp_path / "s")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    runs = {r["algorithm"]: r for r in json.loads((tmp_path / "s" / "summary.json").read_text())["runs"]}
    assert runs["fedavg-ft"]["final"]["personal_acc_mean"] > runs["fedavg"]["final"]["personal_acc_mean"] + 0.1
    assert runs["local"]["final"]["personal_acc_mean"] > runs["fedavg"]["final"]["personal_acc_mean"]
