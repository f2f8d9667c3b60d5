"""frame_peft.evaluation.intervals: bootstrap intervals checked against hand-computed values."""

from __future__ import annotations

import pytest

from frame_peft.evaluation.intervals import (
    bootstrap_ci,
    paired_difference,
    pooled_over_seeds,
    seed_summary,
    seeds_and_items,
)


def test_bootstrap_of_0001_matches_the_binomial_by_hand():
    # Resampling [0, 0, 0, 1]: the mean is k/4 with k ~ Binomial(4, 1/4), so
    # P(0) = .316, P(.25) = .422, P(.5) = .211, P(.75) = .047, P(1) = .004.
    # The 2.5 % quantile lies inside the atom at 0; the 97.5 % one (cdf .949 -> .996) at .75.
    ci = bootstrap_ci([0, 0, 0, 1], n_boot=4000, seed=0)
    assert (ci.estimate, ci.low, ci.high, ci.n) == (0.25, 0.0, 0.75, 4)
    assert not ci.excludes_zero


def test_bootstrap_is_deterministic_and_covers_the_mean():
    values = [0.1 * i for i in range(50)]
    a, b = bootstrap_ci(values, seed=3), bootstrap_ci(values, seed=3)
    assert a == b
    assert a.low < a.estimate < a.high
    # the standard error of the mean of 0..4.9 is ~0.204; a 95 % interval is ~ +-0.4
    assert 0.3 < a.half_width < 0.5


def test_paired_difference_of_identical_vectors_is_zero_width():
    x = [2.0, 1.5, 3.25, 0.5]
    d = paired_difference(x, x)
    assert (d.estimate, d.low, d.high) == (0.0, 0.0, 0.0)
    assert not d.excludes_zero


def test_paired_difference_sees_a_constant_shift_the_separate_intervals_miss():
    base = [float(i % 7) for i in range(60)]
    shifted = [v + 0.2 for v in base]
    d = paired_difference(shifted, base)
    assert d.excludes_zero and d.low == pytest.approx(0.2) and d.high == pytest.approx(0.2)
    lo = bootstrap_ci(shifted)
    hi = bootstrap_ci(base)
    assert lo.low < hi.high  # the unpaired intervals overlap


def test_pooled_over_seeds_averages_items_first():
    pooled = pooled_over_seeds([[0, 1, 1, 0], [1, 1, 0, 0]])
    assert pooled.estimate == 0.5
    assert pooled == bootstrap_ci([0.5, 1.0, 0.5, 0.0])


def test_seed_summary():
    s = seed_summary([1.0, 2.0, 3.0])
    assert (s.mean, s.std, s.min, s.max, s.n) == (2.0, 1.0, 1.0, 3.0, 3)
    assert seed_summary([4.0]).std == 0.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: bootstrap_ci([]), "empty"),
        (lambda: bootstrap_ci([1.0, float("nan")]), "non-finite"),
        (lambda: bootstrap_ci([1.0], level=95), "level"),
        (lambda: bootstrap_ci([1.0], n_boot=10), "n_boot"),
        (lambda: paired_difference([1.0, 2.0], [1.0]), "same items"),
        (lambda: pooled_over_seeds([[1.0, 2.0], [1.0]]), "same items"),
        (lambda: pooled_over_seeds([]), "at least one"),
    ],
)
def test_bad_input_is_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_seeds_and_items_with_one_seed_is_the_item_bootstrap():
    row = [0.1 * (i % 9) for i in range(40)]
    assert seeds_and_items([row], seed=5) == bootstrap_ci(row, seed=5)


def test_seeds_and_items_sees_the_seed_spread_that_items_alone_miss():
    # Two seeds that disagree on every item by the same amount: averaged over seeds the items
    # are all 0.5 (an item-only interval of zero width); resampling the seeds gives a mean of
    # 0 (both draws seed 0, p = 1/4), 0.5 (p = 1/2) or 1 (p = 1/4): the 95 % interval is [0, 1].
    table = [[0.0] * 6, [1.0] * 6]
    pooled = pooled_over_seeds(table)
    assert (pooled.low, pooled.high) == (0.5, 0.5) and pooled.excludes_zero
    both = seeds_and_items(table, n_boot=4000)
    assert (both.estimate, both.low, both.high, both.n) == (0.5, 0.0, 1.0, 6)
    assert not both.excludes_zero


def test_seeds_and_items_matches_a_loop_over_draws():
    import numpy as np

    table = np.array(
        [[0.3, 1.2, 0.7, 2.0, 0.1], [0.5, 0.9, 1.1, 1.4, 0.0], [0.2, 1.0, 0.8, 2.2, 0.4]]
    )
    got = seeds_and_items(table.tolist(), n_boot=300, seed=2)
    rng = np.random.default_rng(2)
    items = rng.integers(0, 5, size=(300, 5))
    seeds = rng.integers(0, 3, size=(300, 3))
    means = [table[np.ix_(seeds[b], items[b])].mean() for b in range(300)]
    low, high = np.quantile(means, [0.025, 0.975])
    assert got.low == pytest.approx(low) and got.high == pytest.approx(high)
    assert got.estimate == pytest.approx(table.mean())


def test_seeds_and_items_refuses_ragged_or_empty_tables():
    with pytest.raises(ValueError, match="same items"):
        seeds_and_items([[1.0, 2.0], [1.0]])
    with pytest.raises(ValueError, match="at least one"):
        seeds_and_items([])
