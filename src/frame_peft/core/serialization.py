"""Save and load adapters: ``adapter_config.json`` + ``adapter_model.safetensors``.

The folder is in the one format that PEFT also loads (:mod:`.adapter_format`: PEFT's fields plus
our namespaced ``frame_peft`` block with the config, its hashes and the hash of the weights), so
``fp.save_adapter`` and ``PeftModel.save_pretrained`` write the same thing. Loading validates the
files, the hashes and every tensor's shape and dtype before it keeps any change to the model: on
error the base model is left as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .._files import (
    file_sha256,
    readable_directory,
    recover_directory,
    replace_directory,
    temp_directory,
    write_json,
)
from .adapter_format import (
    canonical_key,
    check_tensor_values,
    disk_key,
    folder_metadata,
    parse_metadata,
    verify,
)
from .config import config_from_dict
from .inject import inject, require_injection, unload

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_ADAPTER_FILES = {CONFIG_NAME, WEIGHTS_NAME, "README.md"}


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
    layers = require_injection(model).layers.items()
    return _with_optional_state({n: layer.adapter for n, layer in layers}, tensors)


def _with_optional_state(
    adapters: dict[str, nn.Module], tensors: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    out = dict(tensors)
    for name, adapter in adapters.items():
        state = adapter.state_dict()
        for key in getattr(adapter, "optional_state", ()):
            if key in state:
                out.setdefault(f"{name}.{key}", state[key])
    return out


def save_adapter(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the model's (active) adapter to the directory ``path`` (created if needed).

    The folder is in format 2 (:mod:`.adapter_format`): ``peft.PeftModel.from_pretrained`` and
    ``fp.load_adapter`` both load it. Returns the path.
    """
    from .._version import __version__

    inj = require_injection(model)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        disk_key(name, key): value.detach().cpu().contiguous()
        for name, layer in inj.layers.items()
        for key, value in layer.adapter.state_dict().items()
    }
    meta = folder_metadata(
        inj.config.to_dict(),
        tensors,
        module_shapes(inj.layers),
        library_version=__version__,
        base_model_name_or_path=base_model_name(model),
        task_type="CAUSAL_LM" if hasattr(model, "prepare_inputs_for_generation") else None,
    )
    recover_directory(out)  # finish or undo a save that a killed process left half done
    if not out.exists() or not _only_adapter_files(out):
        # A new folder (nothing to lose: a kill leaves one without its config, which loading
        # refuses), or other files live here (a Trainer checkpoint): write ours one by one. A
        # kill between the two leaves hashes that disagree, which loading refuses (never a mix).
        out.mkdir(exist_ok=True)
        _write_files(out, tensors, meta)
        return out
    tmp = temp_directory(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _write_files(tmp, tensors, meta)
    replace_directory(tmp, out)  # one rename publishes both files (old version kept until then)
    return out


def _only_adapter_files(folder: Path) -> bool:
    return all(p.name in _ADAPTER_FILES or p.name.startswith(".") for p in folder.iterdir())


def _write_files(folder: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{WEIGHTS_NAME}.")
    os.close(fd)
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, folder / WEIGHTS_NAME)
    write_json(folder / CONFIG_NAME, meta, indent=2)


def module_shapes(layers: dict[str, nn.Module]) -> dict[str, list[int]]:
    """``{module: [in_features, out_features]}`` of the adapted layers."""
    return {n: [layer.in_features, layer.out_features] for n, layer in layers.items()}


def base_model_name(model: nn.Module) -> str | None:
    """The base model's ``name_or_path`` (Hugging Face models), else None."""
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    return name or None


def read_adapter(
    path: str | os.PathLike, allow_edited: bool = False
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify an adapter directory: ``(adapter config dict, tensors)``.

    The tensors are keyed ``<module>.<tensor>``. Raises ``FileNotFoundError`` for a missing
    file, :class:`~.adapter_format.AdapterIntegrityError` when the config or the weights differ
    from what was saved (``allow_edited=True`` warns instead), ``ValueError`` for anything else
    that is wrong (not JSON, not a frame-peft config, unreadable weights, NaN values).
    """
    root = readable_directory(path)  # the whole version, if a save was interrupted
    cfg_path, w_path = root / CONFIG_NAME, root / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"no adapter at {root}: {p.name} is missing")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path} is not valid JSON ({err}); the file is damaged") from err
    version, config, block = parse_metadata(meta, cfg_path)
    if version == 1:  # format 1 hashed the weights file; it had no config hash
        expected = block.get("weights_sha256")
        if expected is None and not allow_edited:
            raise ValueError(
                f"{cfg_path} (format 1) records no weights_sha256: the file was edited. Re-save "
                "the adapter, or pass allow_edited=True to load it unchecked"
            )
        if expected is not None and file_sha256(w_path) != expected:
            raise ValueError(
                f"{w_path} does not match the sha256 recorded in {CONFIG_NAME}: the file was "
                "truncated or modified after saving. Re-save or re-download the adapter"
            )
    try:
        tensors = load_file(w_path)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{w_path} is not a readable safetensors file: {err}") from err
    if version != 1:
        verify(block, config, tensors, root, allow_edited)
    check_tensor_values(tensors, w_path)
    return config, {canonical_key(k): v for k, v in tensors.items()}


def load_adapter(
    model: nn.Module, path: str | os.PathLike, *, allow_edited: bool = False
) -> nn.Module:
    """Inject the adapter saved at ``path`` into ``model`` (a fresh base) and load its weights.

    Raises ``FileNotFoundError``/``ValueError`` for missing, damaged, edited or incompatible
    adapters (naming the module and both shapes on a mismatch) and leaves ``model`` unchanged
    then; ``allow_edited=True`` loads a folder whose hashes do not match (hand-edited on
    purpose) with a warning naming what differs. The adapters take the model's train/eval mode
    (:func:`inject`). A ``target_modules`` name that matches nothing here is not an error: the
    saved weights list the exact modules, and a module they have and this model lacks (or the
    reverse) is refused.
    """
    meta, tensors = read_adapter(path, allow_edited=allow_edited)
    config = config_from_dict(meta)
    inject(model, config, _relaxed_targets=True)  # the weights name the exact modules
    try:
        load_tensors(
            {n: layer.adapter for n, layer in require_injection(model).layers.items()}, tensors
        )
    except Exception:
        unload(model)
        raise
    return model


def load_tensors(adapters: dict[str, nn.Module], tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``tensors`` (keyed ``<module>.<tensor>``) into ``{module: adapter}`` after checking
    that every tensor is there, with its shape and kind of dtype; all or nothing."""
    remaining = _with_optional_state(adapters, tensors)  # earlier files lack optional_state
    staged = []
    for name, adapter in adapters.items():
        for key, current in adapter.state_dict().items():
            full = f"{name}.{key}"
            if full not in remaining:
                raise ValueError(f"the adapter file has no tensor {full!r} for module {name!r}")
            value = remaining.pop(full)
            if value.shape != current.shape:
                raise ValueError(
                    f"module {name!r}: tensor {key!r} has shape {tuple(value.shape)} in the "
                    "adapter "
                    f"file but {tuple(current.shape)} for this base model (in_features="
                    f"{adapter.in_features}, out_features={adapter.out_features}); the adapter "
                    "was trained on a model of another size"
                )
            if value.is_floating_point() != current.is_floating_point():
                raise ValueError(
                    f"module {name!r}: tensor {key!r} is {value.dtype} in the adapter file but "
                    f"{current.dtype} in the adapter; the file was modified or is not this "
                    "method's"
                )
            staged.append((adapter, key, value))
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
