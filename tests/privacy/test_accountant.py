"""Privacy accounting: our epsilons are dp_accounting's, published cases are reproduced, the budget persists."""

from __future__ import annotations

import json
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.privacy_accountant import NeighboringRelation
from dp_accounting.rdp import RdpAccountant

from fedarena.core.types import FedarenaError
from fedarena.privacy.accountant import (
    SKELLAM_ORDERS,
    Accountant,
    AccountantConfig,
    check_delta,
    dp_event,
    epsilon,
    epsilon_for,
    local_epsilon,
    poisson_subsampled_rdp,
)


@pytest.mark.parametrize(
    ("q", "z", "steps", "delta"), [(0.01, 1.0, 1000, 1e-5), (0.1, 2.5, 37, 1e-6), (1.0, 5.0, 3, 1e-5)]
)
def test_rdp_poisson_equals_direct_dp_accounting(q: float, z: float, steps: int, delta: float) -> None:
    direct = RdpAccountant().compose(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps
    ).get_epsilon(delta)
    assert epsilon(z, q, rounds=steps, delta=delta) == direct


def test_pld_poisson_equals_direct_dp_accounting() -> None:
    direct = PLDAccountant().compose(
        dp_accounting.PoissonSampledDpEvent(0.02, dp_accounting.GaussianDpEvent(1.2)), 500
    ).get_epsilon(1e-5)
    ours = epsilon(1.2, population=5000, per_round=100, rounds=500, accountant="pld")
    assert ours == direct
    assert ours < epsilon(1.2, 0.02, rounds=500)  # PLD is tighter than RDP here


def test_fixed_size_sampling_is_rdp_without_replacement_with_replace_one_sensitivity_2c() -> None:
    # Replacing one user moves the clipped sum by up to 2C: the event's noise multiplier is z / 2.
    direct = RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE).compose(
        dp_accounting.SampledWithoutReplacementDpEvent(1000, 20, dp_accounting.GaussianDpEvent(3.0 / 2)), 200
    ).get_epsilon(1e-5)
    assert epsilon(3.0, population=1000, per_round=20, rounds=200, sampling="fixed") == direct


def test_pld_with_fixed_size_sampling_is_refused_by_name() -> None:
    with pytest.raises(FedarenaError, match="pld.*fixed.*SampledWithoutReplacementDpEvent"):
        epsilon(1.0, population=100, per_round=10, rounds=5, sampling="fixed", accountant="pld")


def _classic_rdp_epsilon(config: AccountantConfig, rounds: int) -> float:
    """The RDP->DP conversion of Abadi et al. 2016 and early TF-Privacy: min_a rdp(a) + log(1/delta)/(a-1)."""
    rdp = RdpAccountant().compose(dp_event(config, rounds))
    return float(np.min(rdp.rdp + math.log(1 / config.delta) / (rdp.orders - 1)))


def test_published_tf_privacy_mnist_example() -> None:
    # TF-Privacy, tutorials/README.md ("Select Parameters" table, first row, the mnist_dpsgd_tutorial default):
    # N = 60000, batch 256, noise multiplier 1.12, 60 epochs, delta 1e-5 -> eps 2.92 (printed to 2 decimals;
    # the tutorial counts steps = epochs * N // batch). Same sampled Gaussian mechanism, with examples as users.
    config = AccountantConfig(1.12, delta=1e-5, population=60000, per_round=256)
    rounds = 60 * 60000 // 256
    assert _classic_rdp_epsilon(config, rounds) == pytest.approx(2.92, abs=0.005)
    # Our report uses dp_accounting's tighter conversion: smaller, but not by much.
    assert 0.8 * 2.92 < Accountant(config).epsilon_after(rounds) < 2.92


def test_published_abadi_moments_accountant_example() -> None:
    # Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, Sec. 3.1: q = 0.01, sigma = 4,
    # delta = 1e-5, T = 10000 gives eps ~ 1.26 with the moments accountant (printed to 2 decimals).
    config = AccountantConfig(4.0, delta=1e-5, sampling_probability=0.01)
    assert _classic_rdp_epsilon(config, 10_000) == pytest.approx(1.26, abs=0.005)
    assert 0.75 * 1.26 < epsilon_for(config, 10_000) < 1.26


def test_edge_cases_zero_rounds_and_zero_noise() -> None:
    config = AccountantConfig(0.0, sampling_probability=0.1)
    assert epsilon_for(config, 0) == 0.0
    assert epsilon_for(config, 1) == math.inf


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": -1.0, "sampling_probability": 0.1}, "noise_multiplier"),
        ({"noise_multiplier": 1.0, "sampling_probability": 1.5}, "sampling_probability"),
        ({"noise_multiplier": 1.0}, "needs either"),
        ({"noise_multiplier": 1.0, "sampling_probability": 0.1, "delta": 1.0}, "delta"),
        ({"noise_multiplier": 1.0, "sampling": "fixed", "population": 10}, "needs population and per_round"),
        ({"noise_multiplier": 1.0, "population": 10, "per_round": 11}, "per_round"),
        ({"noise_multiplier": 1.0, "sampling_probability": 0.1, "accountant": "moments"}, "accountant"),
        ({"noise_multiplier": 1.0, "sampling_probability": 0.1, "mechanism": "skellam"}, "l2_sensitivity"),
    ],
)
def test_bad_configs_are_refused_with_the_key(kwargs: dict, message: str) -> None:
    with pytest.raises(FedarenaError, match=message):
        AccountantConfig(**kwargs)


def test_max_rounds_is_the_largest_within_budget_and_monotone() -> None:
    accountant = Accountant(AccountantConfig(1.0, sampling_probability=0.05))
    limit = 5000
    previous = 0
    for target in (0.5, 1.0, 2.0, 4.0, 8.0):
        r = accountant.max_rounds(target, limit)
        assert r >= previous
        previous = r
        assert accountant.epsilon_after(r) <= target
        assert r == limit or accountant.epsilon_after(r + 1) > target
    assert accountant.max_rounds(math.inf, limit) == limit
    with pytest.raises(FedarenaError, match="target epsilon"):
        accountant.max_rounds(0.0, limit)


def test_can_spend_stops_before_the_round_that_would_exceed_the_target() -> None:
    accountant = Accountant(AccountantConfig(1.0, sampling_probability=0.05))
    target = 2.0
    while accountant.can_spend(target):
        accountant = accountant.spend()
    assert accountant.epsilon <= target < accountant.epsilon_after(accountant.rounds_spent + 1)
    assert accountant.rounds_spent == accountant.max_rounds(target, 10_000)


def test_checkpointed_budget_continues_and_never_resets() -> None:
    config = AccountantConfig(1.1, sampling_probability=0.02, delta=1e-6)
    before = Accountant(config).spend(30)
    state = json.loads(json.dumps(before.state()))  # a checkpoint is plain JSON
    resumed = Accountant.resume(state, config)
    assert resumed.rounds_spent == 30
    assert resumed.epsilon == before.epsilon > 0
    after = resumed.spend(20)
    assert after.epsilon == Accountant(config).spend(50).epsilon > resumed.epsilon
    with pytest.raises(FedarenaError, match="config changed"):
        Accountant.resume(state, AccountantConfig(2.0, sampling_probability=0.02, delta=1e-6))
    with pytest.raises(FedarenaError, match="format"):
        Accountant.from_state({**state, "format": "other"})
    with pytest.raises(FedarenaError, match="rounds_spent"):
        Accountant.from_state({**state, "rounds_spent": -1})


def test_check_delta_warns_at_one_over_population(caplog: pytest.LogCaptureFixture) -> None:
    assert check_delta(1e-5, 1000) is None
    message = check_delta(1e-3, 1000)
    assert message is not None and "1/population" in message
    assert "1/population" in caplog.text


def test_local_epsilon_is_gaussian_with_replace_sensitivity_2c() -> None:
    direct = RdpAccountant().compose(dp_accounting.GaussianDpEvent(4.0 / 2), 10).get_epsilon(1e-5)
    assert local_epsilon(4.0, 10) == direct
    assert local_epsilon(4.0, 0) == 0.0


def test_zhu_wang_lower_bound_is_exact_for_gaussian_and_upper_bound_dominates() -> None:
    # Theorem 5's expression (tail_factor=1) is exact for the Poisson-subsampled Gaussian: it must equal
    # dp_accounting's computation; Theorem 6's general bound (tail_factor=3) must never be below it.
    z, q = 1.3, 0.02
    direct = RdpAccountant(orders=SKELLAM_ORDERS).compose(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    ).rdp
    exact = poisson_subsampled_rdp(lambda a: a / (2 * z * z), q, SKELLAM_ORDERS, tail_factor=1.0)
    upper = poisson_subsampled_rdp(lambda a: a / (2 * z * z), q, SKELLAM_ORDERS)
    np.testing.assert_allclose(exact, direct, rtol=1e-10)
    assert np.all(upper >= direct)


def test_skellam_converges_to_gaussian_and_never_beats_it() -> None:
    # Without sampling, the Skellam RDP is the Gaussian one plus a discreteness term that vanishes as the
    # integer scale (the sensitivity D2) grows.
    gaussian = RdpAccountant(orders=SKELLAM_ORDERS).compose(
        dp_accounting.GaussianDpEvent(1.0), 50
    ).get_epsilon(1e-5)
    gaps = []
    for l2 in (10.0, 1e3, 1e5):
        config = AccountantConfig(
            1.0, sampling_probability=1.0, mechanism="skellam", l2_sensitivity=l2, l1_sensitivity=l2**2
        )
        gaps.append(epsilon_for(config, 50) - gaussian)
    assert all(g >= 0 for g in gaps)
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-6


def test_skellam_refuses_what_it_cannot_account() -> None:
    with pytest.raises(FedarenaError, match="skellam.*poisson.*rdp"):
        AccountantConfig(1.0, population=100, per_round=10, sampling="fixed", mechanism="skellam",
                         l2_sensitivity=10.0, l1_sensitivity=100.0)
    with pytest.raises(FedarenaError, match="no Skellam event"):
        dp_event(AccountantConfig(1.0, sampling_probability=0.1, mechanism="skellam", l2_sensitivity=10.0,
                                  l1_sensitivity=100.0), 3)
