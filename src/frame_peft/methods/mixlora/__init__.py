from ...core.config import register_method
from ...routing import mixtral_balance_loss
from .config import MixLoRAConfig
from .layer import MixLoRAAdapter

register_method(MixLoRAConfig, MixLoRAAdapter)

__all__ = ["MixLoRAAdapter", "MixLoRAConfig", "mixtral_balance_loss"]
