"""Save and load adapters: ``adapter_config.json`` + ``adapter_model.safetensors``.

The JSON holds the config (with its ``method`` and ``format_version``), the library version, the
adapted modules with their shapes, and the sha256 of the weights file, so a truncated or modified
file is refused with a clear message. Loading validates the files and every tensor's shape before
it keeps any change to the model: on error the base model is left as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .._files import file_sha256, write_json
from .config import config_from_dict
from .inject import inject, require_injection, unload

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<module>.<tensor>": tensor}`` for every adapter parameter and persistent buffer."""
    out = {}
    for name, layer in require_injection(model).layers.items():
        for key, value in layer.adapter.state_dict().items():
            out[f"{name}.{key}"] = value
    return out


def with_optional_state(
    model: nn.Module, tensors: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``tensors`` plus, for every adapter tensor an earlier version did not save (the adapter's
    ``optional_state``), the model's current value of it."""
    out = dict(tensors)
    for name, layer in require_injection(model).layers.items():
        state = layer.adapter.state_dict()
        for key in getattr(layer.adapter, "optional_state", ()):
            if key in state:
                out.setdefault(f"{name}.{key}", state[key])
    return out


def save_adapter(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the model's adapter to the directory ``path`` (created if needed); return it."""
    from .._version import __version__

    inj = require_injection(model)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in adapter_state_dict(model).items()}
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{WEIGHTS_NAME}.")
    os.close(fd)
    save_file(tensors, tmp, metadata={"format": "pt", "method": inj.config.method})
    digest = file_sha256(Path(tmp))
    os.replace(tmp, out / WEIGHTS_NAME)
    meta = {
        **inj.config.to_dict(),
        "frame_peft": {
            "library_version": __version__,
            "weights_sha256": digest,
            "modules": {
                n: [layer.in_features, layer.out_features] for n, layer in inj.layers.items()
            },
        },
    }
    write_json(out / CONFIG_NAME, meta, indent=2)
    return out


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify an adapter directory: ``(config dict, tensors)``."""
    root = Path(path)
    cfg_path, w_path = root / CONFIG_NAME, root / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"no adapter at {root}: {p.name} is missing")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path} is not valid JSON ({err}); the file is damaged") from err
    expected = meta.get("frame_peft", {}).get("weights_sha256")
    if expected is not None and file_sha256(w_path) != expected:
        raise ValueError(
            f"{w_path} does not match the sha256 recorded in {CONFIG_NAME}: the file was "
            "truncated or modified after saving. Re-save or re-download the adapter"
        )
    try:
        tensors = load_file(w_path)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{w_path} is not a readable safetensors file: {err}") from err
    return meta, tensors


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Inject the adapter saved at ``path`` into ``model`` (a fresh base) and load its weights.

    Raises ``FileNotFoundError``/``ValueError`` for missing, damaged or incompatible adapters
    (naming the module and both shapes on a mismatch) and leaves ``model`` unchanged then.
    The adapters take the model's train/eval mode (:func:`inject`). A ``target_modules`` name
    that matches nothing here is not an error: the saved weights list the exact modules, and a
    module they have and this model lacks (or the reverse) is refused.
    """
    meta, tensors = read_adapter(path)
    meta = {k: v for k, v in meta.items() if k != "frame_peft"}
    config = config_from_dict(meta)
    inject(model, config, _relaxed_targets=True)  # the weights name the exact modules
    try:
        _load_tensors(model, tensors)
    except Exception:
        unload(model)
        raise
    return model


def _load_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    layers = require_injection(model).layers
    remaining = with_optional_state(model, tensors)
    staged = []
    for name, layer in layers.items():
        for key, current in layer.adapter.state_dict().items():
            full = f"{name}.{key}"
            if full not in remaining:
                raise ValueError(f"the adapter file has no tensor {full!r} for module {name!r}")
            value = remaining.pop(full)
            if value.shape != current.shape:
                raise ValueError(
                    f"module {name!r}: tensor {key!r} has shape {tuple(value.shape)} in the "
                    "adapter "
                    f"file but {tuple(current.shape)} for this base model (in_features="
                    f"{layer.in_features}, out_features={layer.out_features}); the adapter was "
                    "trained on a model of another size"
                )
            staged.append((layer.adapter, key, value))
    if remaining:
        extra = sorted({k.rsplit(".", 1)[0] for k in remaining})[:5]
        raise ValueError(
            f"the adapter file has tensors for modules this model does not have or that its "
            f"config does not target, e.g. {extra}; is this the right base model?"
        )
    with torch.no_grad():
        for adapter, key, value in staged:
            target = (
                adapter.get_parameter(key)
                if key in dict(adapter.named_parameters())
                else adapter.get_buffer(key)
            )
            target.copy_(value.to(device=target.device, dtype=target.dtype))
