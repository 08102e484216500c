"""DP mechanics: exact clipping, noise of the right size from the right source, DP-FedAvg's fixed denominator,
local DP, and the Skellam mechanism's integer noise and encoding."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedarena.core.types import FedarenaError
from fedarena.privacy import dp
from fedarena.privacy.dp import (
    CLIP_MARGIN,
    SecureNoise,
    SeededNoise,
    central_dp_mean,
    clip_update,
    flat_norm,
    local_dp,
    skellam_encode,
    skellam_mean,
    skellam_noise,
    skellam_sensitivity,
    skellam_share,
)

N_DRAWS = 10**6
# The sample std of n normals has relative standard error 1/sqrt(2n) = 7.1e-4 at n = 1e6: a 1% tolerance is
# 14 standard errors (a false failure has probability < 1e-40) while a 1% error in the std is caught.
STD_TOLERANCE = 0.01
assert STD_TOLERANCE > 10 / math.sqrt(2 * N_DRAWS)


def _seeded(seed: int = 0) -> SeededNoise:
    return SeededNoise(torch.Generator().manual_seed(seed))


def _independent_norm(params: dict[str, torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.cat([v.double().reshape(-1) for v in params.values()])))


# --- clipping -------------------------------------------------------------------------------------------

_values = st.floats(-1e6, 1e6, allow_nan=False, width=32) | st.floats(-0.5**10, 0.5**10, width=32)
_tensor = st.tuples(st.lists(_values, min_size=1, max_size=40), st.sampled_from([torch.float32, torch.float64]))
_delta = st.lists(_tensor, min_size=1, max_size=3).map(
    lambda ts: {f"t{i}": torch.tensor(vals, dtype=dtype) for i, (vals, dtype) in enumerate(ts)}
)


@settings(max_examples=300, deadline=None)
@given(delta=_delta, clip=st.floats(1e-6, 1e6))
def test_clipped_norm_never_exceeds_clip(delta: dict[str, torch.Tensor], clip: float) -> None:
    clipped, norm = clip_update(delta, clip)
    assert norm == flat_norm(delta)
    assert flat_norm(clipped) <= clip * (1 - CLIP_MARGIN)
    assert _independent_norm(clipped) <= clip
    assert {k: v.dtype for k, v in clipped.items()} == {k: v.dtype for k, v in delta.items()}
    if norm <= clip * (1 - CLIP_MARGIN):
        assert all(torch.equal(clipped[k], delta[k]) for k in delta)
    else:  # same direction, norm at the bound
        factor = clip / norm
        for k in delta:
            torch.testing.assert_close(clipped[k].double(), delta[k].double() * factor, rtol=1e-5, atol=clip * 1e-6)
        assert flat_norm(clipped) == pytest.approx(clip, rel=1e-5)


def test_clipping_half_precision_is_exact_too() -> None:
    delta = {"w": torch.full((1000,), 3.0, dtype=torch.float16), "b": torch.tensor([7.0], dtype=torch.bfloat16)}
    for clip in (0.1, 1.0, 33.3):
        clipped, _ = clip_update(delta, clip)
        assert flat_norm(clipped) <= clip


def test_clip_inputs_are_validated() -> None:
    with pytest.raises(FedarenaError, match="clip"):
        clip_update({"w": torch.ones(3)}, 0.0)
    with pytest.raises(FedarenaError, match="non-finite.*'w'"):
        clip_update({"w": torch.tensor([1.0, math.inf])}, 1.0)
    with pytest.raises(FedarenaError, match="'steps' is torch.int64"):
        clip_update({"w": torch.ones(2), "steps": torch.tensor(3)}, 1.0)


# --- noise ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [SecureNoise(), _seeded(7)], ids=["secure", "seeded"])
def test_central_noise_std_is_z_times_clip(source: dp.NoiseSource) -> None:
    z, clip = 1.1, 0.7
    reference = {"w": torch.zeros(N_DRAWS, dtype=torch.float64)}
    noise = central_dp_mean(reference, [], clip, z, expected_clients=1.0, noise=source)["w"]
    assert float(noise.std()) == pytest.approx(z * clip, rel=STD_TOLERANCE)
    assert abs(float(noise.mean())) < 6 * z * clip / math.sqrt(N_DRAWS)
    assert stats.kstest(noise.numpy() / (z * clip), "norm").pvalue > 1e-6  # Gaussian shape, not just its std


@pytest.mark.parametrize("source", [SecureNoise(), _seeded(8)], ids=["secure", "seeded"])
def test_local_dp_noise_std_is_z_times_clip(source: dp.NoiseSource) -> None:
    z, clip = 0.9, 2.0
    noisy = local_dp({"w": torch.zeros(N_DRAWS)}, clip, z, source)["w"]
    assert noisy.dtype == torch.float32
    assert float(noisy.double().std()) == pytest.approx(z * clip, rel=STD_TOLERANCE)


def test_secure_noise_differs_across_calls_and_is_labelled() -> None:
    source = SecureNoise()
    a, b = source.normal(1000), source.normal(1000)
    assert not torch.equal(a, b)
    assert source.label == "os-secure"
    u = source.uniform(100_000)
    assert float(u.min()) > 0 and float(u.max()) < 1


def test_seeded_noise_reproducible_and_labelled_simulation_only() -> None:
    reference = {"w": torch.zeros(50), "b": torch.zeros(3)}
    update = [{"w": torch.ones(50), "b": torch.ones(3)}]
    first = central_dp_mean(reference, update, 1.0, 1.0, 5.0, _seeded(3))
    again = central_dp_mean(reference, update, 1.0, 1.0, 5.0, _seeded(3))
    other = central_dp_mean(reference, update, 1.0, 1.0, 5.0, _seeded(4))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["w"], other["w"])
    assert _seeded().label == "seeded (simulation only)"


# --- DP-FedAvg --------------------------------------------------------------------------------------------


def _models(n: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    reference = {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)}
    updates = [{k: v + torch.randn(v.shape, generator=g) for k, v in reference.items()} for _ in range(n)]
    return reference, updates


def test_no_noise_and_huge_clip_is_the_plain_sum_over_expected_clients() -> None:
    reference, updates = _models(3)
    out = central_dp_mean(reference, updates, clip=1e9, noise_multiplier=0.0, expected_clients=7.5, noise=_seeded())
    for k, v in reference.items():
        expected = v.double() + sum(u[k].double() - v.double() for u in updates) / 7.5
        torch.testing.assert_close(out[k], expected.float(), rtol=0, atol=1e-6)


def test_fixed_denominator_ignores_how_many_clients_showed_up() -> None:
    reference, updates = _models(4, seed=1)
    one = central_dp_mean(reference, updates[:1], 1e9, 0.0, 10.0, _seeded())
    four = central_dp_mean(reference, updates, 1e9, 0.0, 10.0, _seeded())
    torch.testing.assert_close(one["w"] - reference["w"], (updates[0]["w"] - reference["w"]) / 10, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        four["w"] - reference["w"], sum(u["w"] - reference["w"] for u in updates) / 10, rtol=0, atol=1e-6
    )
    # Nobody sampled: the model moves by the noise alone (still added), never by a division by zero.
    empty = central_dp_mean(reference, [], 1.0, 0.0, 10.0, _seeded())
    assert all(torch.equal(empty[k], reference[k]) for k in reference)
    noisy = central_dp_mean(reference, [], 1.0, 1.0, 10.0, _seeded())
    assert not torch.equal(noisy["w"], reference["w"])


def test_each_user_moves_the_mean_by_at_most_clip_over_expected_clients() -> None:
    reference, _ = _models(0)
    far = {k: v + 1e4 for k, v in reference.items()}
    out = central_dp_mean(reference, [far], clip=2.0, noise_multiplier=0.0, expected_clients=5.0, noise=_seeded())
    moved = flat_norm({k: out[k].double() - reference[k].double() for k in out})
    assert moved == pytest.approx(2.0 / 5.0, rel=1e-5)


def test_mismatched_updates_are_refused_with_the_key() -> None:
    reference, updates = _models(1)
    with pytest.raises(FedarenaError, match=r"missing \['b'\]"):
        central_dp_mean(reference, [{"w": updates[0]["w"]}], 1.0, 1.0, 2.0, _seeded())
    with pytest.raises(FedarenaError, match="'b' has shape"):
        central_dp_mean(reference, [{**updates[0], "b": torch.zeros(5)}], 1.0, 1.0, 2.0, _seeded())
    with pytest.raises(FedarenaError, match="expected_clients"):
        central_dp_mean(reference, updates, 1.0, 1.0, 0.0, _seeded())


# --- Skellam ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [SecureNoise(), _seeded(9)], ids=["secure", "seeded"])
def test_skellam_noise_is_integer_with_the_right_variance(source: dp.NoiseSource) -> None:
    # Var of the sample variance of Sk(0, v): v^2 (2/n + 1/(v n)) (excess kurtosis 1/v): 1% is > 6 std errors.
    variance = 40.0
    draws = skellam_noise(N_DRAWS, variance, source)
    assert draws.dtype == torch.int64
    assert float(draws.double().var()) == pytest.approx(variance, rel=0.01)
    assert abs(float(draws.double().mean())) < 6 * math.sqrt(variance / N_DRAWS)


def test_secure_poisson_matches_the_poisson_pmf() -> None:
    rate = 3.5
    draws = SecureNoise().poisson(rate, 200_000).numpy()
    ks = range(0, 13)
    observed = [int((draws == k).sum()) for k in ks] + [int((draws > 12).sum())]
    expected = [stats.poisson.pmf(k, rate) * len(draws) for k in ks] + [stats.poisson.sf(12, rate) * len(draws)]
    assert stats.chisquare(observed, expected).pvalue > 1e-6


def test_secure_poisson_large_rates_are_sums_of_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dp, "_TABLE_MAX_RATE", 10.0)
    draws = SecureNoise().poisson(35.0, 200_000).double()
    assert float(draws.mean()) == pytest.approx(35.0, rel=0.005)
    assert float(draws.var()) == pytest.approx(35.0, rel=0.02)


def test_skellam_shares_of_threshold_survivors_sum_to_the_target_variance() -> None:
    variance, threshold = 60.0, 6
    source = _seeded(11)
    total = sum(skellam_share(200_000, variance, threshold, source) for _ in range(threshold))
    assert float(total.double().var()) == pytest.approx(variance, rel=0.02)


def test_skellam_sensitivity_bounds() -> None:
    l2, l1 = skellam_sensitivity(clip=1.0, scale=100.0, dim=10_000, beta=0.0)
    assert l2 == 100.0 + 100.0 and l1 == min(100.0 * l2, l2**2)
    l2_beta, _ = skellam_sensitivity(clip=1.0, scale=100.0, dim=10_000)
    assert 100.0 < l2_beta < l2


def test_skellam_encode_respects_the_bound_and_decodes_to_the_mean() -> None:
    reference, updates = _models(5, seed=2)
    clip, scale, threshold = 3.0, 2.0**12, 4
    dim = sum(v.numel() for v in reference.values())
    l2, _ = skellam_sensitivity(clip, scale, dim)
    source = _seeded(5)
    encoded = [skellam_encode({k: u[k] - reference[k] for k in u}, clip, scale, source) for u in updates]
    assert all(e.dtype == torch.int64 and float(e.double().norm()) <= l2 for e in encoded)
    total = sum(encoded) + sum(skellam_share(dim, 0.0, threshold, source) for _ in range(threshold))
    out = skellam_mean(reference, total, scale, expected_clients=5.0)
    plain = central_dp_mean(reference, updates, clip, 0.0, 5.0, source)
    for k in reference:  # rounding moves each client's coordinate by < 1/scale
        torch.testing.assert_close(out[k], plain[k], rtol=0, atol=5 / (scale * 5.0) + 1e-6)
