"""The rows a default study's sub-studies measure, from hand-built results: the privacy cost paired by seed, the
similarity row from a sweep, and the reader's refusals."""

import json

import pytest

from fedarena.core.types import FedarenaError
from fedarena.report import privacy_sweep as ps
from fedarena.report import study
from fedarena.report.verdicts import Verdict

FAMILY = {"fedper": "personalized", "fedavg": "global"}


def summary(acc: dict[str, dict[int, float]]) -> dict:
    runs = [{"algorithm": a, "family": FAMILY[a], "seed": s, "final": {"personal_acc_mean": v, "personal_acc_worst10": v,
                                                                       "global_acc": None},
             "privacy": None, "membership": None}
            for a, by_seed in acc.items() for s, v in by_seed.items()]
    return {"runs": runs, "config": {"run": {"seed": 0}}}


def cells(no_dp: dict, dp: dict, eps: float = 8.0) -> tuple[list[dict], dict]:
    inf = summary(no_dp)
    return [ps.cell_result(eps, summary(dp), "cells/eps-8", False),
            ps.cell_result(float("inf"), inf, "cells/eps-inf", False)], inf


def test_privacy_cost_is_paired_by_seed():
    # no DP: fedper .80/.82/.78, fedavg .85/.86/.84; at eps 8: fedper .70/.74/.70, fedavg .35/.30/.40
    no_dp = {"fedper": {0: .80, 1: .82, 2: .78}, "fedavg": {0: .85, 1: .86, 2: .84}}
    dp = {"fedper": {0: .70, 1: .74, 2: .70}, "fedavg": {0: .35, 1: .30, 2: .40}}
    cost = ps.privacy_cost(*cells(no_dp, dp))
    row = cost["losses"][0]
    # losses: fedper .10/.08/.08 (mean .08667), fedavg .50/.56/.44 (mean .5); q = .40/.48/.36
    assert row["pfl_loss"] == pytest.approx(0.26 / 3) and row["global_loss"] == pytest.approx(0.5)
    assert row["q"]["n"] == 3 and row["q"]["mean"] == pytest.approx(1.24 / 3)
    assert row["verdict"] == cost["verdict"] == "holds" and cost["note"] == ""
    assert (cost["pfl"], cost["global"]) == ("fedper", "fedavg")


def test_privacy_cost_within_noise_and_one_seed():
    no_dp = {"fedper": {0: .80, 1: .80}, "fedavg": {0: .80, 1: .80}}
    dp = {"fedper": {0: .70, 1: .75}, "fedavg": {0: .75, 1: .70}}  # q = -.05, +.05: the interval contains 0
    assert ps.privacy_cost(*cells(no_dp, dp))["verdict"] == "within noise"
    one = ps.privacy_cost(*cells({"fedper": {0: .8}, "fedavg": {0: .8}}, {"fedper": {0: .6}, "fedavg": {0: .7}}))
    assert one["verdict"] == "does not hold" and "one seed" in one["note"]  # pFL loses .2, global .1


def test_privacy_row_reads_the_cost():
    no_dp = {"fedper": {0: .80, 1: .82, 2: .78}, "fedavg": {0: .85, 1: .86, 2: .84}}
    dp = {"fedper": {0: .70, 1: .74, 2: .70}, "fedavg": {0: .35, 1: .30, 2: .40}}
    cs, inf = cells(no_dp, dp)
    result = {"cells": cs, "cost": ps.privacy_cost(cs, inf), "delta": 1e-5, "population": 16, "clients_per_round": 10}
    measured, verdict, note = study.privacy(result)
    assert verdict is Verdict.HOLDS
    assert "fedper 80.0% \u2192 71.3% (loses 8.7 pp), fedavg 85.0% \u2192 35.0% (loses 50.0 pp)" in measured
    assert "16 clients, 10 per round" in measured
    cs, inf = cells({"fedper": {0: .5}, "fedavg": {0: .8}}, {"fedper": {0: .6}, "fedavg": {0: .7}})
    one = {"cells": cs, "cost": ps.privacy_cost(cs, inf), "delta": 1e-5, "population": 16, "clients_per_round": 10}
    assert "fedper 50.0% \u2192 60.0% (gains 10.0 pp)" in study.privacy(one)[0]
    assert "3 seed(s)" in note


def test_similarity_row_orders_cells_by_heterogeneity():
    sweep = {"seeds": [0, 1], "data_similarity_verdict": "partly", "crossover": {"text": "No crossover in the grid"},
             "cells": [{"cell": "shards-2", "js_divergence_mean": 0.6, "gain_text": "+20.0 pp", "best_pfl": "fedper",
                        "best_global": "fedavg"},
                       {"cell": "iid", "js_divergence_mean": 0.02, "gain_text": "+1.0 pp", "best_pfl": "fedper",
                        "best_global": "fedavg"}]}
    measured, verdict, note = study.similarity(sweep)
    assert verdict is Verdict.PARTLY
    assert measured.index("iid (JS 0.02): +1.0 pp") < measured.index("shards-2 (JS 0.60): +20.0 pp")
    assert "2 cells, 2 seed(s)" in note


def test_reader_refuses_an_incomplete_or_foreign_study(tmp_path):
    assert study.load(tmp_path) == (None, [])  # no study.json: an ordinary run directory
    (tmp_path / "study.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(FedarenaError, match="not a fedarena study"):
        study.load(tmp_path)
    (tmp_path / "study.json").write_text(json.dumps({"format": study.STUDY_FORMAT}))
    with pytest.raises(FedarenaError, match="sweep.json not found"):
        study.load(tmp_path)
    (tmp_path / "study" / "sweep").mkdir(parents=True)
    (tmp_path / "study" / "sweep" / "sweep.json").write_text("{not json")
    with pytest.raises(FedarenaError, match="sweep.json is not valid JSON"):
        study.load(tmp_path)
