"""`fedarena sweep` on hf data with a natural partition and --clients unset (data.num_clients None until the data
is read): the heterogeneity grid refuses it on one line before writing anything; the privacy sweep counts the
clients when it reads the data, runs every budget on all of them, and resumes."""

import json

from data.test_hf import femnist
from typer.testing import CliRunner

from fedarena import config as cfg
from fedarena.cli import app

runner = CliRunner()


def hf_args(tmp_path) -> list[str]:
    files = femnist(tmp_path / "femnist.parquet")
    args = ["--data", "hf:parquet", "--set", f"data.files={files}", "--set", "data.partition_by=writer_id"]
    conf = cfg.build(None, {"data": {"name": "hf:parquet"}}, args[3::2])
    assert conf.data.num_clients is None and conf.data.partition == "natural"  # the case under test
    return [*args, "--model", "mlr", "--algorithms", "fedavg", "--rounds", "1", "--seeds", "1"]


def test_the_heterogeneity_sweep_refuses_hf_data_and_writes_nothing(tmp_path):
    result = runner.invoke(app, ["sweep", "--quick", *hf_args(tmp_path), "--out", str(tmp_path / "sweep")])
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    assert "re-partitions embedded data in each cell: use --data digits (not hf:parquet)" in line
    assert "--epsilons" in line and not (tmp_path / "sweep").exists()


def test_the_privacy_sweep_counts_the_natural_clients_and_resumes(tmp_path, one_torch_thread):
    args = ["sweep", "--epsilons", "8", *hf_args(tmp_path), "--out", str(tmp_path / "sweep")]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    result = json.loads((tmp_path / "sweep" / "privacy_sweep.json").read_text())
    assert result["population"] == 4 and result["clients_per_round"] == 4  # every writer; min(10, 4) a round
    for cell in ("eps-8", "eps-inf"):
        summary = json.loads((tmp_path / "sweep" / "cells" / cell / "summary.json").read_text())
        assert summary["dataset"]["num_clients"] == 4 and summary["config"]["data"]["num_clients"] == 4
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert [c["reused"] for c in json.loads((tmp_path / "sweep" / "privacy_sweep.json").read_text())["cells"]] == [True, True]
