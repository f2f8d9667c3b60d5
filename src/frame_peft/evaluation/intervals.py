"""Confidence intervals for per-item evaluation scores: bootstrap, paired differences, seeds.

An evaluation gives one number per held-out item (answer negative log-likelihood, 0/1
correctness). Two questions need intervals, not just means:

* how precisely is a method's mean known from ``n`` items? The **percentile bootstrap**: draw
  ``n`` items with replacement ``n_boot`` times (``numpy.random.default_rng(seed)``), take the
  mean of each draw, and report the ``(1 - level)/2`` and ``(1 + level)/2`` quantiles of those
  means (numpy's default linear interpolation) around the plain mean;
* is method A better than method B on the *same* items? The **paired difference**: the bootstrap
  of the per-item differences ``a_i - b_i``, which removes the item-to-item variance both share
  (far tighter than comparing two separate intervals). The difference is significant at
  ``level`` when its interval excludes 0.

Training seeds are a second source of variance. :func:`seed_summary` reports mean, sample
standard deviation, min and max of a per-seed statistic; :func:`pooled_over_seeds` averages each
item over the seeds first (items aligned across seeds) and bootstraps over items, so the interval
covers item sampling for the seed-averaged model. Both are reported: the seed spread says how
much a rerun moves the number, the item interval how much a new draw of test items would.
:func:`seeds_and_items` covers both at once: a **two-level bootstrap** of an (S seeds × N items)
table of scores on the same items (a crossed design) draws S seeds with replacement and N items
with replacement, takes the mean of that sub-table, and reports the percentile interval. A
difference between training methods is only called significant when this interval excludes 0:
with few seeds an item-only interval is overconfident whenever reruns disagree. (With S seeds the
bootstrap's seed variance is ``(S - 1)/S`` of the sample's, so 3 seeds still understate it a
little; the per-seed spread is reported beside it.)

Everything is deterministic in ``seed``; the same inputs give the same bounds on any machine
(numpy's PCG64). Pure numpy, no model code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "Interval",
    "SeedSummary",
    "bootstrap_ci",
    "paired_difference",
    "pooled_over_seeds",
    "seed_summary",
    "seeds_and_items",
]

DEFAULT_BOOT = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval ``[low, high]`` over ``n`` items."""

    estimate: float
    low: float
    high: float
    n: int
    level: float

    @property
    def excludes_zero(self) -> bool:
        """True when 0 lies outside ``[low, high]``: a significant difference at ``level``."""
        return self.low > 0.0 or self.high < 0.0

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}]"


@dataclass(frozen=True)
class SeedSummary:
    """Mean, sample standard deviation (0 for one seed), min and max over seeds."""

    mean: float
    std: float
    min: float
    max: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _vector(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{what} must be a flat sequence of numbers, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{what} is empty: an interval needs at least one item")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(
            f"{what} holds {bad} non-finite value(s); fix the scores (a NaN loss?) before "
            "computing intervals"
        )
    return array


def _seed_table(per_seed: Sequence[Sequence[float]], what: str) -> np.ndarray:
    """(S seeds, N items) float64 table; every seed must score the same items."""
    if len(per_seed) == 0:
        raise ValueError(f"{what} needs at least one seed's scores")
    rows = [_vector(r, f"seed {i}'s scores") for i, r in enumerate(per_seed)]
    sizes = {r.size for r in rows}
    if len(sizes) != 1:
        raise ValueError(
            f"every seed must score the same items, got item counts {sorted(sizes)} across "
            "seeds; rerun the incomplete cells"
        )
    return np.stack(rows)


def _check(level: float, n_boot: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95; got {level}")
    if n_boot < 100:
        raise ValueError(f"n_boot must be >= 100 for stable percentiles, got {n_boot}")


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    level: float = 0.95,
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
) -> Interval:
    """The mean of ``values`` with its percentile-bootstrap interval (module docstring).

    Raises:
        ValueError: empty or non-finite values, ``level`` outside (0, 1), ``n_boot < 100``.
    """
    _check(level, n_boot)
    x = _vector(values, "values")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, x.size, size=(n_boot, x.size))
    means = x[draws].mean(axis=1)
    low, high = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return Interval(float(x.mean()), float(low), float(high), int(x.size), level)


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    level: float = 0.95,
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
) -> Interval:
    """Mean of ``a_i - b_i`` over the same items, with its bootstrap interval.

    Raises:
        ValueError: ``a`` and ``b`` of different lengths (not the same items).
    """
    x, y = _vector(a, "a"), _vector(b, "b")
    if x.size != y.size:
        raise ValueError(
            f"paired_difference needs the same items on both sides, got {x.size} and {y.size} "
            "scores; score both methods on one item list"
        )
    return bootstrap_ci(x - y, level=level, n_boot=n_boot, seed=seed)


def pooled_over_seeds(
    per_seed: Sequence[Sequence[float]],
    *,
    level: float = 0.95,
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
) -> Interval:
    """Each item averaged over the seeds (rows: seeds, columns: the same items), then
    :func:`bootstrap_ci` over items.

    Raises:
        ValueError: no seeds, or seeds scored on different numbers of items.
    """
    table = _seed_table(per_seed, "pooled_over_seeds")
    return bootstrap_ci(table.mean(axis=0), level=level, n_boot=n_boot, seed=seed)


def seeds_and_items(
    per_seed: Sequence[Sequence[float]],
    *,
    level: float = 0.95,
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
) -> Interval:
    """Mean of an (S seeds × N items) table with its two-level bootstrap interval.

    Each of ``n_boot`` draws picks N item columns with replacement (drawn first, as in
    :func:`bootstrap_ci`, so one seed gives exactly ``bootstrap_ci`` of that row), then S seed
    rows with replacement, and takes the mean of the drawn rows over the drawn columns. ``n`` of
    the result is N; the estimate is the mean of the whole table.

    Raises:
        ValueError: no seeds, seeds scored on different numbers of items, non-finite scores.
    """
    _check(level, n_boot)
    table = _seed_table(per_seed, "seeds_and_items")
    n_seeds, n_items = table.shape
    rng = np.random.default_rng(seed)
    items = rng.integers(0, n_items, size=(n_boot, n_items))
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))  # all 0 for one seed
    row_means = np.stack([row[items].mean(axis=1) for row in table])  # (S, n_boot)
    means = np.take_along_axis(row_means.T, seeds, axis=1).mean(axis=1)
    low, high = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return Interval(float(table.mean()), float(low), float(high), int(n_items), level)


def seed_summary(values: Sequence[float]) -> SeedSummary:
    """Mean ± sample std (``ddof=1``; 0 with one seed), min and max of one number per seed."""
    x = _vector(values, "per-seed values")
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    if math.isnan(std):  # pragma: no cover - guarded by _vector
        std = 0.0
    return SeedSummary(float(x.mean()), std, float(x.min()), float(x.max()), int(x.size))
