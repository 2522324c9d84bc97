"""The demo's statistics (cord.mini.stats): paired differences, the nested bootstrap
interval against independent computations, and the conclusion rule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cord import CordError
from cord.mini.stats import CONCLUSIONS, bootstrap_mean, conclusion, paired_matrix


def test_paired_matrix_is_item_by_item_and_refuses_missing_items():
    ids = ["a", "b", "c"]
    arm = [{"a": True, "b": False, "c": True}, {"a": True, "b": True, "c": False}]
    ref = [{"a": False, "b": False, "c": True}]  # one reference row (the Stage B model): broadcast
    m = paired_matrix(arm, ref, ids)
    assert m.tolist() == [[1, 0, 0], [1, 1, -1]]
    # per-seed references pair seed k with seed k
    m2 = paired_matrix(arm, [ref[0], {"a": True, "b": True, "c": True}], ids)
    assert m2.tolist() == [[1, 0, 0], [0, 0, -1]]
    with pytest.raises(CordError, match="no outcome for 1 item"):
        paired_matrix(arm, [{"a": True, "b": True}], ids)
    with pytest.raises(CordError, match="2 arm seed"):
        paired_matrix(arm, [ref[0]] * 3, ids)


def _exact_bootstrap_distribution(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every equally likely resample of ``d`` (n^n ordered draws): values and weights."""
    n = len(d)
    values = np.array([d[list(idx)].mean() for idx in itertools.product(range(n), repeat=n)])
    return values, np.full(values.shape, 1.0 / values.size)


def _weighted_percentile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values, kind="stable")
    cdf = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cdf, q / 100.0)])


def test_bootstrap_matches_the_exact_bootstrap_distribution_of_a_small_case():
    # 6 items, one seed, one start: the bootstrap distribution can be enumerated (6^6 draws)
    d = np.array([1.0, 0.0, 1.0, -1.0, 1.0, 0.0])
    values, weights = _exact_bootstrap_distribution(d)
    exact_sd = float(np.sqrt(np.sum(weights * (values - values.mean()) ** 2)))
    got = bootstrap_mean([d[None, :]], replicates=40_000, seed=3)
    assert got["mean"] == pytest.approx(100 * d.mean())
    # the exact bootstrap sd is sd(d)/sqrt(n) (population sd): Monte Carlo within 2 %
    assert exact_sd == pytest.approx(d.std() / np.sqrt(len(d)))
    assert got["se"] == pytest.approx(100 * exact_sd, rel=0.02)
    # percentiles of a discrete distribution: within one atom (1/6 of a point... of the mean)
    lo, hi = _weighted_percentile(values, weights, 2.5), _weighted_percentile(values, weights, 97.5)
    assert got["ci95"][0] == pytest.approx(100 * lo, abs=100 / 6 + 1e-9)
    assert got["ci95"][1] == pytest.approx(100 * hi, abs=100 / 6 + 1e-9)


def test_bootstrap_interval_matches_the_normal_approximation_for_many_items():
    rng = np.random.default_rng(0)
    n = 1200
    d = (rng.random(n) < 0.72).astype(float) - (rng.random(n) < 0.66).astype(float)
    got = bootstrap_mean([d[None, :]])
    se = d.std(ddof=1) / np.sqrt(n)
    assert got["se"] == pytest.approx(100 * se, rel=0.05)
    assert got["ci95"][0] == pytest.approx(100 * (d.mean() - 1.96 * se), abs=0.3)
    assert got["ci95"][1] == pytest.approx(100 * (d.mean() + 1.96 * se), abs=0.3)
    assert bootstrap_mean([d[None, :]]) == got  # seeded: the same interval every time
    assert bootstrap_mean([d[None, :]], seed=1) != got


def test_bootstrap_resamples_starts_and_seeds_not_only_items():
    # three starts whose effects differ (+2, +10, +18 points), identical within a start:
    # items alone would give a zero-width interval; the start level must show the spread
    n = 400
    starts = [np.full((2, n), v) for v in (0.02, 0.10, 0.18)]
    got = bootstrap_mean(starts, replicates=20_000)
    assert got["mean"] == pytest.approx(10.0)
    # the exact distribution of the mean of 3 draws from {2, 10, 18}: sd = 6.53 / sqrt(3)
    assert got["se"] == pytest.approx(np.std([2, 10, 18]) / np.sqrt(3), rel=0.03)
    assert got["ci95"][0] < 5 and got["ci95"][1] > 15
    # seeds: one seed at +10, one at −10 points on every item: the interval must cover both signs
    seeds = np.stack([np.full(n, 0.1), np.full(n, -0.1)])
    one = bootstrap_mean([seeds])
    assert one["mean"] == pytest.approx(0.0) and one["ci95"][0] <= -9.9 and one["ci95"][1] >= 9.9


def _naive_nested_bootstrap(starts: list[np.ndarray], replicates: int, seed: int) -> np.ndarray:
    """The nested bootstrap written out draw by draw: starts, then seeds and items."""
    rng = np.random.default_rng(seed)
    out = np.empty(replicates)
    for b in range(replicates):
        picked = rng.integers(0, len(starts), len(starts))
        vals = []
        for s in picked:
            m = starts[s]
            k, n = m.shape
            seeds, items = rng.integers(0, k, k), rng.integers(0, n, n)
            vals.append(m[seeds][:, items].mean())
        out[b] = np.mean(vals)
    return 100 * out


def test_bootstrap_distribution_matches_a_draw_by_draw_implementation():
    rng = np.random.default_rng(5)
    starts = []
    for shift in (0.0, 0.05, 0.12):
        a = (rng.random((3, 300)) < 0.6 + shift).astype(float)
        c = (rng.random((3, 300)) < 0.6).astype(float)
        starts.append(a - c)
    naive = _naive_nested_bootstrap(starts, 3000, seed=1)
    fast = bootstrap_mean(starts, replicates=20_000, seed=2)
    assert fast["mean"] == pytest.approx(100 * np.mean([m.mean() for m in starts]))
    assert fast["se"] == pytest.approx(naive.std(ddof=1), rel=0.08)
    lo, hi = np.percentile(naive, [2.5, 97.5])
    assert fast["ci95"][0] == pytest.approx(lo, abs=0.6)
    assert fast["ci95"][1] == pytest.approx(hi, abs=0.6)
    # one start, several seeds: the same agreement without the start level
    naive1 = _naive_nested_bootstrap(starts[:1], 3000, seed=3)
    fast1 = bootstrap_mean(starts[:1], replicates=20_000, seed=4)
    assert fast1["se"] == pytest.approx(naive1.std(ddof=1), rel=0.08)


def test_bootstrap_refuses_empty_input():
    with pytest.raises(CordError):
        bootstrap_mean([])
    with pytest.raises(CordError):
        bootstrap_mean([np.zeros((1, 0))])


@pytest.mark.parametrize("ci,expected", [
    ([0.1, 4.0], "cord_beats_control"),
    ([-3.0, -0.2], "cord_worse_than_control"),
    ([-1.0, 2.0], "no_clear_difference"),
    ([0.0, 2.0], "no_clear_difference"),  # touching zero is not excluding it
])
def test_conclusion_is_read_off_the_interval(ci, expected):
    assert conclusion({"mean": sum(ci) / 2, "ci95": ci}) == expected
    assert expected in CONCLUSIONS


@pytest.mark.parametrize("mean,ci,expected", [
    (2.0, (0.4, 3.6), "cord_beats_control"),          # wholly above 0, even inside the margin
    (5.0, (1.0, 9.0), "cord_beats_control"),
    (-2.0, (-3.9, -0.1), "cord_worse_than_control"),
    (0.5, (-1.5, 2.5), "equivalent"),                  # holds 0, inside ±3
    (0.0, (-2.99, 2.99), "equivalent"),
    (0.0, (-3.0, 2.0), "inconclusive"),                # touches the margin: not inside it
    (1.0, (-2.0, 4.0), "inconclusive"),
    (0.0, (0.0, 0.0), "equivalent"),                   # a degenerate interval at 0
])
def test_primary_outcome_follows_the_preregistered_rule(mean, ci, expected):
    from cord.mini.stats import primary_outcome

    assert primary_outcome(mean, ci, margin=3.0) == expected


def test_primary_outcome_refuses_a_mean_outside_its_interval():
    from cord import CordError
    from cord.mini.stats import primary_outcome

    with pytest.raises(CordError, match="outside its interval"):
        primary_outcome(4.0, (-1.0, 2.0), margin=3.0)


def test_mde_is_the_80_percent_power_effect_of_a_two_sided_5_percent_test():
    from scipy.stats import norm

    from cord.mini.stats import mde

    se = 1.3
    effect = mde(se)
    assert effect == pytest.approx((norm.ppf(0.975) + norm.ppf(0.8)) * se, rel=1e-5)
    # a true effect of mde: the estimate ~ N(mde, se) exceeds 1.96 se with probability 0.80
    assert 1 - norm.cdf(norm.ppf(0.975) * se, loc=effect, scale=se) == pytest.approx(0.80, abs=1e-4)
