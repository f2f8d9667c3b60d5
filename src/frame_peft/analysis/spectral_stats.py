r"""Do band profiles differ between groups (tasks, layers) by more than between seeds?

Each unit is one band profile, or a stack of profiles (e.g. one run: layer × band), with a group
label (its task or its layer). The distance between two units is the mean over their rows of the
total-variation distance ``½ Σ_b |p_b − q_b|`` (0 = identical profiles, 1 = disjoint bands).

The statistic is ``T = mean distance between units of different groups − mean distance between
units of the same group``: the within-group pairs are the replicates (seeds), so T > 0 means the
groups differ by more than the seeds do. Its null distribution comes from permuting the group
labels (``permutations`` draws, seeded); the p-value is ``(1 + #{T_perm ≥ T}) / (1 + n)``.
With ``strata`` (e.g. the seed of each unit when the groups are layers) labels are permuted only
within each stratum, so a seed's own offset cannot pass for a group effect.

Resolution: with few replicates the test cannot reach small p-values whatever the data. Two
groups of 3 runs have C(6, 3) = 20 labelings, two of which (the true one and its swap) give the
same statistic, so p ≥ 0.1; ``labelings`` is reported so a reader can tell "not significant" from
"cannot be significant" (5 runs per group: p ≥ 2/252 ≈ 0.008).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["permutation_test", "profile_distance", "tv_distance_matrix"]


def profile_distance(p: Sequence[float] | torch.Tensor, q: Sequence[float] | torch.Tensor) -> float:
    """Total-variation distance between two band profiles (or mean over rows of two stacks)."""
    a, b = torch.as_tensor(p, dtype=torch.float64), torch.as_tensor(q, dtype=torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"profiles of different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return float(0.5 * (a - b).abs().sum(-1).mean())


def tv_distance_matrix(units: torch.Tensor) -> torch.Tensor:
    """(n, n) distances between units (n, ..., B): mean over the leading rows of TV distance."""
    u = units.double().reshape(units.shape[0], -1, units.shape[-1])
    diff = (u[:, None] - u[None, :]).abs().sum(-1) * 0.5  # (n, n, rows)
    return diff.mean(-1)


def _statistic(dist: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, float]:
    same = labels[:, None] == labels[None, :]
    off = ~torch.eye(len(labels), dtype=torch.bool)
    within = dist[same & off]
    between = dist[~same]
    w, b = float(within.mean()), float(between.mean())
    return b - w, b, w


def permutation_test(
    units: Sequence[Any] | torch.Tensor,
    groups: Sequence[Any],
    *,
    strata: Sequence[Any] | None = None,
    permutations: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Permutation test of "the groups' profiles differ by more than replicates within a group".

    Args:
        units: (n, B) profiles or (n, rows, B) stacks of profiles (rows aligned across units).
        groups: n group labels; every group needs at least two units (the replicates).
        strata: optional n labels; permutations shuffle the group labels within each stratum.
        permutations: random label permutations of the null distribution.

    Returns ``{"statistic": T, "between": mean between-group distance, "within": mean
    within-group distance, "ratio": between / within, "p_value", "permutations", "groups": {g:
    n}}``.
    """
    x = (
        torch.as_tensor(units, dtype=torch.float64)
        if not isinstance(units, torch.Tensor)
        else units
    )
    labels_in = list(groups)
    if x.shape[0] != len(labels_in):
        raise ValueError(f"{x.shape[0]} units but {len(labels_in)} group labels")
    if not torch.isfinite(x).all():
        raise ValueError("a profile has NaN or inf entries (a zero update has no profile)")
    names = sorted(set(labels_in), key=str)
    counts = {g: labels_in.count(g) for g in names}
    if len(names) < 2:
        raise ValueError("the test needs at least two groups")
    small = [g for g, n in counts.items() if n < 2]
    if small:
        raise ValueError(
            f"groups {small} have one unit: within-group (seed) spread needs >= 2 replicates each"
        )
    if permutations < 1:
        raise ValueError(f"permutations must be >= 1, got {permutations}")
    labels = torch.tensor([names.index(g) for g in labels_in])
    dist = tv_distance_matrix(x)
    stat, between, within = _statistic(dist, labels)
    gen = torch.Generator().manual_seed(seed)
    if strata is None:
        blocks = [torch.arange(len(labels))]
    else:
        if len(strata) != len(labels):
            raise ValueError(f"{len(strata)} strata labels for {len(labels)} units")
        keys = list(strata)
        blocks = [torch.tensor([i for i, s in enumerate(keys) if s == k]) for k in set(keys)]
    hits = 0
    for _ in range(permutations):
        perm = labels.clone()
        for idx in blocks:
            perm[idx] = labels[idx[torch.randperm(len(idx), generator=gen)]]
        if _statistic(dist, perm)[0] >= stat - 1e-12:
            hits += 1
    if strata is None:
        labelings = math.factorial(len(labels_in))
        for n in counts.values():
            labelings //= math.factorial(n)
    else:
        labelings = 1
        for idx in blocks:
            sub = [labels_in[i] for i in idx.tolist()]
            count = math.factorial(len(sub))
            for g in set(sub):
                count //= math.factorial(sub.count(g))
            labelings *= count
    return {
        "labelings": labelings,
        "statistic": stat,
        "between": between,
        "within": within,
        "ratio": between / within if within > 0 else None,
        "p_value": (1 + hits) / (1 + permutations),
        "permutations": permutations,
        "groups": counts,
    }
