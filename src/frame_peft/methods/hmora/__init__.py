from ...core.config import register_method
from .config import SIMPLIFIED, HMoRAConfig
from .layer import HMoRAAdapter

register_method(HMoRAConfig, HMoRAAdapter)

__all__ = ["SIMPLIFIED", "HMoRAAdapter", "HMoRAConfig"]
