"""core.robust: each rule on hand-computed cases, check's refusals, translation equivariance, agreement with a
naive per-coordinate reference, and robustness to one huge outlier."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedarena.core import robust
from fedarena.core.params import weighted_mean
from fedarena.core.rng import torch_rng
from fedarena.core.robust import AGGREGATORS, RobustRule, aggregate, check, krum_scores, squared_distances
from fedarena.core.types import FedarenaError

F32, F64 = torch.float32, torch.float64


def ups(rows: list[list[float]], key: str = "w", dtype: torch.dtype = F32) -> list[dict[str, torch.Tensor]]:
    return [{key: torch.tensor(r, dtype=dtype)} for r in rows]


FIVE = [[1, 10, -3], [2, 20, 5], [3, -7, 0], [100, 0, 1], [-50, 4, 2]]  # five 1-D uploads of 3 coordinates
ZERO3 = {"w": torch.zeros(3)}


# ---------------------------------------------------------------- mean


def test_mean_is_weighted_mean_bit_for_bit():
    g = torch_rng(0, "test-robust-mean")
    uploads = [{"a": torch.randn(4, 3, generator=g), "b": torch.randn(5, generator=g, dtype=F64),
                "n": torch.tensor(7 + i)} for i in range(6)]
    weights = [3, 1, 4, 1, 5, 9]
    got = aggregate(RobustRule("mean"), uploads, weights, uploads[0])
    want = weighted_mean(uploads, weights)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) and got[k].dtype == want[k].dtype for k in want)


# ---------------------------------------------------------------- median and trimmed mean


def test_median_of_five_known_uploads():
    # coordinate 0 sorted: -50 1 2 3 100 -> 2; coordinate 1: -7 0 4 10 20 -> 4; coordinate 2: -3 0 1 2 5 -> 1
    got = aggregate(RobustRule("median"), ups(FIVE), [1] * 5, ZERO3)["w"]
    assert got.dtype == F32 and got.tolist() == [2.0, 4.0, 1.0]


def test_median_of_an_even_count_is_the_mean_of_the_two_middle_values():
    # without the fifth upload: 1 2 3 100 -> 2.5; -7 0 10 20 -> 5; -3 0 1 5 -> 0.5 (torch.median would say 2, 0, 0)
    got = aggregate(RobustRule("median"), ups(FIVE[:4]), [1] * 4, ZERO3)["w"]
    assert got.tolist() == [2.5, 5.0, 0.5]


def test_median_ignores_the_weights():
    assert aggregate(RobustRule("median"), ups(FIVE), [1000, 1, 1, 1, 1], ZERO3)["w"].tolist() == [2.0, 4.0, 1.0]


def test_trimmed_mean_drops_one_at_each_end():
    # beta = 0.2, n = 5: floor(1.0) = 1 dropped per end: (1+2+3)/3 = 2, (0+4+10)/3 = 14/3, (0+1+2)/3 = 1
    got = aggregate(RobustRule("trimmed-mean", f=1, beta=0.2), ups(FIVE), [1] * 5, ZERO3)["w"]
    assert got.tolist() == [2.0, torch.tensor(14 / 3, dtype=F32).item(), 1.0]


def test_trimmed_mean_with_beta_zero_is_the_unweighted_mean():
    got = aggregate(RobustRule("trimmed-mean", beta=0.0), ups(FIVE, dtype=F64), [1, 2, 3, 4, 5], ZERO3)["w"]
    assert got.tolist() == pytest.approx([56 / 5, 27 / 5, 5 / 5], rel=1e-15)


def test_trimmed_count_rounds_beta_times_n_before_the_floor():
    # 0.29 * 100 = 28.999999999999996 in floats; 29 are trimmed, so f = 29 is accepted and f = 30 refused
    check(RobustRule("trimmed-mean", f=29, beta=0.29), 100)
    with pytest.raises(FedarenaError, match=r"floor\(beta \* n\) = 29 uploads"):
        check(RobustRule("trimmed-mean", f=30, beta=0.29), 100)


# ---------------------------------------------------------------- krum and multi-krum

# Points (a, b) on two keys, so distances run over the concatenation: p0 (0, 0), p1 (1, 0), p2 (0, 2), p3 (1, 1.5),
# p4 (50, 50). Squared distances: p0-p1 1, p0-p2 4, p0-p3 3.25, p1-p2 5, p1-p3 2.25, p2-p3 1.25,
# p4-p0 5000, p4-p1 4901, p4-p2 4804, p4-p3 4753.25. With f = 1 each score sums the n - f - 2 = 2 smallest:
# p0 1 + 3.25 = 4.25, p1 1 + 2.25 = 3.25, p2 1.25 + 4 = 5.25, p3 1.25 + 2.25 = 3.5, p4 4753.25 + 4804 = 9557.25.
PTS = [(0, 0), (1, 0), (0, 2), (1, 1.5), (50, 50)]
PT_UPLOADS = [{"a": torch.tensor([a], dtype=F64), "b": torch.tensor([b], dtype=F64)} for a, b in PTS]
PT_CENTER = {"a": torch.tensor([7.0], dtype=F64), "b": torch.tensor([-3.0], dtype=F64)}  # any center: distances


def test_krum_scores_by_hand():
    dist = squared_distances(PT_UPLOADS, PT_CENTER, ["a", "b"])
    assert dist[0].tolist() == [0, 1, 4, 3.25, 5000]
    assert dist[4].tolist() == [5000, 4901, 4804, 4753.25, 0]
    assert krum_scores(dist, 1).tolist() == [4.25, 3.25, 5.25, 3.5, 9557.25]


def test_krum_picks_the_least_score():
    got = aggregate(RobustRule("krum", f=1), PT_UPLOADS, [1, 1, 1, 1, 1000], PT_CENTER)
    assert got["a"].tolist() == [1.0] and got["b"].tolist() == [0.0]  # p1


def test_krum_tie_goes_to_the_lowest_index():
    # 1-D 0, 1, 3, 4, 100, f = 1, 2 closest: scores 1+9 = 10, 1+4 = 5, 1+4 = 5, 1+9 = 10, 96^2 + 97^2; p1 and p2 tie
    got = aggregate(RobustRule("krum", f=1), ups([[0], [1], [3], [4], [100]]), [1] * 5, {"w": torch.zeros(1)})
    assert got["w"].tolist() == [1.0]


def test_multi_krum_averages_the_m_best_with_their_weights():
    weights = [1, 2, 3, 4, 100]
    # default m = n - f = 4: p0..p3 with weights 1..4: a = (2 + 4) / 10 = 0.6, b = (3 * 2 + 4 * 1.5) / 10 = 1.2
    got = aggregate(RobustRule("multi-krum", f=1), PT_UPLOADS, weights, PT_CENTER)
    assert (got["a"].item(), got["b"].item()) == pytest.approx((0.6, 1.2), rel=1e-15)
    # m = 2: p1 (weight 2) and p3 (weight 4): a = (2 + 4) / 6 = 1, b = (4 * 1.5) / 6 = 1
    got = aggregate(RobustRule("multi-krum", f=1, m=2), PT_UPLOADS, weights, PT_CENTER)
    assert (got["a"].item(), got["b"].item()) == pytest.approx((1.0, 1.0), rel=1e-15)


def test_multi_krum_of_all_uploads_is_the_mean_bit_for_bit():
    g = torch_rng(1, "test-robust-mkrum")
    uploads = [{"w": torch.randn(3, 4, generator=g), "n": torch.tensor(i)} for i in range(5)]
    weights = [5, 1, 2, 8, 3]
    got = aggregate(RobustRule("multi-krum", f=1, m=5), uploads, weights, uploads[0])
    want = weighted_mean(uploads, weights)
    assert all(torch.equal(got[k], want[k]) for k in want)


# ---------------------------------------------------------------- bulyan


def test_bulyan_by_hand_seven_uploads_one_attacker():
    # n = 7 = 4f + 3 with f = 1: theta = 5 selected by Krum, then beta = 3 closest to the median, averaged.
    # 1-D values 0 2 3 7 8 9 50 (indices 0..6).
    # r=7, 4 closest: 0:4+9+49+64=126  2:1+4+25+36=66  3:1+9+16+25=51  7:1+4+16+25=46  8:63  9:90  50:7503 -> 7
    # r=6, 3 closest: 0:4+9+64=77  2:1+4+36=41  3:1+9+25=35  8:1+25+36=62  9:1+36+49=86  50:... -> 3
    # r=5, 2 closest: 0:4+64=68  2:4+36=40  8:1+36=37  9:1+49=50  50:41^2+42^2 -> 8
    # r=4, 1 closest: 0:4  2:4  9:49  50:1681 -> tie, lowest index: 0
    # r=3, 1 closest: 2:49  9:49  50:1681 -> tie: 2
    # selected 0 2 3 7 8, median 3, distances to it 3 1 0 4 5: the 3 closest are 3, 2, 0 -> 5/3
    rows = [[0], [2], [3], [7], [8], [9], [50]]
    got = aggregate(RobustRule("bulyan", f=1), ups(rows, dtype=F64), [1] * 7, {"w": torch.zeros(1, dtype=F64)})
    assert got["w"].item() == pytest.approx(5 / 3, rel=1e-15)


# ---------------------------------------------------------------- centered clip


CC_UPLOADS = ups([[3, 4], [0, 1], [-6, 8]], dtype=F64)  # norms 5, 1, 10 around the zero center


def test_centered_clip_one_clipped_step_by_hand():
    # tau = 2: (3,4) * 2/5 = (1.2, 1.6); (0,1) kept; (-6,8) * 2/10 = (-1.2, 1.6); v = (0, 4.2) / 3 = (0, 1.4)
    got = aggregate(RobustRule("centered-clip", f=1, tau=2.0), CC_UPLOADS, [1, 1, 1], {"w": torch.zeros(2, dtype=F64)})
    assert got["w"].tolist() == pytest.approx([0.0, 1.4], abs=1e-15)


def test_centered_clip_iterates_from_the_center():
    # center (0, 1): differences (3,3) norm 3 sqrt 2, (0,0), (-6,7) norm sqrt 85; tau = 1
    center = {"w": torch.tensor([0.0, 1.0], dtype=F64)}
    step1 = [0 + (3 / math.sqrt(18) - 6 / math.sqrt(85)) / 3, 1 + (3 / math.sqrt(18) + 7 / math.sqrt(85)) / 3]
    got = aggregate(RobustRule("centered-clip", f=1, tau=1.0), CC_UPLOADS, [1, 1, 1], center)["w"]
    assert got.tolist() == pytest.approx(step1, rel=1e-14)
    # a second iteration clips around step1
    v = torch.tensor(step1, dtype=F64)
    diffs = [torch.tensor(r, dtype=F64) - v for r in ([3, 4], [0, 1], [-6, 8])]
    step2 = v + sum(d * min(1.0, 1.0 / d.norm().item()) for d in diffs) / 3
    got = aggregate(RobustRule("centered-clip", f=1, tau=1.0, iterations=2), CC_UPLOADS, [1, 1, 1], center)["w"]
    assert got.tolist() == pytest.approx(step2.tolist(), rel=1e-14)


def test_centered_clip_with_a_huge_tau_is_the_unweighted_mean():
    got = aggregate(RobustRule("centered-clip", tau=1e12), CC_UPLOADS, [100, 1, 1], {"w": torch.zeros(2, dtype=F64)})
    assert got["w"].tolist() == pytest.approx([-1.0, 13 / 3], rel=1e-15)


# ---------------------------------------------------------------- check's refusals


@pytest.mark.parametrize(("rule", "n", "message"), [
    (RobustRule("krum", f=2), 5, "krum tolerates f=2 attackers only with at least 7 clients per round (n >= 2f + 3), got 5"),
    (RobustRule("multi-krum", f=1), 4,
     "multi-krum tolerates f=1 attackers only with at least 5 clients per round (n >= 2f + 3), got 4"),
    (RobustRule("bulyan", f=1), 6, "bulyan tolerates f=1 attackers only with at least 7 clients per round (n >= 4f + 3), got 6"),
    (RobustRule("median", f=2), 4, "median tolerates f=2 attackers only with at least 5 clients per round (n >= 2f + 1), got 4"),
    (RobustRule("centered-clip", f=3), 6,
     "centered-clip tolerates f=3 attackers only with at least 7 clients per round (n >= 2f + 1), got 6"),
    (RobustRule("trimmed-mean", f=2, beta=0.2), 5,
     "trimmed-mean with beta=0.2 trims floor(beta * n) = 1 uploads at each end of n=5, fewer than f=2 attackers "
     "(Yin et al. 2018 need floor(beta * n) >= f); raise beta or the clients per round"),
    (RobustRule("multi-krum", f=1, m=8), 7, "multi-krum averages m=8 uploads, which needs 1 <= m <= n=7"),
    (RobustRule("mean"), 0, "mean needs at least one upload per round, got 0"),
])
def test_check_refuses_with_the_condition(rule, n, message):
    with pytest.raises(FedarenaError) as err:
        check(rule, n)
    assert str(err.value) == message


@pytest.mark.parametrize(("rule", "n"), [
    (RobustRule("krum", f=2), 7), (RobustRule("bulyan", f=1), 7), (RobustRule("median", f=2), 5),
    (RobustRule("trimmed-mean", f=4, beta=0.2), 20), (RobustRule("mean", f=5), 3), (RobustRule("multi-krum", f=1), 5),
])
def test_check_accepts_the_boundary(rule, n):
    check(rule, n)


def test_aggregate_checks_first():
    with pytest.raises(FedarenaError, match="got 5$"):
        aggregate(RobustRule("krum", f=2), ups(FIVE), [1] * 5, ZERO3)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "geomed"}, "unknown aggregator 'geomed'; choose one of mean, median, trimmed-mean, krum"),
    ({"f": -1}, "f must be an integer >= 0, got -1"),
    ({"beta": 0.5}, r"beta must be in \[0, 0.5\)"),
    ({"m": 0}, "m \\(uploads averaged\\) must be an integer >= 1, got 0"),
    ({"tau": 0.0}, "tau \\(clipping radius\\) must be a finite number > 0, got 0.0"),
    ({"iterations": 0}, "iterations must be an integer >= 1, got 0"),
])
def test_bad_hyperparameters_are_refused(kwargs, match):
    with pytest.raises(FedarenaError, match=match):
        RobustRule(**kwargs)


@pytest.mark.parametrize(("uploads", "weights", "center", "match"), [
    (ups(FIVE), [1] * 4, ZERO3, "5 uploads but 4 weights"),
    (ups(FIVE), [1, 1, -1, 1, 1], ZERO3, "weights .* must be finite, >= 0"),
    (ups(FIVE), [0] * 5, ZERO3, "not all 0"),
    (ups(FIVE[:4]) + ups([[1, 2]]), [1] * 5, ZERO3,
     r"upload 4's 'w' is torch.float32 \(2,\), upload 0's is torch.float32 \(3,\)"),
    (ups(FIVE[:4]) + ups([[1, 2, 3]], key="v"), [1] * 5, ZERO3, "upload 4 has keys"),
    (ups(FIVE), [1] * 5, {}, "the broadcast center must hold 'w' of shape"),
])
def test_bad_uploads_are_refused(uploads, weights, center, match):
    with pytest.raises(FedarenaError, match=match):
        aggregate(RobustRule("krum", f=1), uploads, weights, center)


# ---------------------------------------------------------------- keys, dtypes, inputs


@pytest.mark.parametrize("name", AGGREGATORS)
def test_dtypes_keys_and_integer_buffers(name):
    g = torch_rng(2, "test-robust-dtypes")
    uploads = [{"h": torch.randn(3, generator=g).to(torch.float16), "n": torch.tensor(3 + i), "x": torch.randn(2, 2, generator=g),
                "d": torch.randn(1, generator=g, dtype=F64)} for i in range(7)]
    before = [{k: v.clone() for k, v in up.items()} for up in uploads]
    weights = [1, 2, 1, 2, 1, 2, 1]
    got = aggregate(RobustRule(name, f=1), uploads, weights, uploads[3])
    assert list(got) == ["h", "n", "x", "d"]
    assert [got[k].dtype for k in got] == [torch.float16, torch.int64, F32, F64]
    # the integer counter is weighted_mean's: (3+8+5+12+7+16+9) / 10 = 6.0
    assert got["n"].item() == 6 and torch.equal(got["n"], weighted_mean(uploads, weights)["n"])
    assert all(torch.equal(up[k], b[k]) for up, b in zip(uploads, before) for k in up)


def test_krum_returns_the_chosen_uploads_own_values():
    g = torch_rng(3, "test-robust-krum-own")
    uploads = [{"w": torch.randn(10, generator=g)} for _ in range(5)]
    got = aggregate(RobustRule("krum", f=1), uploads, [1] * 5, uploads[0])
    assert any(torch.equal(got["w"], up["w"]) for up in uploads)


def test_non_finite_uploads():
    rows = [[0.0], [1.0], [2.0], [math.nan], [3.0]]
    assert aggregate(RobustRule("krum", f=1), ups(rows), [1] * 5, {"w": torch.zeros(1)})["w"].tolist() == [1.0]
    # NaN sorts above +Inf: the median of 0 1 2 3 NaN is 2, the 1-trimmed mean (1 + 2 + 3) / 3 = 2
    assert aggregate(RobustRule("median", f=1), ups(rows), [1] * 5, {"w": torch.zeros(1)})["w"].tolist() == [2.0]
    assert aggregate(RobustRule("trimmed-mean", f=1), ups(rows), [1] * 5, {"w": torch.zeros(1)})["w"].tolist() == [2.0]
    # centered-clip: the NaN client contributes nothing: (0 + 1 + 2 + 3) / 5 with tau huge
    got = aggregate(RobustRule("centered-clip", f=1, tau=1e9), ups(rows), [1] * 5, {"w": torch.zeros(1)})["w"]
    assert got.tolist() == pytest.approx([6 / 5])


# ---------------------------------------------------------------- robustness


@pytest.mark.parametrize("name", ["median", "trimmed-mean", "krum", "multi-krum", "bulyan", "centered-clip"])
def test_one_huge_outlier_moves_a_robust_rule_less_than_the_mean(name):
    g = torch_rng(4, "test-robust-outlier")
    honest = [{"w": 1.0 + 0.1 * torch.randn(50, generator=g)} for _ in range(6)]
    outlier = [{"w": torch.full((50,), 1e6)}]
    center = {"w": torch.ones(50)}
    rule = RobustRule(name, f=1, beta=0.2, tau=1.0)
    clean = aggregate(RobustRule("mean"), honest, [1] * 6, center)["w"]
    moved_mean = (aggregate(RobustRule("mean"), honest + outlier, [1] * 7, center)["w"] - clean).norm().item()
    moved = (aggregate(rule, honest + outlier, [1] * 7, center)["w"] - clean).norm().item()
    assert moved_mean > 1e6  # (1e6 - 1) / 7 per coordinate, over 50 coordinates
    assert moved < 1.0  # every robust rule stays within the honest spread (centered-clip: at most tau / 7 from it)


# ---------------------------------------------------------------- properties

RULES = [RobustRule("mean"), RobustRule("median", f=1), RobustRule("trimmed-mean", f=1, beta=0.25),
         RobustRule("krum", f=1), RobustRule("multi-krum", f=1), RobustRule("multi-krum", f=1, m=2),
         RobustRule("bulyan", f=1), RobustRule("centered-clip", f=1, tau=3.0, iterations=3)]


@st.composite
def integer_uploads(draw, least: int = 7):
    n = draw(st.integers(least, 9))
    size = draw(st.integers(1, 4))
    ints = st.lists(st.integers(-20, 20), min_size=size, max_size=size)
    rows = draw(st.lists(ints, min_size=n, max_size=n))
    weights = draw(st.lists(st.integers(1, 5), min_size=n, max_size=n))
    shift = draw(ints)
    center = draw(ints)
    return rows, weights, shift, center


@settings(max_examples=300, deadline=None)
@given(rule=st.sampled_from(RULES), case=integer_uploads())
def test_translation_equivariance(rule, case):
    # integer-valued float64 inputs keep distances exact, so the same uploads are selected after the shift
    rows, weights, shift, center = case
    c = torch.tensor(shift, dtype=F64)
    base = aggregate(rule, ups(rows, dtype=F64), weights, {"w": torch.tensor(center, dtype=F64)})["w"]
    moved = aggregate(rule, [{"w": up["w"] + c} for up in ups(rows, dtype=F64)], weights,
                      {"w": torch.tensor(center, dtype=F64) + c})["w"]
    torch.testing.assert_close(moved, base + c, rtol=0, atol=1e-9)


def _naive(rule: RobustRule, rows: list[list[float]], weights: list[int]) -> list[float]:
    """Plain-Python reference: per coordinate for median/trimmed-mean/bulyan's last step, pairwise loops for Krum."""
    n, f = len(rows), rule.f

    def med(xs: list[float]) -> float:
        s = sorted(xs)
        return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2

    def d2(i: int, j: int) -> float:
        return sum((a - b) ** 2 for a, b in zip(rows[i], rows[j]))

    def scores(idx: list[int]) -> list[float]:
        k = min(max(1, len(idx) - f - 2), len(idx) - 1)
        return [sum(sorted(d2(i, j) for j in idx if j != i)[:k]) for i in idx]

    cols = range(len(rows[0]))
    if rule.name == "median":
        return [med([r[c] for r in rows]) for c in cols]
    if rule.name == "trimmed-mean":
        b = math.floor(rule.beta * n)
        return [sum(sorted(r[c] for r in rows)[b:n - b]) / (n - 2 * b) for c in cols]
    if rule.name in ("krum", "multi-krum"):
        sc = scores(list(range(n)))
        order = sorted(range(n), key=lambda i: (sc[i], i))
        chosen = order[:1] if rule.name == "krum" else order[:rule.m or n - f]
        total = sum(weights[i] for i in chosen)
        return [sum(weights[i] * rows[i][c] for i in chosen) / total for c in cols]
    remaining, chosen = list(range(n)), []
    for _ in range(n - 2 * f):
        sc = scores(remaining)
        best = min(range(len(remaining)), key=lambda i: (sc[i], i))
        chosen.append(remaining.pop(best))
    chosen.sort()
    out = []
    for c in cols:
        vals = [rows[i][c] for i in chosen]
        m = med(vals)
        near = sorted(range(len(vals)), key=lambda i: (abs(vals[i] - m), i))[:len(chosen) - 2 * f]
        out.append(sum(vals[i] for i in near) / len(near))
    return out


@settings(max_examples=200, deadline=None)
@given(rule=st.sampled_from([r for r in RULES if r.name in ("median", "trimmed-mean", "krum", "multi-krum", "bulyan")]),
       case=integer_uploads())
def test_agrees_with_a_naive_reference(rule, case):
    rows, weights, _, _ = case
    got = aggregate(rule, ups(rows, dtype=F64), weights, {"w": torch.zeros(len(rows[0]), dtype=F64)})["w"]
    assert got.tolist() == pytest.approx(_naive(rule, rows, weights), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_column_blocks_give_the_same_result(rule, monkeypatch):
    # 7 uploads of 13 + 6 values: with BLOCK = 21 every key is cut into blocks of 3 columns (the last one shorter)
    g = torch_rng(5, "test-robust-blocks")
    uploads = [{"a": torch.randn(13, generator=g, dtype=F64), "b": torch.randn(2, 3, generator=g, dtype=F64)} for _ in range(7)]
    center = {k: v + 0.5 for k, v in uploads[0].items()}
    whole = aggregate(rule, uploads, [1, 2, 3, 4, 5, 6, 7], center)
    monkeypatch.setattr(robust, "BLOCK", 21)
    blocked = aggregate(rule, uploads, [1, 2, 3, 4, 5, 6, 7], center)
    for k in whole:
        torch.testing.assert_close(blocked[k], whole[k], rtol=1e-13, atol=1e-13)
