from ...core.config import register_method
from .config import LoRAConfig
from .layer import LoRAAdapter

register_method(LoRAConfig, LoRAAdapter)

__all__ = ["LoRAAdapter", "LoRAConfig"]
