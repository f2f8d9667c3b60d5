"""A recipe's base model on the meta device: its config without weights or network, and the build.

The dry run must work on a laptop with no GPU, no weights and no network, so the model's
``transformers`` config is found, in this order (the first that answers is used and named):

1. ``model.name`` is a local folder with a ``config.json`` → that file;
2. ``smollm2`` (the offline asset) → the fetched asset's ``config.json`` when it is present;
3. the Hugging Face cache holds the hub config (``local_files_only=True``, never downloads);
4. a config shipped in ``recipes/model_configs/`` (LLaMA-3.1-8B, Qwen2.5-7B, SmolLM2-135M: the
   architecture fields of their published ``config.json``; file names are the hub id with ``/``
   replaced by ``--``, other spellings in each file's ``_aliases``).

Otherwise :class:`~frame_peft.recipes.schema.RecipeError` says what to provide.

While a model is built here, :func:`fast_meta_draws` replaces ``torch.randperm`` by zeros of the
same length: FourierMoE and PEFT's FourierFT draw random spectral positions on the CPU (a
permutation of ``d_in·d_out`` entries per module, minutes for an 8B model), and which positions
are drawn never changes how many parameters there are. The meta model is only counted and then
discarded; ``tests/test_dry_run.py`` checks the counts against an ordinary build.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .schema import RecipeError

__all__ = [
    "MODEL_CONFIG_DIR",
    "build_meta_model",
    "fast_meta_draws",
    "resolve_model_config",
    "shipped_model_configs",
]

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_SMOLLM2 = ("smollm2", "smollm2-135m-instruct")


@lru_cache(maxsize=1)
def _shipped_index() -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in sorted(MODEL_CONFIG_DIR.glob("*.json")):
        names = json.loads(path.read_text()).get("_aliases", [])
        for name in [path.stem.replace("--", "/"), *names]:
            index[name.lower()] = path
    return index


def shipped_model_configs() -> dict[str, Path]:
    """Every model name (lower case, aliases included) → the shipped ``config.json`` file."""
    return dict(_shipped_index())


def _config_from_file(path: Path) -> Any:
    from transformers import AutoConfig

    fields = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    model_type = fields.pop("model_type", None)
    if model_type is None:
        raise RecipeError(f"{path}: a model config needs 'model_type' (e.g. 'llama')")
    return AutoConfig.for_model(model_type, **fields)


def resolve_model_config(name: str) -> tuple[Any, str]:
    """``(transformers config, where it came from)`` for ``model.name`` (see the module doc)."""
    from transformers import AutoConfig

    local = Path(name).expanduser()
    if (local / "config.json").is_file():
        return AutoConfig.from_pretrained(str(local)), f"local folder {local}"
    if name.lower() in _SMOLLM2:
        from ..assets import AssetMissingError, asset_path

        with contextlib.suppress(AssetMissingError, FileNotFoundError, ValueError):
            folder = Path(asset_path("smollm2"))
            for candidate in (folder, *sorted(p.parent for p in folder.rglob("config.json"))):
                if (candidate / "config.json").is_file():
                    return AutoConfig.from_pretrained(str(candidate)), f"offline asset {candidate}"
    elif not local.exists():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                config = AutoConfig.from_pretrained(name, local_files_only=True)
            return config, f"Hugging Face cache ({name})"
        except (OSError, ValueError):
            pass
    shipped = _shipped_index().get(name.lower())
    if shipped is not None:
        return _config_from_file(shipped), f"shipped config {shipped.name} (no download)"
    known = sorted({p.stem.replace("--", "/") for p in _shipped_index().values()})
    raise RecipeError(
        f"model.name = {name!r}: no config found without the network (not a local folder with "
        f"config.json, not in the Hugging Face cache, not shipped; shipped: {known}). Download "
        f"only its config (`huggingface-cli download {name} config.json`) or point model.name "
        "to a folder that holds it"
    )


def _dtype_of(config: Any, dtype: str) -> torch.dtype:
    if dtype != "auto":
        return getattr(torch, dtype)
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) else torch.float32


def build_meta_model(config: Any, dtype: str = "auto") -> nn.Module:
    """The causal LM of ``config`` on the meta device, parameters in ``dtype`` (``auto``: the
    config's ``torch_dtype``, else float32). No memory, no download."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_config(config, dtype=_dtype_of(config, dtype))


@contextlib.contextmanager
def fast_meta_draws() -> Iterator[None]:
    """Inside: ``torch.randperm(n, ...)`` returns ``n`` zeros (an expanded view, O(1)); see the
    module docstring for why this is safe for counting and never used for a real model."""
    original = torch.randperm

    def zeros_perm(n: int, *args: Any, **kwargs: Any) -> torch.Tensor:
        dtype = kwargs.get("dtype") or torch.long
        return torch.zeros(1, dtype=dtype).expand(int(n))

    torch.randperm = zeros_perm
    try:
        yield
    finally:
        torch.randperm = original
