"""Mutual coherence between fractional-Fourier bases."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from frame_peft.transforms import coherence, coherence_matrix, dfrft, frft, frft_adjoint


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Deterministic inputs (and gradcheck's random projections) for every test here."""
    torch.manual_seed(0)


def _dense_coherence(a: float, b: float, n: int, transform: str) -> float:
    """Reference: ``max |T_a^H T_b|`` from the full dense Gram matrix, both orders applied."""
    eye = torch.eye(n, dtype=torch.complex128)
    if transform == "exact":
        gram = dfrft(dfrft(eye, b, dim=0), -a, dim=0)  # (F^a)^H = F^{-a}
    else:
        gram = frft_adjoint(frft(eye, b, dim=0), a, dim=0)
    return float(gram.abs().max())


@pytest.mark.parametrize("n", [16, 17, 64, 65])
@pytest.mark.parametrize("transform", ["exact", "chirp"])
def test_half_column_computation_equals_the_dense_gram(n: int, transform: str) -> None:
    """The fast path (reversal symmetry, one transform per order) against the dense reference,
    for odd and even n and orders outside [-1, 1]."""
    orders = [0.0, 0.13, 0.5, 1.0, 1.7, -0.4, 2.6]
    matrix = coherence_matrix(orders, n, transform)
    for e, f in itertools.combinations(range(len(orders)), 2):
        expected = _dense_coherence(orders[e], orders[f], n, transform)
        assert abs(matrix[e][f] - expected) < 1e-12
        assert abs(coherence(orders[e], orders[f], n, transform) - expected) < 1e-12


@pytest.mark.parametrize("n", [16, 17, 64, 65])
def test_spatial_vs_fourier_is_one_over_sqrt_n(n: int) -> None:
    assert abs(coherence(0, 1, n) - 1 / math.sqrt(n)) < 1e-12
    assert abs(coherence(1, 0, n) - 1 / math.sqrt(n)) < 1e-12
    if n % 2 == 0:  # the surrogate's U_1 = C only for even n
        assert abs(coherence(0, 1, n, transform="chirp") - 1 / math.sqrt(n)) < 1e-12
    for t in ("exact", "chirp"):
        assert abs(coherence(0.3, 0.3, n, transform=t) - 1.0) < 1e-12


@pytest.mark.parametrize("n", [16, 17, 64])
def test_exact_coherence_depends_only_on_the_difference(n: int) -> None:
    for diff in (0.2, 0.5, 0.85):
        vals = [coherence(a, a + diff, n) for a in (0.0, 0.3, -0.45, 1.1, 2.7)]
        assert max(vals) - min(vals) < 1e-12, (diff, vals)
        dense = [_dense_coherence(a, a + diff, n, "exact") for a in (0.0, 0.3, -0.45, 1.1, 2.7)]
        assert max(dense) - min(dense) < 1e-12, (diff, dense)
    assert abs(coherence(0, 0.2, n) - coherence(0, 0.5, n)) > 1e-3  # it does depend on b - a


@pytest.mark.parametrize(
    ("n", "transform"), [(64, "exact"), (65, "exact"), (64, "chirp"), (256, "chirp")]
)
def test_coherence_falls_towards_one_over_sqrt_n(n: int, transform: str) -> None:
    grid = [i / 10 for i in range(11)]
    vals = [coherence(0, a, n, transform=transform) for a in grid]
    assert abs(vals[0] - 1.0) < 1e-12
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(vals)), vals
    assert vals[5] < 0.5 and vals[-1] <= 1 / math.sqrt(n) + 1e-9
    if n % 2 == 0 or transform == "exact":
        assert abs(vals[-1] - 1 / math.sqrt(n)) < 1e-12


def test_unknown_transform() -> None:
    with pytest.raises(ValueError, match="exact"):
        coherence(0, 1, 8, transform="ozaktas")  # type: ignore[arg-type]


def test_coherence_known_values_and_matrix_against_pairwise_coherence():
    n = 32
    for transform in ("chirp", "exact"):
        c = coherence_matrix([0.0, 1.0, 0.4, 0.4], n, transform)
        assert c[0][1] == c[1][0] == pytest.approx(1 / math.sqrt(n), abs=1e-12)
        assert c[2][3] == pytest.approx(1.0, abs=1e-12) and c[1][1] == 1.0
    orders = [-0.7, 0.25, 1.5, 2.3, 0.9]  # outside [-1, 1] too (the reversal branch)
    for transform, width in (("chirp", 32), ("exact", 32), ("exact", 15)):
        cache: dict = {}
        c = coherence_matrix(orders, width, transform, cache)
        for e, a in enumerate(orders):
            for f, b in enumerate(orders):
                if e != f:
                    assert c[e][f] == pytest.approx(coherence(a, b, width, transform), abs=1e-12)
        assert len(cache) == 10
        assert coherence_matrix(orders, width, transform, cache) == c  # from the cache
