"""`fedarena sweep --epsilons`: noise chosen per budget, cells reused, the cost verdict, and the report row."""

import json
import math

import pytest
from typer.testing import CliRunner

from fedarena import config as cfg
from fedarena.cli import app
from fedarena.core.types import FedarenaError
from fedarena.experiments import privacy_sweep as runs
from fedarena.privacy import accountant as acc
from fedarena.report import privacy_sweep as ps
from fedarena.report.claims import claim_table
from fedarena.report.render import load_summary


def test_noise_for_reaches_the_budget_from_below():
    privacy = cfg.PrivacyConfig()
    for target in (1.0, 3.0, 8.0):
        z = runs.noise_for(target, 1000, 100, 30, privacy)
        assert acc.epsilon(z, population=1000, per_round=100, rounds=30, delta=1e-5) <= target
        assert acc.epsilon(z * 0.99, population=1000, per_round=100, rounds=30, delta=1e-5) > target


def test_budgets_parse_and_bad_ones_are_refused():
    assert ps.parse_epsilon("inf") == math.inf and ps.parse_epsilon("3") == 3.0
    for bad in ("0", "-1", "abc"):
        with pytest.raises(FedarenaError, match="privacy budget"):
            ps.parse_epsilon(bad)


def test_privacy_sweep_end_to_end(tmp_path):
    runner = CliRunner()
    args = ["sweep", "--epsilons", "2", "--data", "digits", "--algorithms", "fedavg,fedper", "--clients", "8",
            "--clients-per-round", "4", "--rounds", "2", "--model", "mlp", "--set", "model.hidden=8", "--seeds", "1",
            "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    sweep = json.loads((tmp_path / "privacy_sweep.json").read_text())
    assert [c["cell"] for c in sweep["cells"]] == ["eps-2", "eps-inf"]
    dp = sweep["cells"][0]["algorithms"]["fedavg"]
    assert dp["epsilon"] <= 2.0 and dp["noise_multiplier"] > 0
    assert sweep["cells"][1]["algorithms"]["fedavg"]["epsilon"] is None
    fedper = sweep["cells"][0]["algorithms"]["fedper"]  # membership of the models each client keeps
    assert 0 <= fedper["personal_member_auc"] <= 1 and fedper["global_member_auc"] is None
    assert dp["global_member_auc"] == dp["personal_member_auc"]  # fedavg: the personal model is the global one
    assert "MIA AUC personal" in (tmp_path / "privacy_sweep.md").read_text()
    assert sweep["cost"]["pfl"] == "fedper" and sweep["cost"]["global"] == "fedavg"
    assert sweep["cost"]["verdict"].split(" (")[0] in ("holds", "does not hold", "partly")
    assert (tmp_path / "privacy_sweep.html").stat().st_size > 1000
    again = runner.invoke(app, args)  # cells are reused, not rerun
    assert again.exit_code == 0 and json.loads((tmp_path / "privacy_sweep.json").read_text())["cells"][0]["reused"]
    # the report of a DP cell names the budget in its privacy row
    table = claim_table(load_summary(tmp_path / "cells" / "eps-2"))
    row = next(r for r in table.rows if r.key == "privacy")
    assert "central DP eps" in row.measured and "fedper" in row.measured
