from ...core.config import register_method
from .config import HydraLoRAConfig
from .layer import HydraLoRAAdapter

register_method(HydraLoRAConfig, HydraLoRAAdapter)

__all__ = ["HydraLoRAAdapter", "HydraLoRAConfig"]
