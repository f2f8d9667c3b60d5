from ...core.config import register_method
from .config import FlyLoRAConfig
from .layer import FlyLoRAAdapter

register_method(FlyLoRAConfig, FlyLoRAAdapter)

__all__ = ["FlyLoRAAdapter", "FlyLoRAConfig"]
