"""The `[tune]` section and the search spaces `--tune` may search (experiments/tune.py runs the search).

Split from the config module, which re-exports every name here; it imports nothing from it (the checks get
the whole config as an argument).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedarena.core.space import Space, spaces
from fedarena.core.types import FedarenaError

if TYPE_CHECKING:
    from fedarena.config import Config

TUNE_OBJECTIVES = ("mean", "worst10")  # validation personal accuracy: sample-weighted mean | worst-10% mean
TUNE_PRUNERS = ("hyperband", "halving", "none")
QUICK_TRIALS = 8  # `--tune quick`: trials per algorithm (docs/tuning.md)
TUNED_SEEDS = 3  # run.seeds when tuning and no seeds were given: the chosen configuration's final runs
# The comparison's local-training settings tuning may search. lr is always searched (a log range covering the
# learning rates of the papers fedarena cites: 0.005 (pFedMe's runs for every algorithm), 0.01-0.1 (FedAvg's
# MNIST grid, Ditto, FedRep), LEAF's Shakespeare 0.8); local_epochs and batch_size are the comparison's (equal
# local work for every algorithm) unless the user adds a range (`--set tune.train.local_epochs=[1,5]`).
TRAIN_SPACES = {
    "lr": Space(low=1e-3, high=1.0, log=True, source=(
        "covers McMahan et al. 2017's MNIST grid, Ditto's and FedRep's 0.01-0.1, the pFedMe paper's 0.005 and "
        "LEAF's Shakespeare 0.8")),
    "local_epochs": Space(low=1, high=100, integer=True, source="user-widened only (equal local work by default)"),
    "batch_size": Space(low=1, high=100_000, integer=True, source="user-widened only (equal local work by default)"),
}
TRAIN_SEARCHED = ("lr",)  # the TRAIN_SPACES searched without a user's range


@dataclass(frozen=True)
class TuneConfig:
    """`--tune`: each algorithm's hyperparameters searched on validation data (experiments/tune.py); off by default.
    Search ranges narrowed or widened by `[tune.ALGORITHM]` / `[tune.train]` tables live in `Config.tune_spaces`."""

    trials: int = 0  # trials per algorithm; 0 = nothing tuned ("untuned defaults")
    objective: str = "mean"  # one of TUNE_OBJECTIVES
    pruner: str = "hyperband"  # one of TUNE_PRUNERS; rounds are the fidelity


def declared_spaces(name: str) -> dict[str, Space]:
    """What `[tune.NAME]` may narrow: an algorithm's declared spaces and its `lr`, or (`train`) TRAIN_SPACES."""
    from fedarena.algorithms import REGISTRY

    if name == "train":
        return dict(TRAIN_SPACES)
    if name not in REGISTRY:
        raise FedarenaError(f"unknown config section 'tune.{name}'; valid: tune.train, tune.ALGORITHM "
                            f"({', '.join(REGISTRY)})")
    return {**spaces(REGISTRY[name]), **TRAIN_SPACES}


def search_ranges(name: str, values: Mapping[str, Any]) -> dict[str, list[Any]]:
    """A user's `[tune.NAME]` ranges, each checked against the declared space (an unknown key, low > high, or a
    range outside the declared one is refused naming the key)."""
    declared = declared_spaces(name)
    out = {}
    for key, value in values.items():
        if key not in declared:
            valid = ", ".join(declared) or "(none)"
            raise FedarenaError(f"unknown search space 'tune.{name}.{key}'; searchable keys: {valid}")
        declared[key].narrowed(f"tune.{name}.{key}", value)
        out[key] = list(value)
    return out


def tune_checks(config: Config) -> list[tuple[bool, str]]:
    """The `[tune]` section's range checks, as (ok, message) pairs for `config.validate`."""
    return [
        (config.tune.trials >= 0, f"tune.trials (--tune) must be >= 1 trial per algorithm, or 0 (off), got "
                                  f"{config.tune.trials}"),
        (config.tune.objective in TUNE_OBJECTIVES,
         f"unknown tune.objective '{config.tune.objective}'; valid: {', '.join(TUNE_OBJECTIVES)}"),
        (config.tune.pruner in TUNE_PRUNERS, f"unknown tune.pruner '{config.tune.pruner}'; valid: {', '.join(TUNE_PRUNERS)}"),
        (not config.tune.trials or not (config.privacy.dp_clip or config.privacy.sgd_noise),
         "tune.trials: tuning on the clients' data spends privacy the DP accountant does not count (Papernot and "
         "Steinke, ICLR 2022); tune without DP (or on proxy data), then run the chosen config.toml with DP"),
        (not config.tune.trials or config.run.engine != "flower-sim",
         "tune.trials: tuning runs in this process (--engine reference or vectorized); deploy the tuned config.toml"),
    ]


def check_fixed_values(config: Config) -> None:
    """Under `--tune`, a value the user fixes must lie in the space tuning searches."""
    if not config.tune.trials:
        return
    for name in config.run.algorithms:
        declared = declared_spaces(name)
        for key, value in config.algorithms.get(name, {}).items():
            if key in declared and not declared[key].contains(value):
                s = declared[key]
                where = f"choices {list(s.choices)}" if s.choices else f"range [{s.low}, {s.high}]"
                raise FedarenaError(f"{name}.{key} = {value} is outside its declared search {where}; "
                                    "tuning compares algorithms within their declared spaces")
