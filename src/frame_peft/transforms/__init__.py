"""Fractional Fourier transforms: the fast surrogate FRAME uses and an exact reference beside it.

- :func:`dft`, :func:`idft`: centered unitary DFT ``C`` and ``C^H``.
- :func:`frft`, :func:`frft_adjoint`, :func:`frft_right`: the three-shear chirp–FFT surrogate
  ``U_a`` (O(N log N), exactly unitary, not additive).
- :func:`dfrft`, :func:`dfrft_matrix`, :func:`dfrft_basis`: the exact Candan discrete FrFT.
- :func:`coherence`, :func:`coherence_matrix`: mutual coherence of two orders' bases, or of
  every pair of a list of orders.
- :func:`get_transform`, :func:`check_transform_name`, :data:`TRANSFORMS` (:data:`CHIRP`,
  :data:`EXACT`): the transforms by name, as FRAME's config names them; the one dispatch.

Conventions are in docs/methods.md §1 and docs/transforms.md.
"""

from __future__ import annotations

from .by_name import CHIRP, EXACT, TRANSFORMS, check_transform_name, get_transform
from .chirp import frft, frft_adjoint, frft_right
from .coherence import coherence, coherence_matrix
from .dft import dft, idft
from .exact import dfrft, dfrft_adjoint, dfrft_basis, dfrft_matrix

__all__ = [
    "CHIRP",
    "EXACT",
    "TRANSFORMS",
    "check_transform_name",
    "coherence",
    "coherence_matrix",
    "dfrft",
    "dfrft_adjoint",
    "dfrft_basis",
    "dfrft_matrix",
    "dft",
    "frft",
    "frft_adjoint",
    "frft_right",
    "get_transform",
    "idft",
]
