from ...core.config import register_method
from .config import FourierMoEConfig
from .layer import FourierMoEAdapter

register_method(FourierMoEConfig, FourierMoEAdapter)

__all__ = ["FourierMoEAdapter", "FourierMoEConfig"]
