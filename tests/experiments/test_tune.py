"""`--tune` (experiments/tune.py): seeded, reads validation data only, one budget for every algorithm, a pruned
trial never chosen, bad input refused before anything is written, config.toml reproduces the final runs."""

import dataclasses
import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fedarena import config as cfg
from fedarena.cli import app
from fedarena.core.types import FedarenaError
from fedarena.experiments import tune as tuning_module
from fedarena.experiments.compare import InProcess, run_compare, train_algorithm
from fedarena.experiments.tune import searched

SMALL = ["data.num_clients=6", "train.rounds=4", "train.clients_per_round=4", "model.name=mlr",
         "run.engine=reference"]


def small(*sets: str, algorithms: str = "fedavg,ditto", trials: int = 3) -> cfg.Config:
    return cfg.build(None, {}, [*SMALL, f"run.algorithms={json.dumps(algorithms.split(','))}",
                                f"tune.trials={trials}", *sets])


def prepared(config: cfg.Config):
    return InProcess(config.run.engine).prepare(config)


def tune(config, p):
    return tuning_module.tune(config, p, train_algorithm)


def trials_of(tuning):
    return {n: [(t.number, t.state, t.params, t.value, t.history) for t in r.trials] for n, r in tuning.tuned.items()}


@pytest.fixture(scope="module")
def base():
    """One tuning of the small comparison (shared: each tuning costs a few seconds)."""
    config = small()
    p = prepared(config)
    return config, p, tune(config, p)


def test_seeded_tuning_is_deterministic(base):
    config, _, (a_config, a) = base
    b_config, b = tune(config, prepared(config))
    assert trials_of(a) == trials_of(b)
    assert a_config == b_config
    assert {n: r.best_params for n, r in a.tuned.items()} == {n: r.best_params for n, r in b.tuned.items()}
    # another seed searches other points
    c_config = small("run.seed=1")
    _, c = tune(c_config, prepared(c_config))
    assert trials_of(c) != trials_of(a)


def test_test_labels_decide_nothing(base):
    """Every test label changed: every trial, value and chosen hyperparameter is unchanged."""
    config, p, (chosen, tuning) = base
    d = p.data
    flipped = dataclasses.replace(d, y_test=(d.y_test + 1) % d.num_classes)
    assert (flipped.y_test != d.y_test).all()
    chosen_flipped, tuning_flipped = tune(config, dataclasses.replace(p, data=flipped))
    assert trials_of(tuning) == trials_of(tuning_flipped)
    assert chosen == chosen_flipped


def test_validation_labels_do_decide(base):
    """The converse, so the test above can fail: changing the validation labels changes the trials' values."""
    config, p, (_, tuning) = base
    d = p.data
    assert d.y_val is not None and d.y_val.numel() > 0
    flipped = dataclasses.replace(d, y_val=(d.y_val + 1) % d.num_classes)
    _, tuning_flipped = tune(config, dataclasses.replace(p, data=flipped))
    values = [t.value for r in tuning.tuned.values() for t in r.trials]
    flipped_values = [t.value for r in tuning_flipped.tuned.values() for t in r.trials]
    assert values != flipped_values


def test_equal_budgets_and_a_pruned_trial_is_never_chosen():
    config = small("tune.pruner=halving", "train.rounds=6", algorithms="fedavg,local", trials=6)
    _, tuning = tune(config, prepared(config))
    budgets = {r.budget_client_rounds for r in tuning.tuned.values()}
    assert budgets == {6 * 6 * 4}  # trials x rounds x clients per round, the same for every algorithm
    pruned = [(n, t.number) for n, r in tuning.tuned.items() for t in r.trials if t.state == "pruned"]
    assert pruned, "this setting prunes (the check below needs pruned trials)"
    for name, result in tuning.tuned.items():
        assert result.spent_client_rounds <= result.budget_client_rounds
        best = next(t for t in result.trials if t.number == result.best_trial)
        assert best.state == "complete" and best.params == result.best_params
        assert best.value == max(t.value for t in result.trials if t.state == "complete")
        for t in result.trials:
            assert t.client_rounds == t.rounds * 4
            assert (t.state == "pruned") == (t.rounds < 6)
            assert t.rounds == max(t.history)  # a pruned trial trained through the round it last reported


def test_search_space_fixed_narrowed_and_widened():
    config = small("ditto.lam=0.5", "tune.ditto.lr=[0.01,0.1]", "tune.train.local_epochs=[1,3]")
    space = searched(config, "ditto")
    assert "lam" not in space  # fixed by the user
    assert (space["lr"].low, space["lr"].high, space["lr"].log) == (0.01, 0.1, True)
    assert (space["local_epochs"].low, space["local_epochs"].high, space["local_epochs"].integer) == (1, 3, True)
    assert "batch_size" not in space  # the comparison's unless widened
    plain = searched(small(), "ditto")
    assert set(plain) == {"lam", "lr"} and (plain["lr"].low, plain["lr"].high) == (1e-3, 1.0)


def test_an_algorithms_own_training_overrides_the_comparisons():
    config = cfg.build(None, {}, ["ditto.lr=0.2", "ditto.local_epochs=2"])
    assert cfg.algorithm_train(config, "ditto") == {"lr": 0.2, "local_epochs": 2, "batch_size": 10}
    assert cfg.algorithm_train(config, "fedavg") == {"lr": 0.05, "local_epochs": 1, "batch_size": 10}
    assert cfg.to_tree(dataclasses.replace(config, run=dataclasses.replace(
        config.run, algorithms=("ditto",))))["ditto"] == {"lam": 1.0, "lr": 0.2, "local_epochs": 2}


@pytest.mark.parametrize("args, key", [
    (["--tune", "0"], "tune.trials"),
    (["--tune", "many"], "tune.trials"),
    (["--tune", "2", "--tune-objective", "median"], "tune.objective"),
    (["--tune", "2", "--set", "tune.ditto.lam=[2, 0.1]"], "tune.ditto.lam"),
    (["--tune", "2", "--set", "tune.ditto.lam=[1e-9, 0.1]"], "tune.ditto.lam"),
    (["--tune", "2", "--set", "tune.ditto.nope=[1, 2]"], "tune.ditto.nope"),
    (["--tune", "2", "--set", "ditto.lam=1000"], "ditto.lam"),
    (["--tune", "2", "--engine", "flower-sim"], "tune.trials"),
    (["--tune", "2", "--dp-clip", "1", "--dp-noise", "1"], "tune.trials"),
])
def test_bad_tuning_input_exits_2_naming_the_key_and_writes_nothing(tmp_path, args, key):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["compare", "--algorithms", "fedavg,ditto", "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert key in result.output
    assert not out.exists()


def test_tuned_compare_writes_tuning_and_its_config_reproduces_the_final_runs(tmp_path):
    config = small("run.seeds=2", trials=2)
    summary = run_compare(config, tmp_path / "tuned")
    assert summary["tuning"]["status"] == "tuned" and "2 trials" in summary["tuning"]["label"]
    assert summary["config"]["tune"]["trials"] == 0  # config.toml reruns the final runs, untuned
    for run in summary["runs"]:
        t = run["tuning"]
        assert t["trials"] == 2 and t["budget_client_rounds"] == 2 * 4 * 4
        assert run["local_training"]["lr"] == t["best_params"]["lr"]
        assert {k: v for k, v in t["best_params"].items() if k != "lr"}.items() <= run["hyperparameters"].items()
    assert summary["aggregate"]["algorithms"]["ditto"]["personal_acc_mean"]["ci95"] is not None
    table = pq.read_table(tmp_path / "tuned" / "tuning.parquet").to_pylist()
    assert {r["algorithm"] for r in table} == {"fedavg", "ditto"}
    assert sum(r["best"] for r in table if r["round"] == 4) == 2  # one chosen trial per algorithm
    again = run_compare(cfg.build(str(tmp_path / "tuned" / "config.toml"), {}, []), tmp_path / "again")
    assert again["tuning"]["status"] == "untuned"
    assert again["tuning"]["label"] == "untuned (hyperparameters as configured)"
    for a, b in zip(summary["runs"], again["runs"], strict=True):
        assert a["final"] == b["final"] and a["history"][-1]["bytes_cumulative"] == b["history"][-1]["bytes_cumulative"]


def test_tuning_without_validation_data_is_refused():
    config = small("data.val_fraction=0", trials=1)
    with pytest.raises(FedarenaError, match="validation"):
        tune(config, prepared(config))


def test_untuned_runs_say_so():
    from fedarena.experiments.summary import tuning_block

    assert tuning_block(cfg.build(None, {}, []), None) == {"status": "untuned", "label": "untuned defaults"}
    assert tuning_block(cfg.build(None, {}, ["fedprox.mu=0.1"]), None)["label"] == \
        "untuned (hyperparameters as configured)"
