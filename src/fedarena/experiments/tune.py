"""`fedarena compare --tune N`: every algorithm's hyperparameters searched on validation data, under one budget.

For each algorithm of the comparison, an Optuna study (TPE sampler seeded from the run seed and the algorithm,
a Hyperband or successive-halving pruner with rounds as the fidelity) runs N trials. A trial is an ordinary run
(`compare.train_algorithm`, handed in by `compare.run_compare`) of the first seed's clients with the trial's
hyperparameters; after every evaluated round it reports the objective, read from the clients' **validation**
splits only:

- `mean`: the personal models' validation accuracy, sample-weighted over the training clients;
- `worst10`: the mean validation accuracy of the worst 10% of clients.

A trial's value is the objective at its final round: the selection rule (SELECTION_RULE) takes every final
number at the final round, for trials and final runs alike, so no round is chosen by any data. A pruned trial
is never selected (Optuna's best trial is a completed one). Test data is read by nothing here.

The search space of an algorithm is its declared spaces (`core.space.hp` on its hyperparameters) and the
learning rate (config.TRAIN_SPACES), narrowed by the user's `[tune.ALGORITHM]` / `[tune.train]` ranges; a key
the user fixes (`[ALGORITHM] key = value`) is not searched. The budget is counted in client-rounds of training:
every algorithm is allotted N x rounds x clients per round (`budget_client_rounds`); pruning leaves
`spent_client_rounds` of it.

The chosen values go into the config (`[ALGORITHM]` sections, `lr` included), which then runs with
`tune.seeds` seeds through `compare.run_experiment` as any comparison: its config.toml reproduces those runs
bit for bit. Every trial is kept in tuning.parquet.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from fedarena import config as cfg
from fedarena.core.rng import derive_seed
from fedarena.core.space import Space
from fedarena.core.types import FedarenaError
from fedarena.sim.engine import Evaluation

log = logging.getLogger(__name__)

SELECTION_RULE = ("final round: a trial's value and every reported number are taken at the last round; no round "
                  "or configuration is chosen by test data (trials read validation accuracy only)")
OBJECTIVES = {
    "mean": "validation personal accuracy, sample-weighted mean over the training clients",
    "worst10": "validation personal accuracy, mean of the worst 10% of clients",
}


def searched(config: cfg.Config, name: str) -> dict[str, Space]:
    """The spaces tuning searches for `name`: its declared hyperparameter spaces and `lr` (plus local_epochs or
    batch_size where the user gave a range), narrowed by `[tune.train]` then `[tune.NAME]`, without the keys the
    user fixed in `[NAME]`."""
    declared = cfg.declared_spaces(name)
    keys = [k for k in declared if k not in cfg.TRAIN_SPACES or k in cfg.TRAIN_SEARCHED
            or k in config.tune_spaces.get("train", {}) or k in config.tune_spaces.get(name, {})]
    fixed = config.algorithms.get(name, {})
    out = {}
    for key in keys:
        if key in fixed:
            continue
        space = declared[key]
        for scope in ("train", name):
            if key in config.tune_spaces.get(scope, {}):
                space = space.narrowed(f"tune.{scope}.{key}", config.tune_spaces[scope][key])
        out[key] = space
    return out


def suggest(trial: Any, key: str, space: Space) -> Any:
    if space.choices:
        return trial.suggest_categorical(key, list(space.choices))
    assert space.low is not None and space.high is not None
    if space.integer:
        return trial.suggest_int(key, int(space.low), int(space.high), log=space.log)
    return trial.suggest_float(key, space.low, space.high, log=space.log)


def with_params(config: cfg.Config, name: str, params: dict[str, Any]) -> cfg.Config:
    """`config` with `name`'s section updated by `params` (hyperparameters, lr, local_epochs, batch_size)."""
    algos = {k: dict(v) for k, v in config.algorithms.items()}
    algos[name] = {**algos.get(name, {}), **params}
    return cfg.validate(dataclasses.replace(config, algorithms=algos))


def objective_value(e: Evaluation, objective: str) -> float:
    value = e.val_personal_acc_mean if objective == "mean" else e.val_personal_acc_worst10
    if value is None:
        raise FedarenaError("tuning needs validation data: set data.val_fraction > 0 (or give npz-dir val/ files)")
    return float(value)


@dataclass
class Trial:
    """One trial of one algorithm's study, as tuning.parquet keeps it."""

    algorithm: str
    number: int
    params: dict[str, Any]
    state: str  # complete | pruned
    value: float | None  # the objective at the final round (complete trials)
    rounds: int  # rounds trained
    client_rounds: int
    seconds: float
    history: dict[int, float] = field(default_factory=dict)  # evaluated round -> objective


@dataclass
class Tuned:
    """One algorithm's tuning: its chosen values and what the search cost."""

    algorithm: str
    best_trial: int
    best_params: dict[str, Any]
    best_val: float
    trials: list[Trial]
    budget_client_rounds: int
    importances: dict[str, float]
    space: dict[str, Space]

    @property
    def spent_client_rounds(self) -> int:
        return sum(t.client_rounds for t in self.trials)

    def to_json(self, config: cfg.Config) -> dict[str, Any]:
        """`runs[].tuning` of summary.json."""
        return {
            "trials": len(self.trials),
            "pruned": sum(t.state == "pruned" for t in self.trials),
            "budget_client_rounds": self.budget_client_rounds,
            "spent_client_rounds": self.spent_client_rounds,
            "objective": config.tune.objective,
            "objective_text": OBJECTIVES[config.tune.objective],
            "selection": SELECTION_RULE,
            "best_trial": self.best_trial,
            "best_params": self.best_params,
            "best_val": self.best_val,
            "seconds": sum(t.seconds for t in self.trials),
            "space": {k: s.to_json() for k, s in self.space.items()},
            "importances": self.importances,
        }


def _pruner(config: cfg.Config) -> Any:
    import optuna

    rounds = config.train.rounds
    if config.tune.pruner == "none":
        return optuna.pruners.NopPruner()
    if config.tune.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, rounds // 9), reduction_factor=3)
    return optuna.pruners.HyperbandPruner(min_resource=max(1, rounds // 9), max_resource=rounds, reduction_factor=3)


Train = Callable[..., Any]  # compare.train_algorithm


def tune_algorithm(config: cfg.Config, p: Any, name: str, train: Train) -> Tuned:
    """`config.tune.trials` trials of `name` on the prepared clients `p` (compare.Prepared, the first seed's), each
    trained by `train` (compare.train_algorithm)."""
    import optuna

    t = config.train
    per_round = int(t.clients_per_round or 0)
    space = searched(config, name)
    # the sampler's stream: (run seed, the algorithm's name as the sum of its character codes)
    sampler = optuna.samplers.TPESampler(seed=derive_seed(config.run.seed, "tune", sum(map(ord, name))) % 2**32,
                                         n_startup_trials=min(10, max(2, config.tune.trials // 3)))
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=_pruner(config), study_name=name)
    trials = []
    for number in range(config.tune.trials):
        trial = study.ask()
        params = {key: suggest(trial, key, s) for key, s in space.items()}
        history: dict[int, float] = {}
        rounds = [0]

        def report(e: Evaluation, trial: Any = trial, history: dict[int, float] = history,
                   rounds: list[int] = rounds) -> None:
            rounds[0] = e.round  # the round is trained (a prune below stops the run before `count` sees it)
            history[e.round] = objective_value(e, config.tune.objective)
            trial.report(history[e.round], e.round)
            if e.round < t.rounds and trial.should_prune():
                raise optuna.TrialPruned()

        def count(_: str, r: int, rounds: list[int] = rounds) -> None:
            rounds[0] = r

        start = time.perf_counter()
        try:
            train(with_params(config, name, params), p, name, count, on_evaluation=report)
            state = "complete"
        except optuna.TrialPruned:
            state = "pruned"
        # the last evaluated round: the run's last round (the engine always evaluates it)
        value = history[max(history)] if state == "complete" and history else None
        if state == "complete" and value is None:
            raise FedarenaError(f"tuning {name}: trial {number} finished without an evaluation")
        study.tell(trial, value if state == "complete" else None,
                   state=optuna.trial.TrialState.COMPLETE if state == "complete" else optuna.trial.TrialState.PRUNED)
        trials.append(Trial(name, number, params, state, value, rounds[0], rounds[0] * per_round,
                            time.perf_counter() - start, history))
        log.info("tune %s trial %d: %s %s %s", name, number, state, params, value)
    complete = [x for x in trials if x.state == "complete"]
    if not complete:
        raise FedarenaError(f"tuning {name}: every trial was pruned")
    best = max(complete, key=lambda x: (x.value, -x.number))  # ties: the earliest trial
    return Tuned(name, best.number, best.params, float(best.value or 0.0), trials, config.tune.trials * t.rounds * per_round,
                 _importances(study, space, config.run.seed), space)


def _importances(study: Any, space: dict[str, Space], seed: int) -> dict[str, float]:
    """fANOVA importances of the searched hyperparameters over the completed trials (seeded); {} when fewer than
    two trials completed or only one hyperparameter was searched."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    searched_keys = [k for k, s in space.items() if len({repr(t.params.get(k)) for t in complete}) > 1]
    if len(complete) < 2 or len(searched_keys) < 2:
        return {k: 1.0 for k in searched_keys} if len(searched_keys) == 1 and len(complete) >= 2 else {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed % 2**32)
    return {k: float(v) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()}


@dataclass(frozen=True)
class Tuning:
    """A comparison's tuning: every algorithm's study, under the config it searched."""

    config: cfg.Config
    tuned: dict[str, Tuned]
    seconds: float

    @property
    def label(self) -> str:
        budget = next(iter(self.tuned.values())).budget_client_rounds
        return f"tuned ({self.config.tune.trials} trials, budget {budget:,} client-rounds per algorithm)"

    def summary(self) -> dict[str, Any]:
        """summary.json's `tuning`."""
        t = self.config.tune
        return {"status": "tuned", "label": self.label, "trials": t.trials, "objective": t.objective,
                "objective_text": OBJECTIVES[t.objective], "pruner": t.pruner, "selection": SELECTION_RULE,
                "tuned_on_seed": self.config.run.seed, "data": "validation splits only (data.val_fraction)",
                "seconds": self.seconds}

    def run_entry(self, name: str) -> dict[str, Any]:
        return self.tuned[name].to_json(self.config)

    def files(self) -> dict[str, bytes]:
        sink = pa.BufferOutputStream()
        pq.write_table(trials_table(self.tuned), sink)
        return {"tuning.parquet": sink.getvalue().to_pybytes()}


def tune(config: cfg.Config, p: Any, train: Train) -> tuple[cfg.Config, Tuning]:
    """Tune every algorithm of `config` on `p` (compare.Prepared: the first seed's clients), each trial trained by
    `train` (compare.train_algorithm). Returns the config of the final runs: the chosen values in each algorithm's
    section, tuning off (so its config.toml reruns them as they are)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    config = cfg.with_clients_per_round(config, p.data.num_clients)
    tuned = {name: tune_algorithm(config, p, name, train) for name in config.run.algorithms}
    chosen = dataclasses.replace(config, tune=dataclasses.replace(config.tune, trials=0), tune_spaces={})
    for name, result in tuned.items():
        chosen = with_params(chosen, name, result.best_params)
    return chosen, Tuning(config, tuned, time.perf_counter() - start)


def trials_table(tuned: dict[str, Tuned]) -> pa.Table:
    """tuning.parquet: one row per (algorithm, trial, evaluated round); params as a JSON object per row."""
    import json

    cols: dict[str, list[Any]] = {k: [] for k in (
        "algorithm", "trial", "state", "params", "round", "val_objective", "value", "rounds", "client_rounds",
        "seconds", "best")}
    for name, result in tuned.items():
        for tr in result.trials:
            rows = sorted(tr.history.items()) or [(0, None)]
            for rnd, v in rows:
                cols["algorithm"].append(name)
                cols["trial"].append(tr.number)
                cols["state"].append(tr.state)
                cols["params"].append(json.dumps(tr.params, sort_keys=True))
                cols["round"].append(rnd)
                cols["val_objective"].append(v)
                cols["value"].append(tr.value)
                cols["rounds"].append(tr.rounds)
                cols["client_rounds"].append(tr.client_rounds)
                cols["seconds"].append(tr.seconds)
                cols["best"].append(tr.number == result.best_trial)
    types = {"val_objective": pa.float64(), "value": pa.float64()}
    return pa.table({k: pa.array(v, type=types[k]) if k in types else v for k, v in cols.items()})


__all__ = ["OBJECTIVES", "SELECTION_RULE", "Trial", "Tuned", "Tuning", "searched", "trials_table", "tune",
           "tune_algorithm"]
