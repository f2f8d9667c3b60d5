from ...core.config import register_method
from .config import MoELoRAConfig
from .layer import MoELoRAAdapter

register_method(MoELoRAConfig, MoELoRAAdapter)

__all__ = ["MoELoRAAdapter", "MoELoRAConfig"]
