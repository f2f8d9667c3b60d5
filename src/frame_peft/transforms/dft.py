"""Centered unitary DFT: ``C = fftshift ∘ fft(·, norm="ortho") ∘ ifftshift``.

C is symmetric and unitary, so ``idft = C^H = C^{-1}``. Both accept real or complex tensors of any
batch shape and return complex tensors (complex64, or complex128 for 64-bit inputs).
"""

from __future__ import annotations

import torch

from ._common import as_complex, check_length


def _centered(x: torch.Tensor, dim: int, inverse: bool) -> torch.Tensor:
    x = as_complex(x)
    check_length(x.shape[dim])
    x = torch.fft.ifftshift(x, dim=dim)
    x = (
        torch.fft.ifft(x, dim=dim, norm="ortho")
        if inverse
        else torch.fft.fft(x, dim=dim, norm="ortho")
    )
    return torch.fft.fftshift(x, dim=dim)


def dft(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Centered unitary DFT ``C x`` along ``dim``. Shape is preserved; output is complex."""
    return _centered(x, dim, inverse=False)


def idft(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Inverse centered unitary DFT ``C^H x`` along ``dim``."""
    return _centered(x, dim, inverse=True)
