from ...core.config import register_method
from .config import FrameConfig
from .layer import FrameAdapter

register_method(FrameConfig, FrameAdapter)

__all__ = ["FrameAdapter", "FrameConfig"]
