"""Built-in adapter methods, one folder each (``config.py`` + ``layer.py``).

Importing this package imports every method folder in it, and each folder's ``__init__`` calls
:func:`frame_peft.register_method`, so a new method needs no edit here.
"""

import importlib
import pkgutil

from .flylora import FlyLoRAAdapter, FlyLoRAConfig
from .fouriermoe import FourierMoEAdapter, FourierMoEConfig
from .frame import FrameAdapter, FrameConfig
from .hmora import HMoRAAdapter, HMoRAConfig
from .hydralora import HydraLoRAAdapter, HydraLoRAConfig
from .lora import LoRAAdapter, LoRAConfig
from .mixlora import MixLoRAAdapter, MixLoRAConfig
from .moe_lora import MoELoRAAdapter, MoELoRAConfig

for _info in pkgutil.iter_modules(__path__):
    if _info.ispkg:
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "FlyLoRAAdapter",
    "FlyLoRAConfig",
    "FourierMoEAdapter",
    "FourierMoEConfig",
    "FrameAdapter",
    "FrameConfig",
    "HMoRAAdapter",
    "HMoRAConfig",
    "HydraLoRAAdapter",
    "HydraLoRAConfig",
    "LoRAAdapter",
    "LoRAConfig",
    "MixLoRAAdapter",
    "MixLoRAConfig",
    "MoELoRAAdapter",
    "MoELoRAConfig",
]
