"""frame-peft: mixture-of-experts adapters in a learnable fractional-Fourier domain."""

from __future__ import annotations

from . import transforms

__version__ = "0.1.0.dev0"

__all__ = ["__version__", "transforms"]
