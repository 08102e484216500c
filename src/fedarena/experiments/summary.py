"""summary.json (docs/summary.md) from the trained runs of a comparison."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import fedarena
from fedarena import config as cfg
from fedarena.config.robust import rule as robust_rule
from fedarena.core.types import FederatedData
from fedarena.data.heterogeneity import summarize
from fedarena.experiments.rundir import finite
from fedarena.privacy.dpsgd import privacy_block
from fedarena.report.measures import aggregate
from fedarena.sim.engine import AlgorithmRun, storage_bytes

if TYPE_CHECKING:
    from fedarena.experiments.compare import Trained

TARGET_RULE = (
    "run.target if set; otherwise 0.9 x the best final personal_acc_mean (mean over seeds) among the compared "
    "algorithms that federate (centralized excluded), floored to 0.001. rounds_to_target is the first "
    "evaluated round whose personal_acc_mean >= target; seconds_to_target is the training time (evaluation "
    "excluded) up to the end of that round."
)


def auto_target(trained: list[Trained]) -> float:
    """0.9 x the best mean (over seeds) final personal_acc_mean of the federating algorithms."""
    first = trained[0].runs
    names = [n for n, (a, _) in first.items() if a.federated] or list(first)
    finals = [sum(t.runs[n][1].evaluations[-1].personal_acc_mean for t in trained) / len(trained) for n in names]
    return math.floor(0.9 * max(finals) * 1000) / 1000


def target_for(config: cfg.Config, trained: list[Trained]) -> float:
    return config.run.target if config.run.target is not None else auto_target(trained)


def hyperparameters(algo: Any) -> dict[str, Any]:
    return {f.name: getattr(algo, f.name) for f in dataclasses.fields(algo)}


def engine_entry(runtime: dict[str, Any], engine: str) -> dict[str, Any]:
    """`runs[].engine`: the engine that actually trained the run, from its runtime's `summary()` (`engine`: the
    comparison's engine, for runtimes that do not name theirs, e.g. Flower's). A vectorized run that fell
    back client by client (BatchNorm, DP-SGD) is named `reference`, with the logged reason in `fallback`. `device`:
    where the clients computed (run.device resolved: cpu, cuda, cuda:N), or None where the runtime does not know
    (a Flower run: each SuperNode resolves run.device itself)."""
    fallback = runtime.get("fallback")
    return {"name": "reference" if fallback else str(runtime.get("name") or engine), "fallback": fallback,
            "device": runtime.get("device")}


def summarize_run(name: str, algo: Any, run: AlgorithmRun, data: FederatedData, target: float,
                  engine: str = "reference", local_training: dict[str, Any] | None = None) -> dict[str, Any]:
    """One (algorithm, seed) entry of `runs` (`engine`: the comparison's engine; `local_training`: the lr, local
    epochs and batch size it trained with, config.algorithm_train)."""
    final = run.evaluations[-1]
    ids = [data.client_ids[c] for c in final.clients]
    rounds = len(run.train_seconds)
    reached = next((e for e in run.evaluations if e.personal_acc_mean >= target), None)
    up = sum(run.ledger.up.values())
    down = sum(run.ledger.down.values())
    cumulative = run.ledger.cumulative(rounds)
    history = []
    for e in run.evaluations:
        history.append({
            "round": e.round, "global_acc": e.global_acc, "personal_acc_mean": e.personal_acc_mean,
            "personal_acc_std": e.personal_acc_std, "personal_acc_worst10": e.personal_acc_worst10,
            "val_personal_acc_mean": e.val_personal_acc_mean, "val_personal_acc_worst10": e.val_personal_acc_worst10,
            "bytes_cumulative": cumulative[e.round - 1], "train_seconds": run.train_seconds[e.round - 1],
            "epsilon": finite(run.privacy.epsilon(e.round)) if run.privacy else None,
            "sample_epsilon_max": run.sample_dp.epsilon_max(e.round) if run.sample_dp else None,
        })
    return {
        "algorithm": name,
        "engine": engine_entry(run.engine, engine),
        "family": algo.family,
        "federated": algo.federated,
        "paper": algo.paper,
        "hyperparameters": hyperparameters(algo),
        "local_training": local_training,
        "personal_keys": list(algo.personal.patterns),
        "rounds": rounds,
        "final": {
            "round": final.round,
            "global_acc": final.global_acc,
            "personal_acc_mean": final.personal_acc_mean,
            "personal_acc_std": final.personal_acc_std,
            "personal_acc_worst10": final.personal_acc_worst10,
            "val_personal_acc_mean": final.val_personal_acc_mean,
            "val_personal_acc_worst10": final.val_personal_acc_worst10,
            "personal_acc_per_client": dict(zip(ids, final.per_client_acc)),
            "global_acc_per_client": (
                None if final.global_per_client_acc is None else dict(zip(ids, final.global_per_client_acc))
            ),
        },
        "bytes": {"up_total": up, "down_total": down, "per_round_mean": (up + down) / rounds},
        "target_acc": target,
        "rounds_to_target": reached.round if reached else None,
        "seconds_to_target": run.train_seconds[reached.round - 1] if reached else None,
        "wall_seconds": run.wall_seconds,
        # a runtime whose clients keep their state elsewhere (a deployment's nodes) reports its size
        "storage_bytes_per_client": run.engine.get("storage_bytes_per_client", storage_bytes(run.states)),
        "forget_kept_bytes": sum(len(b) for b in run.kept.values()),
        "history": history,
        "privacy": privacy_block(run.privacy.summary(rounds) if run.privacy else None, run.sample_dp, rounds),
        "new_clients": run.new_clients,
        "membership": run.membership,
        "diverged": run.diverged is not None,  # NaN/Inf in the server's model: training stopped, accuracy 0
        "diverged_round": run.diverged,
        "attack_success": run.attack_success,
    }


def tuning_block(config: cfg.Config, tuning: Any) -> dict[str, Any]:
    """summary.json's `tuning`: how the hyperparameters were chosen, and the label the report's verdicts carry."""
    if tuning is not None:
        return tuning.summary()
    # "as configured": some algorithm's hyperparameters differ from its defaults, or it trains with its own local
    # training (lr, epochs, batch size) rather than the comparison's
    default, shared = cfg.Config(), {k: getattr(config.train, k) for k in cfg.ALGORITHM_KEYS}
    configured = any(cfg.hyperparameters(config, n) != cfg.hyperparameters(default, n)
                     or cfg.algorithm_train(config, n) != shared for n in config.run.algorithms)
    return {"status": "untuned",
            "label": "untuned (hyperparameters as configured)" if configured else "untuned defaults"}


def attack_block(config: cfg.Config, trained: list[Trained]) -> dict[str, Any] | None:
    """summary.json's `attack`: the simulated attack and the server's aggregation rule (null without either)."""
    if not config.attack.on and not config.robust.on:
        return None
    return {
        "kind": config.attack.kind,
        "malicious_fraction": config.attack.malicious if config.attack.on else 0.0,
        "malicious_per_seed": {str(t.seed): len(t.malicious) for t in trained},
        "aggregator": dataclasses.asdict(robust_rule(config)),
        "evaluated": "benign clients only" if config.attack.on else "every training client",
    }


def build_summary(config: cfg.Config, trained: list[Trained], target: float, engine: str | None = None,
                  tuning: Any = None) -> dict[str, Any]:
    """summary.json: `dataset` describes the first seed's clients; `runs` holds one entry per
    (algorithm, seed); `aggregate` (several seeds only, else null) the mean, std and 95% interval over seeds;
    `tuning` how the hyperparameters were chosen (experiments/tune.Tuning, or None: untuned)."""
    data = trained[0].data
    engine = engine or config.run.engine
    summary = {
        "fedarena_version": fedarena.__version__,
        "schema_version": 1,
        "config": cfg.to_tree(config),
        "engine": engine,
        "dataset": {
            "name": data.name,
            "num_clients": data.num_clients,
            "client_ids": list(data.client_ids),
            "partition": data.partition,
            "num_classes": data.num_classes,
            "input_shape": list(data.input_shape),
            "train_samples": int(data.y_train.shape[0]),
            "test_samples": int(data.y_test.shape[0]),
            "heterogeneity": summarize(data),
        },
        "model": {"name": config.model.name, "hidden": cfg.model_width(config), "norm": config.model.norm},
        "target_acc": target,
        "target_rule": TARGET_RULE,
        "seeds": [t.seed for t in trained],
        "tuning": tuning_block(config, tuning),
        "malicious_clients": [data.client_ids[c] for c in trained[0].malicious],  # the first seed's (attack only)
        "attack": attack_block(config, trained),
        "runs": [summarize_run(n, *t.runs[n], t.data, target, engine, cfg.algorithm_train(config, n))
                 | {"seed": t.seed, "tuning": tuning.run_entry(n) if tuning is not None else None,
                    "malicious_clients": [t.data.client_ids[c] for c in t.malicious]}
                 for n in config.run.algorithms for t in trained],
        "aggregate": None,
    }
    if len(trained) > 1:
        summary["aggregate"] = aggregate(summary) | {"heterogeneity": [
            {"seed": t.seed} | {k: summarize(t.data)[k] for k in ("effective_classes_mean", "js_divergence_mean")}
            for t in trained]}
    return summary
