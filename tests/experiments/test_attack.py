"""A comparison under attack and with a robust server step (experiments/attack.py): who is evaluated, what the
summary says, what is refused, and that the hooks change exactly what they should."""

import json
from importlib import resources

import jsonschema
import pytest
import torch
from typer.testing import CliRunner

from fedarena import config as cfg
from fedarena.cli import app
from fedarena.core import robust
from fedarena.core.types import FedarenaError, ServerState, Upload
from fedarena.experiments import attack
from fedarena.experiments.compare import prepare, run_compare
from fedarena.sim.attacks import malicious_clients

SCHEMA = json.loads(resources.files("fedarena").joinpath("schemas/summary.schema.json").read_text())
BASE = ["data.name=digits", "data.partition=dirichlet", "data.alpha=0.5", "data.num_clients=10",
        "train.clients_per_round=10", "train.rounds=3", "model.name=mlr", "run.seed=2", "run.engine=reference"]


def make(*sets, algorithms="fedavg,fedper"):
    return cfg.build(None, {}, [*BASE, f"run.algorithms=[{','.join(repr(a) for a in algorithms.split(','))}]".replace("'", '"'),
                                *sets])


def summary_of(config, out):
    summary = run_compare(config, out)
    jsonschema.validate(summary, SCHEMA)
    return summary


@pytest.fixture(scope="module")
def clean(tmp_path_factory, one_torch_thread):
    return summary_of(make(), tmp_path_factory.mktemp("clean") / "run")


def test_under_attack_only_benign_clients_are_evaluated_and_the_malicious_are_listed(tmp_path, clean):
    config = make("attack.kind=sign-flip", "attack.malicious=0.3")
    s = summary_of(config, tmp_path / "run")
    bad = malicious_clients(2, list(range(10)), 0.3)
    assert len(bad) == 3
    ids = s["dataset"]["client_ids"]
    assert s["malicious_clients"] == [ids[c] for c in bad]
    assert s["attack"]["kind"] == "sign-flip" and s["attack"]["malicious_per_seed"] == {"2": 3}
    assert s["attack"]["aggregator"]["name"] == "mean"
    for run in s["runs"]:
        assert sorted(run["final"]["personal_acc_per_client"]) == sorted(i for i in ids if i not in s["malicious_clients"])
        assert run["malicious_clients"] == s["malicious_clients"] and run["diverged"] is False
        assert run["attack_success"] is None  # untargeted
    # the attack changes fedavg's model; without one every client is evaluated and nothing is listed
    assert clean["malicious_clients"] == [] and clean["attack"] is None
    assert len(clean["runs"][0]["final"]["personal_acc_per_client"]) == 10
    assert s["runs"][0]["final"]["global_acc"] != clean["runs"][0]["final"]["global_acc"]


def test_label_flip_poisons_only_the_malicious_clients_training_labels(one_torch_thread):
    config = make("attack.kind=label-flip", "attack.malicious=0.2")
    plain, flipped = prepare(make()), prepare(config)
    assert flipped.malicious == malicious_clients(2, list(range(10)), 0.2)
    for c in range(10):
        a, b = plain.data.client(c), flipped.data.client(c)
        expected = 9 - a.y_train if c in flipped.malicious else a.y_train
        assert torch.equal(b.y_train, expected) and torch.equal(b.y_test, a.y_test)


def test_the_mean_rule_changes_nothing_and_median_is_handed_to_aggregate_as_one_upload(tmp_path, clean):
    same = summary_of(make("robust.aggregator=mean", "robust.f=1"), tmp_path / "mean")
    assert [r["final"] for r in same["runs"]] == [r["final"] for r in clean["runs"]]
    config = make("robust.aggregator=median")
    algo = cfg.hyperparameters(config, "fedavg")
    combine = attack.combine(config, algo)
    ups = {c: Upload(params={"w": torch.tensor([float(v), 10.0 * v])}, num_samples=n)
           for c, (v, n) in enumerate([(1, 5), (4, 1), (2, 1), (100, 1), (3, 9)])}
    server = ServerState(params={"w": torch.zeros(2)})
    handed = combine(server, ups)
    assert list(handed) == [0] and handed[0].num_samples == 17
    assert torch.equal(handed[0].params["w"], torch.tensor([3.0, 30.0]))  # coordinate-wise median of 1,4,2,100,3
    assert algo.aggregate(server, handed).params["w"].tolist() == [3.0, 30.0]
    median = summary_of(config, tmp_path / "median")
    assert median["runs"][0]["final"]["global_acc"] != clean["runs"][0]["final"]["global_acc"]


def test_a_model_that_diverges_is_reported_with_accuracy_zero(tmp_path):
    s = summary_of(make("attack.kind=sign-flip", "attack.scale=1e45", algorithms="fedavg"), tmp_path / "run")
    run = s["runs"][0]
    assert run["diverged"] is True and run["diverged_round"] == 1
    assert run["final"]["personal_acc_mean"] == 0 and run["final"]["global_acc"] == 0
    assert set(run["final"]["personal_acc_per_client"].values()) == {0.0}


def test_backdoor_success_is_measured_on_the_benign_clients(tmp_path):
    s = summary_of(make("attack.kind=backdoor", "attack.malicious=0.3", "attack.fraction=1", "attack.target=1",
                        algorithms="fedavg,local"), tmp_path / "run")
    by = {r["algorithm"]: r for r in s["runs"]}
    assert 0 <= by["fedavg"]["attack_success"] <= 1
    # local clients never see the malicious data: their models learn no trigger beyond chance
    assert by["local"]["attack_success"] < by["fedavg"]["attack_success"]


@pytest.mark.parametrize("sets, message", [
    (["robust.aggregator=krum", "train.clients_per_round=4", "attack.kind=gaussian", "attack.malicious=0.3"],
     "krum tolerates f=1 attackers only with at least 5"),
    (["robust.aggregator=median", "privacy.secagg=true"], "secure aggregation"),
    (["attack.kind=alie", "privacy.dp_clip=1", "privacy.dp_noise=1"], "does not run under DP-FedAvg"),
    (["robust.aggregator=krum", "run.algorithms=[\"scaffold\"]"], "scaffold's server step is 'custom'"),
    (["attack.kind=typo"], "unknown attack.kind 'typo'"),
    (["robust.aggregator=typo"], "unknown robust.aggregator 'typo'"),
    (["attack.kind=sign-flip", "attack.malicious=1.5"], "attack.malicious"),
])
def test_bad_combinations_are_refused_before_training(sets, message):
    with pytest.raises(FedarenaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make(*sets)


def test_attacks_are_refused_on_flower_sim(tmp_path):
    with pytest.raises(FedarenaError, match="in-process engines"):
        run_compare(make("attack.kind=sign-flip", "run.engine=flower-sim"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_cli_exits_2_naming_the_rule(tmp_path):
    result = CliRunner().invoke(app, ["compare", "--data", "digits", "--clients", "6", "--clients-per-round", "3",
                                      "--rounds", "1", "--aggregator", "bulyan", "--set", "robust.f=1",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "bulyan tolerates f=1 attackers only with at least 7" in result.output
    assert not (tmp_path / "run").exists()


def test_check_names_the_condition():
    with pytest.raises(FedarenaError, match=r"n >= 2f \+ 3"):
        robust.check(robust.RobustRule("krum", f=2), 6)


def test_the_report_puts_the_measurement_beside_dittos_claim(tmp_path, clean):
    from fedarena.report.claims import Verdict, claim_table

    s = summary_of(make("attack.kind=sign-flip", "attack.malicious=0.3", "robust.aggregator=median",
                        algorithms="fedavg,ditto"), tmp_path / "run")
    row = next(r for r in claim_table(s).rows if r.key == "robustness")
    assert "Ditto" in row.pfl_claim and row.verdict is not Verdict.NOT_MEASURED
    assert row.measured.startswith("sign-flip by 30% of the clients, median aggregation: ditto")
    by = {r["algorithm"]: r["final"]["personal_acc_mean"] for r in s["runs"]}
    expected = Verdict.HOLDS if by["ditto"] > by["fedavg"] else Verdict.FAILS
    assert row.verdict is expected
    clean_row = next(r for r in claim_table(clean).rows if r.key == "robustness")
    assert clean_row.verdict is Verdict.NOT_MEASURED and "no attack in this run" in clean_row.measured


def test_the_cli_flags_set_the_attack_and_the_rule(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["compare", "--data", "digits", "--clients", "8", "--clients-per-round", "8",
                                      "--rounds", "1", "--model", "mlr", "--algorithms", "fedavg", "--attack", "sign-flip",
                                      "--malicious", "0.125", "--aggregator", "trimmed-mean", "--out", str(out)])
    assert result.exit_code == 0, result.output
    s = json.loads((out / "summary.json").read_text())
    assert s["attack"]["kind"] == "sign-flip" and s["attack"]["aggregator"] == {
        "name": "trimmed-mean", "f": 1, "beta": 0.2, "m": None, "tau": 100.0, "iterations": 1}
    assert len(s["malicious_clients"]) == 1 and len(s["runs"][0]["final"]["personal_acc_per_client"]) == 7


def test_a_robust_rule_composes_with_a_server_optimizer():
    """FedAdam's server step reads only the mean (server_step "mean+optimizer"): with a robust rule it steps from the
    rule's result, exactly as from one upload holding it."""
    config = make("robust.aggregator=median", algorithms="fedadam")
    algo = cfg.hyperparameters(config, "fedadam")
    assert algo.server_step == "mean+optimizer"
    server = algo.init_server({"w": torch.zeros(3)})
    ups = {c: Upload(params={"w": torch.tensor([float(v), -float(v), 2.0 * v])}, num_samples=n)
           for c, (v, n) in enumerate([(1, 2), (5, 1), (2, 3), (-40, 1), (3, 2)])}
    stepped = algo.aggregate(server, attack.combine(config, algo)(server, ups))
    by_hand = algo.aggregate(server, {0: Upload(params={"w": torch.tensor([2.0, -2.0, 4.0])}, num_samples=9)})
    assert torch.equal(stepped.params["w"], by_hand.params["w"])
    assert not torch.equal(stepped.params["w"], algo.aggregate(server, ups).params["w"])
