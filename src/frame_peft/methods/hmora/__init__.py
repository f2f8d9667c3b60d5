from ...core.config import register_method
from .config import HMoRAConfig
from .layer import HMoRAAdapter

register_method(HMoRAConfig, HMoRAAdapter)

__all__ = ["HMoRAAdapter", "HMoRAConfig"]
