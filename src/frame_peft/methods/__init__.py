"""Built-in adapter methods, one folder each (config + layer). Importing registers them."""

from .frame import FrameAdapter, FrameConfig
from .lora import LoRAAdapter, LoRAConfig
from .moe_lora import MoELoRAAdapter, MoELoRAConfig

__all__ = [
    "FrameAdapter",
    "FrameConfig",
    "LoRAAdapter",
    "LoRAConfig",
    "MoELoRAAdapter",
    "MoELoRAConfig",
]
