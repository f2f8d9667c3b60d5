from ...core.config import register_method
from .config import MixLoRAConfig
from .layer import MixLoRAAdapter, mixtral_balance_loss

register_method(MixLoRAConfig, MixLoRAAdapter)

__all__ = ["MixLoRAAdapter", "MixLoRAConfig", "mixtral_balance_loss"]
