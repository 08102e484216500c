"""Hyperparameter search spaces: `Space` itself, and the spaces every registered algorithm declares."""

import dataclasses

import pytest

from fedarena.algorithms import REGISTRY
from fedarena.core.space import Space, hp, spaces
from fedarena.core.types import FedarenaError

ALGOS = sorted(REGISTRY)
DECLARED = [(name, key) for name in ALGOS for key in spaces(REGISTRY[name])]

# the fields a benchmark tunes (issue #15): each must declare a space
SEARCHED = {
    "fedprox": {"mu"}, "fedavg-ft": {"epochs"}, "fedrep": {"tau_h"}, "scaffold": {"eta_g"},
    "fedavgm": {"eta", "beta"}, "fedadam": {"eta", "tau"}, "fedyogi": {"eta", "tau"}, "fedadagrad": {"eta", "tau"},
    "ifca": {"k"}, "mocha": {"lam1", "inner_iters"}, "ditto": {"lam"}, "apfl": {"alpha"},
    "per-fedavg": {"beta", "adapt_steps"}, "pfedme": {"lam", "K", "personal_lr", "beta"},
}
# structure, seeds, variants and "use the comparison's" fields: never searched
PLAIN = {
    "fedrep": {"personal_layers"}, "lg-fedavg": {"personal_layers"}, "fedper": {"personal_layers"},
    "scaffold": {"control_variates"}, "ifca": {"init_seed"}, "mocha": {"epochs"}, "apfl": {"adaptive"},
    "per-fedavg": {"variant"},
}


def default(name, key):
    return next(f.default for f in dataclasses.fields(REGISTRY[name]) if f.name == key)


def test_the_tuned_fields_declare_spaces_and_structural_ones_do_not():
    declared = {name: set(spaces(REGISTRY[name])) for name in ALGOS}
    assert {name: keys for name, keys in declared.items() if keys} == SEARCHED
    for name, keys in PLAIN.items():
        fields = {f.name for f in dataclasses.fields(REGISTRY[name])}
        assert keys <= fields, (name, keys - fields)  # the plain fields exist ...
        assert not keys & declared[name], name  # ... and have no space


@pytest.mark.parametrize(("name", "key"), DECLARED)
def test_declared_space_is_usable_cited_and_holds_the_default(name, key):
    space = spaces(REGISTRY[name])[key]
    assert space.check(f"{name}.{key}") is space
    value = default(name, key)
    assert space.contains(value), (name, key, value)
    assert space.source.strip()
    if space.log:
        assert space.low is not None and space.low > 0
    assert space.integer == (isinstance(value, int) and not isinstance(value, bool) and not space.choices)


@pytest.mark.parametrize(("name", "key"), DECLARED)
def test_every_value_of_a_declared_space_is_a_valid_hyperparameter(name, key):
    """The ends of each range (each choice) pass the algorithm's own `__post_init__` checks."""
    space = spaces(REGISTRY[name])[key]
    cast = int if space.integer else float
    values = space.choices or (cast(space.low), cast(space.high))
    for value in values:
        algo = REGISTRY[name](**{key: value})
        assert getattr(algo, key) == value


def test_per_fedavg_beta_reaches_the_step_sizes_short_runs_need():
    beta = spaces(REGISTRY["per-fedavg"])["beta"]
    assert beta.log and beta.contains(1e-4) and beta.contains(0.5) and beta.contains(0.05)


def test_fedprox_mu_covers_the_papers_grid():
    mu = spaces(REGISTRY["fedprox"])["mu"]
    assert mu.log and all(mu.contains(v) for v in (0.001, 0.01, 0.1, 1.0))


def test_adaptive_server_optimizers_cover_the_best_values_of_reddi_et_al():
    """Best server learning rates and tau of the authors' notes (google-research/federated
    optimization/docs/hyperparameters.md), log10: every one lies in the declared space."""
    best_eta = {"fedadam": (-2.5, -2, -1.5, -0.5, 0), "fedyogi": (-2.5, -2, -1.5, -0.5, 0),
                "fedadagrad": (-1.5, -1, -0.5, 1), "fedavgm": (-0.5, 0)}
    best_tau = {"fedadam": (-5, -4, -3, -1), "fedyogi": (-5, -4, -3, -1), "fedadagrad": (-4, -3, -2, -1)}
    for name, logs in best_eta.items():
        assert all(spaces(REGISTRY[name])["eta"].contains(10.0**e) for e in logs), name
    for name, logs in best_tau.items():
        assert all(spaces(REGISTRY[name])["tau"].contains(10.0**e) for e in logs), name


def test_pfedme_covers_the_authors_runs():
    space = spaces(REGISTRY["pfedme"])
    assert all(space["lam"].contains(v) for v in (7.0, 15.0, 20.0, 30.0, 0.05))
    assert all(space["K"].contains(v) for v in (1, 5, 7))
    assert all(space["personal_lr"].contains(v) for v in (0.01, 0.05, 0.09, 0.1))
    assert all(space["beta"].contains(v) for v in (1.0, 2.0, 4.0))


def test_apfl_alpha_is_the_unit_interval_linear():
    alpha = spaces(REGISTRY["apfl"])["alpha"]
    assert (alpha.low, alpha.high, alpha.log) == (0.0, 1.0, False)


# ---- Space itself ----

def test_check_refuses_low_above_high_naming_the_key():
    with pytest.raises(FedarenaError, match=r"^algo\.x: .*low 2\.0 > high 1\.0"):
        Space(low=2.0, high=1.0, source="s").check("algo.x")


@pytest.mark.parametrize("low", [0.0, -1.0])
def test_check_refuses_a_log_range_reaching_zero(low):
    with pytest.raises(FedarenaError, match=r"^algo\.x: a log search range needs low > 0"):
        Space(low=low, high=1.0, log=True, source="s").check("algo.x")


@pytest.mark.parametrize("space", [
    Space(low=None, high=1.0), Space(low=0.0, high=float("inf")), Space(low=0.0, high=1.0, choices=(1, 2)),
    Space(choices=(1, 1)), Space(low=0.5, high=3.0, integer=True),
])
def test_check_refuses_other_unusable_spaces(space):
    with pytest.raises(FedarenaError, match=r"^algo\.x: "):
        space.check("algo.x")


def test_narrowed_inside_the_range_keeps_the_rest_of_the_space():
    space = Space(low=1e-3, high=10.0, log=True, source="paper")
    out = space.narrowed("algo.x", [0.01, 1])
    assert (out.low, out.high, out.log, out.source) == (0.01, 1.0, True, "paper")
    assert space.narrowed("algo.x", [1e-3, 10.0]) == space  # the whole range is inside


@pytest.mark.parametrize("value", [[1e-4, 1.0], [0.01, 100.0], [5.0, 1.0], [0.1], [0.1, 1.0, 2.0], [True, 1.0], "0.1", []])
def test_narrowed_refuses_what_is_not_a_sub_range(value):
    with pytest.raises(FedarenaError, match=r"^algo\.x: "):
        Space(low=1e-3, high=10.0, log=True, source="s").narrowed("algo.x", value)


def test_narrowed_choices_must_be_declared_choices():
    space = Space(choices=("a", "b", "c"), source="s")
    assert space.narrowed("algo.v", ["c", "a"]).choices == ("c", "a")
    with pytest.raises(FedarenaError, match=r"^algo\.v: \['d'\] outside the declared choices"):
        space.narrowed("algo.v", ["a", "d"])


def test_narrowed_integer_range_needs_whole_bounds():
    space = Space(low=1, high=10, integer=True, source="s")
    assert space.narrowed("algo.k", [2, 5]).contains(3)
    with pytest.raises(FedarenaError, match=r"^algo\.k: an integer search range needs whole bounds"):
        space.narrowed("algo.k", [2.5, 5])


def test_contains_for_integer_spaces():
    space = Space(low=1, high=10, integer=True, source="s")
    assert space.contains(1) and space.contains(10) and space.contains(4.0)
    assert not space.contains(2.5)
    assert not space.contains(0) and not space.contains(11)
    assert not space.contains(True) and not space.contains("3")


def test_contains_for_choices_and_float_ranges():
    assert Space(choices=(0.0, 0.9), source="s").contains(0.9)
    assert not Space(choices=(0.0, 0.9), source="s").contains(0.5)
    assert Space(low=0.0, high=1.0, source="s").contains(0.5)
    assert not Space(low=0.0, high=1.0, source="s").contains(1.5)


def test_hp_keeps_the_default_and_infers_integer_ranges():
    @dataclasses.dataclass(frozen=True)
    class Algo:
        k: int = hp(3, low=1, high=5, source="a")
        x: float = hp(0.1, low=0.01, high=1.0, log=True, source="b")
        v: str = hp("fo", choices=("fo", "hf"), source="c")
        plain: int = 0

    assert Algo() == Algo(k=3, x=0.1, v="fo", plain=0)
    out = spaces(Algo)
    assert list(out) == ["k", "x", "v"]
    assert out["k"].integer and not out["x"].integer and not out["v"].integer
    assert out["k"].to_json() == {"low": 1, "high": 5, "log": False, "type": "int", "source": "a"}
    assert out["v"].to_json() == {"choices": ["fo", "hf"], "source": "c"}
    assert spaces(Algo()) == out  # from an object too
