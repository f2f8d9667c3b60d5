"""frame-peft: mixture-of-experts adapters in a learnable fractional-Fourier domain.

```python
import frame_peft as fp
cfg = fp.FrameConfig(target_modules=["q_proj", "v_proj"], num_experts=8, top_k=2, rank=4)
model = fp.inject(base_model, cfg)
with fp.routing_context(attention_mask=mask):
    out = model(**batch)       # with labels, out.loss already includes fp.aux_loss(model)
loss = out.loss
```
"""

from __future__ import annotations

from . import _peft_hook, accounting, peft_bridge, transforms
from ._version import __version__
from .accounting import parameter_table
from .core.adapter import AdaptedLinear, Adapter, LayerContext, NotMergeableError, build_adapter
from .core.adapter_format import AdapterIntegrityError
from .core.config import (
    AdapterConfig,
    RoutingConfig,
    config_from_dict,
    method_names,
    register_method,
)
from .core.inject import (
    adapted_layers,
    aux_loss,
    aux_stats,
    count_parameters,
    disable_adapters,
    inject,
    orders,
    set_adapters_enabled,
    set_aux_in_loss,
    unload,
)
from .core.merge import merge_and_unload
from .core.named import add_named_adapter, named_adapters, set_active_adapter
from .core.serialization import adapter_state_dict, load_adapter, save_adapter
from .methods import (
    FlyLoRAConfig,
    FourierMoEConfig,
    FrameConfig,
    HMoRAConfig,
    HydraLoRAConfig,
    LoRAConfig,
    MixLoRAConfig,
    MoELoRAConfig,
)
from .methods.frame.scan import ScanReport, ScanSettings, scan_orders, scan_steps
from .optim import AdapterOptimizer, build_optimizer, is_order_parameter
from .peft_bridge import export_peft_lora, is_peft_model, peft_baseline
from .routing import routing_context


def to_peft_config(config: AdapterConfig, **peft_fields):
    """PEFT's config (``FramePeftConfig``) for ``config``: ``peft.get_peft_model(model,
    fp.to_peft_config(fp.FrameConfig(...)))``. See :func:`frame_peft.peft_method.to_peft_config`."""
    from .peft_method import to_peft_config as convert

    return convert(config, **peft_fields)


_peft_hook.install()  # PEFT learns FRAME_PEFT when it is imported (docs/integrations.md)

__all__ = [
    "AdaptedLinear",
    "Adapter",
    "AdapterConfig",
    "AdapterIntegrityError",
    "AdapterOptimizer",
    "FlyLoRAConfig",
    "FourierMoEConfig",
    "FrameConfig",
    "HMoRAConfig",
    "HydraLoRAConfig",
    "LayerContext",
    "LoRAConfig",
    "MixLoRAConfig",
    "MoELoRAConfig",
    "NotMergeableError",
    "RoutingConfig",
    "ScanReport",
    "ScanSettings",
    "__version__",
    "accounting",
    "adapted_layers",
    "adapter_state_dict",
    "add_named_adapter",
    "aux_loss",
    "aux_stats",
    "build_adapter",
    "build_optimizer",
    "config_from_dict",
    "count_parameters",
    "disable_adapters",
    "export_peft_lora",
    "inject",
    "is_order_parameter",
    "is_peft_model",
    "load_adapter",
    "merge_and_unload",
    "method_names",
    "named_adapters",
    "orders",
    "parameter_table",
    "peft_baseline",
    "peft_bridge",
    "register_method",
    "routing_context",
    "save_adapter",
    "scan_orders",
    "scan_steps",
    "set_active_adapter",
    "set_adapters_enabled",
    "set_aux_in_loss",
    "to_peft_config",
    "transforms",
    "unload",
]
