"""Typed run configuration: frozen dataclasses are the single source of truth.

A config comes from defaults, then a TOML file, then CLI flags, then ``--set section.key=value``
overrides, in that order. Unknown sections/keys and out-of-range values are refused with a
:class:`FedarenaError` naming the key. Algorithm hyperparameters live in a section named after the
algorithm (``[fedprox] mu = 0.01``) and are checked against that algorithm's dataclass fields.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from fedarena.config.privacy import PrivacyConfig, check_secagg_capacity, privacy_checks
from fedarena.config.robust import AttackConfig, RobustConfig, robust_checks
from fedarena.config.tune import (
    QUICK_TRIALS,
    TRAIN_SEARCHED,
    TRAIN_SPACES,
    TUNE_OBJECTIVES,
    TUNE_PRUNERS,
    TUNED_SEEDS,
    TuneConfig,
    check_fixed_values,
    declared_spaces,
    search_ranges,
    tune_checks,
)
from fedarena.core.device import valid_device
from fedarena.core.types import FedarenaError

# [data], [synthetic] and [shakespeare] are the data layer's own specs (fedarena/data/spec.py), re-exported here
from fedarena.data.spec import (
    DATASETS,
    HF_PREFIX,
    PARTITIONS,
    DataConfig,
    ShakespeareConfig,
    SyntheticConfig,
    resolve_clients_per_round,
)

__all__ = [
    "AttackConfig", "DATASETS", "ENGINES", "MODELS", "PARTITIONS", "RobustConfig", "SECTIONS",
    "Config", "DataConfig", "ForgetConfig", "ModelConfig",
    "PrivacyConfig", "RunConfig", "ShakespeareConfig", "SyntheticConfig", "TrainConfig", "apply", "build", "dump_toml",
    "hyperparameters", "load_toml", "parse_sets", "parse_value", "replace_fields", "resolved_num_clients",
    "resolved_partition", "to_tree", "validate", "with_clients_per_round",
    # config/tune.py (the [tune] section and the search spaces), re-exported
    "QUICK_TRIALS", "TRAIN_SEARCHED", "TRAIN_SPACES", "TUNED_SEEDS", "TUNE_OBJECTIVES", "TUNE_PRUNERS", "TuneConfig",
    "declared_spaces", "search_ranges",
]

MODELS = ("mlr", "mlp", "cnn", "lstm")  # lstm: int64 character indices in (tasks.INTEGER_INPUTS)
HF_FIELDS = ("files", "features", "label", "partition_by", "tokens", "seq_len", "vocab_size", "image_size")  # hf only
ENGINES = ("reference", "vectorized", "flower-sim")  # flower-sim: Flower's simulation runtime (Ray)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"
    hidden: int = 200  # hidden width of `mlp` (60-200-200-10 on synthetic)
    norm: str = "none"  # none | bn (BatchNorm after hidden layers; FedBN keeps it personal)


@dataclass(frozen=True)
class TrainConfig:
    rounds: int = 30
    clients_per_round: int | None = None  # None (unset): min(10, training clients), see with_clients_per_round
    local_epochs: int = 1
    batch_size: int = 10
    lr: float = 0.05
    eval_every: int = 1


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    algorithms: tuple[str, ...] = ("fedavg", "fedprox", "local", "fedavg-ft", "centralized")
    target: float | None = None  # None: automatic, see docs/summary.md
    engine: str = "vectorized"  # reference: the sequential ground truth; vectorized: clients batched
    seeds: int = 1  # the comparison is run for seeds seed, seed+1, ..., seed+seeds-1
    device: str = "cpu"  # cpu | cuda | cuda:N | auto (core/device.py): where data, models and parameters live


@dataclass(frozen=True)
class ForgetConfig:
    """What training keeps for `fedarena forget`, and the backdoor probe that checks a deletion."""

    keep: str = "server"  # none | server (checkpoints + update norms) | all (+ client-state snapshots)
    probe: str = ""  # client id (as in summary.json) whose training data carries a backdoor trigger
    probe_target: int = 0  # the backdoor's target label
    probe_fraction: float = 0.5  # share of the probe client's training samples that carry the trigger


# keys every algorithm section takes beside its hyperparameters: its own local training (overrides [train]'s)
ALGORITHM_KEYS = {"lr": float, "local_epochs": int, "batch_size": int}


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    shakespeare: ShakespeareConfig = field(default_factory=ShakespeareConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    forget: ForgetConfig = field(default_factory=ForgetConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    robust: RobustConfig = field(default_factory=RobustConfig)
    # algorithm name -> hyperparameter overrides (validated against the algorithm's dataclass; `lr` too)
    algorithms: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # "train" or an algorithm name -> {key: [low, high] or [choices...]}: the user's search ranges (`[tune.X]`)
    tune_spaces: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name not in ("algorithms", "tune_spaces")}


# ---------------------------------------------------------------- coercion


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce a TOML/CLI value to a dataclass field type, or raise naming the key."""
    if isinstance(tp, str):
        tp = eval(tp, vars(typing) | {"float": float, "int": int, "str": str, "bool": bool})
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        unset = value is None or (isinstance(value, str) and value.lower() in ("none", "auto", ""))
        if unset and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise FedarenaError(f"{key}: expected a list, got {value!r}")
        (elem, _) = typing.get_args(tp)
        return tuple(_coerce(v, elem, key) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise FedarenaError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise FedarenaError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise FedarenaError(f"{key}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise FedarenaError(f"{key}: expected a number, got {value!r}")
        try:
            out = float(value)
        except ValueError:
            raise FedarenaError(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(out):
            raise FedarenaError(f"{key}: expected a finite number, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise FedarenaError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported field type {tp} for {key}")


def parse_value(text: str) -> Any:
    """A `--set` value: TOML syntax where it parses (numbers, booleans, lists), else a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def replace_fields(obj: Any, updates: Mapping[str, Any], section: str) -> Any:
    """`dataclasses.replace` with every key checked and coerced; unknown keys name the valid ones."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in updates.items():
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "(none)"
            raise FedarenaError(f"unknown config key '{section}.{key}'; valid keys: {valid}")
        changes[key] = _coerce(value, fields[key].type, f"{section}.{key}")
    try:
        return dataclasses.replace(obj, **changes)
    except (ValueError, TypeError) as exc:
        raise FedarenaError(f"{section}: {exc}") from None


# ---------------------------------------------------------------- building


def apply(config: Config, tree: Mapping[str, Mapping[str, Any]]) -> Config:
    """Apply a nested ``{section: {key: value}}`` tree of overrides (from TOML or --set)."""
    from fedarena.algorithms import REGISTRY

    changes: dict[str, Any] = {}
    algos = {k: dict(v) for k, v in config.algorithms.items()}
    ranges = {k: dict(v) for k, v in config.tune_spaces.items()}
    for section, values in tree.items():
        if not isinstance(values, Mapping):
            raise FedarenaError(f"config entry '{section}' must be a section of keys, got {values!r}")
        if section == "tune":  # TOML's [tune.X] tables arrive nested in [tune]
            values = dict(values)
            for key in [k for k, v in values.items() if isinstance(v, Mapping)]:
                ranges.setdefault(key, {}).update(search_ranges(key, values.pop(key)))
        if section in SECTIONS:
            changes[section] = replace_fields(getattr(config, section), values, section)
        elif section.startswith("tune."):  # --set tune.ditto.lam=[0.1,2]
            key = section.removeprefix("tune.")
            ranges.setdefault(key, {}).update(search_ranges(key, values))
        elif section in REGISTRY:
            own = {k: v for k, v in values.items() if k not in ALGORITHM_KEYS}
            replace_fields(REGISTRY[section](), own, section)  # validate now
            values = dict(values)
            for key in set(values) & set(ALGORITHM_KEYS):
                values[key] = _coerce(values[key], ALGORITHM_KEYS[key], f"{section}.{key}")
                if not values[key] > 0:
                    raise FedarenaError(f"{section}.{key} must be > 0, got {values[key]}")
            algos.setdefault(section, {}).update(values)
        else:
            valid = ", ".join([*SECTIONS, *REGISTRY, "tune.ALGORITHM", "tune.train"])
            raise FedarenaError(f"unknown config section '{section}'; valid sections: {valid}")
    return validate(dataclasses.replace(config, **changes, algorithms=algos, tune_spaces=ranges))


def parse_sets(pairs: list[str]) -> dict[str, dict[str, Any]]:
    tree: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        section, dot, name = key.strip().rpartition(".")
        if not sep or not dot or not section or not name:
            raise FedarenaError(f"--set expects SECTION.KEY=VALUE, got {pair!r}")
        tree.setdefault(section, {})[name] = parse_value(value.strip())
    return tree


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FedarenaError(f"config file not found: {p}")
    try:
        tree = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FedarenaError(f"config file {p} is not valid TOML: {exc}") from None
    tree.pop("fedarena", None)  # provenance header written into resolved configs
    return tree


def validate(config: Config) -> Config:
    """Range checks that need no data; data-dependent checks happen when the data is loaded."""
    from fedarena.algorithms import REGISTRY

    d, t, r = config.data, config.train, config.run
    d.validate()  # the data layer's own checks (fedarena/data/spec.py)
    config.synthetic.validate()
    config.shakespeare.validate()
    checks = [
        (config.model.name in MODELS,
         f"unknown model '{config.model.name}'; valid: {', '.join(MODELS)}"),
        (config.model.hidden >= 1, "model.hidden must be >= 1"),
        (config.model.norm in ("none", "bn"), f"unknown model.norm '{config.model.norm}'; valid: none, bn"),
        (t.rounds >= 1, f"train.rounds must be >= 1, got {t.rounds}"),
        (t.clients_per_round is None or t.clients_per_round >= 1,
         f"train.clients_per_round must be >= 1, got {t.clients_per_round}"),
        (t.local_epochs >= 1, "train.local_epochs must be >= 1"),
        (t.batch_size >= 1, "train.batch_size must be >= 1"),
        (t.lr > 0, f"train.lr must be > 0, got {t.lr}"),
        (t.eval_every >= 1, "train.eval_every must be >= 1"),
        (r.target is None or 0 < r.target <= 1, f"run.target must be in (0, 1], got {r.target}"),
        (r.seeds >= 1, f"run.seeds must be >= 1, got {r.seeds}"),
        (r.engine in ENGINES, f"unknown engine '{r.engine}'; valid: {', '.join(ENGINES)}"),
        (valid_device(r.device), f"unknown run.device '{r.device}'; valid: cpu, cuda, cuda:N, auto"),
        (len(r.algorithms) >= 1, "run.algorithms must name at least one algorithm"),
        (config.forget.keep in ("none", "server", "all"),
         f"unknown forget.keep '{config.forget.keep}'; valid: none, server, all"),
        (0 < config.forget.probe_fraction <= 1,
         f"forget.probe_fraction must be in (0, 1], got {config.forget.probe_fraction}"),
    ]
    for ok, message in [*checks, *privacy_checks(config), *tune_checks(config), *robust_checks(config)]:
        if not ok:
            raise FedarenaError(message)
    for name in r.algorithms:
        if name not in REGISTRY:
            raise FedarenaError(f"unknown algorithm '{name}'; valid: {', '.join(REGISTRY)}")
    if len(set(r.algorithms)) != len(r.algorithms):
        raise FedarenaError("run.algorithms lists an algorithm twice")
    check_secagg_capacity(config)
    check_fixed_values(config)
    return config


def with_clients_per_round(config: Config, num_clients: int) -> Config:
    """`config` with ``train.clients_per_round`` resolved for a run of `num_clients` clients (the data's, or
    the SuperNodes'): min(10, training clients) when unset, refused above the training clients (those left
    after ``data.new_clients``); ``data.num_clients``, when still unset, becomes `num_clients`; the checks
    that need the number run again. Every runtime calls this once its clients are known, so config.toml and
    summary.json record the numbers the run used."""
    t, d = config.train, config.data
    per_round = resolve_clients_per_round(t.clients_per_round, num_clients, d.new_clients)
    data = d if d.num_clients is not None else dataclasses.replace(d, num_clients=num_clients)
    return validate(dataclasses.replace(config, data=data, train=dataclasses.replace(t, clients_per_round=per_round)))


def resolved_num_clients(config: Config) -> int | None:
    """``data.num_clients``, or when unset the dataset's default: 20 for digits and synthetic (and npz-dir,
    which ignores it), every qualifying role for shakespeare (the embedded text is parsed to count them);
    None for hf data with a natural partition (counted when the data is read; with_clients_per_round sets it)."""
    n = config.data.resolved_num_clients()
    if n is not None or config.data.name.startswith(HF_PREFIX):
        return n
    from fedarena.data.shakespeare import count_clients

    return count_clients(config.data, config.shakespeare)


def resolved_partition(config: Config) -> str:
    """``data.partition`` with ``auto`` resolved (the rule is the data spec's)."""
    return config.data.resolved_partition()


def hyperparameters(config: Config, name: str) -> Any:
    """The algorithm object for `name` with this config's overrides applied."""
    from fedarena.algorithms import REGISTRY

    own = {k: v for k, v in config.algorithms.get(name, {}).items() if k not in ALGORITHM_KEYS}
    return replace_fields(REGISTRY[name](), own, name)


def algorithm_train(config: Config, name: str) -> dict[str, Any]:
    """The local training `name` uses: its own `[name] lr / local_epochs / batch_size` where set, else `[train]`'s."""
    own = config.algorithms.get(name, {})
    return {key: kind(own.get(key, getattr(config.train, key))) for key, kind in ALGORITHM_KEYS.items()}


def algorithm_task(config: Config, name: str, task: Any) -> Any:
    """`task` with `name`'s own local training (the same object where it is the comparison's)."""
    t = algorithm_train(config, name)
    sgd = dataclasses.replace(task.sgd, lr=t["lr"], epochs=t["local_epochs"], batch_size=t["batch_size"])
    return task if sgd == task.sgd else dataclasses.replace(task, sgd=sgd)


def to_tree(config: Config) -> dict[str, Any]:
    """The fully resolved config (every selected algorithm's hyperparameters included)."""
    tree: dict[str, Any] = {}
    for section in SECTIONS:
        if section == "shakespeare" and config.data.name != "shakespeare":
            continue  # read for shakespeare only; other runs' config.toml and summary.json stay as they were
        if section in ("attack", "robust") and getattr(config, section) == getattr(Config(), section):
            continue  # no attack, the plain mean: written only where set, so other runs' files stay as they were
        values = dataclasses.asdict(getattr(config, section))
        if section == "data" and not config.data.name.startswith(HF_PREFIX):
            values = {k: v for k, v in values.items() if k not in HF_FIELDS}  # other runs' config.toml unchanged
        tree[section] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if v is not None}
    for name in config.run.algorithms:
        algo = hyperparameters(config, name)
        values = {f.name: getattr(algo, f.name) for f in dataclasses.fields(algo)}
        # TOML has no null: an optional hyperparameter that is None is written as "none" (read back as None)
        values = {k: "none" if v is None else list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        own = algorithm_train(config, name)
        values |= {k: own[k] for k in ALGORITHM_KEYS if k in config.algorithms.get(name, {})}
        if values:
            tree[name] = values
    if config.tune_spaces:
        tree["tune"] = {**tree["tune"], **{k: dict(v) for k, v in config.tune_spaces.items()}}
    return tree


def dump_toml(config: Config, path: Path, version: str) -> None:
    tree = {"fedarena": {"version": version}, **to_tree(config)}
    path.write_text(tomli_w.dumps(tree))


def build(config_file: str | None, flags: Mapping[str, Mapping[str, Any]], sets: list[str]) -> Config:
    """Defaults <- TOML file <- CLI flags <- --set overrides."""
    config = Config()
    file_tree = load_toml(config_file) if config_file else {}
    if config_file:
        config = apply(config, file_tree)
    config = apply(config, {k: v for k, v in flags.items() if v})
    set_tree = parse_sets(sets)
    config = apply(config, set_tree)
    if config.tune.trials and not any("seeds" in (tree.get("run") or {}) for tree in (file_tree, flags, set_tree)):
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, seeds=TUNED_SEEDS))
    data = dataclasses.replace(config.data, partition=resolved_partition(config), num_clients=resolved_num_clients(config))
    return dataclasses.replace(config, data=data)


def with_seed(config: Config, seed: int) -> Config:
    return dataclasses.replace(config, run=dataclasses.replace(config.run, seed=seed))


def make_config_task(config: Config, input_shape: tuple[int, ...], num_classes: int) -> Any:
    """The model task of `config` (the same model, loss and local SGD on every runtime and platform)."""
    from fedarena.core.types import SGD
    from fedarena.tasks import INTEGER_INPUTS, make_task

    if config.data.name == "shakespeare" and config.model.name not in INTEGER_INPUTS:
        raise FedarenaError(f"model.name: {config.model.name} takes float features, but shakespeare's samples are "
                            "character indices; use --model lstm")
    t = config.train
    return make_task(config.model.name, tuple(input_shape), num_classes,
                     SGD(epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr), config.model.hidden, config.model.norm)


def model_width(config: Config) -> int:
    """The hidden width the model of `config` is built with: ``model.hidden``, except for the lstm and the cnn, whose
    widths are LEAF's 256 and FedAvg's 512 when ``model.hidden`` is left at its default (tasks.lstm_width,
    tasks.cnn_width). summary.json's ``model.hidden``."""
    from fedarena.tasks import cnn_width, lstm_width

    width = {"lstm": lstm_width, "cnn": cnn_width}.get(config.model.name)
    return width(config.model.hidden) if width else config.model.hidden
