"""The on-disk adapter format: one folder that both ``fp.load_adapter`` and PEFT load.

A folder holds ``adapter_config.json`` and ``adapter_model.safetensors``, as PEFT's do. Format 2
(written by this version, by ``fp.save_adapter`` and by PEFT's ``save_pretrained`` through
:mod:`frame_peft.peft_method` alike)::

    {
      "peft_type": "FRAME_PEFT",            # PEFT's field: which tuner reads the folder
      "task_type": "CAUSAL_LM" | null,      # PEFT's fields, PEFT's meanings
      "base_model_name_or_path": ..., "revision": null, "inference_mode": true,
      "frame_peft": {                       # everything of ours, namespaced
        "format_version": 2,
        "config": {"method": "frame", ...}, # the AdapterConfig (AdapterConfig.to_dict())
        "config_sha256": ...,               # of the canonical JSON of "config"
        "config_field_sha256": {field: ...},# per field, to name what an edit changed
        "weights_sha256": ...,              # of the tensors (names, dtypes, shapes, bytes)
        "modules": {name: [d_in, d_out]},
        "library_version": ...
      }
    }

Tensor names are ``base_model.model.<module>.frame_peft_adapters.<tensor>``: PEFT's names for a
saved ``PeftModel`` (its prefix, then the module path, our tuner attribute and the tensor, with
the adapter name left out), which transformers' ``load_adapter`` maps back by name. In memory
and in :func:`~.serialization.adapter_state_dict` a tensor is called ``<module>.<tensor>``.
The weights hash covers the tensors, not the file bytes, so the same adapter gets the same hash
whichever writer produced the file. A missing or wrong hash is an error
(:class:`AdapterIntegrityError`); ``allow_edited=True`` loads a hand-edited folder anyway and
warns naming what differs.

Format 1 (frame-peft before 0.9: the config at the top level with ``method``, a ``frame_peft``
block holding the sha256 of the weights *file*) still loads, with a ``FutureWarning``; re-save
it to convert.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 2
PEFT_TYPE = "FRAME_PEFT"
KEY_PREFIX = "base_model.model."
ADAPTERS_ATTR = "frame_peft_adapters"  # the tuner layers' ModuleDict of adapters on the PEFT path

__all__ = [
    "ADAPTERS_ATTR",
    "FORMAT_VERSION",
    "KEY_PREFIX",
    "PEFT_TYPE",
    "AdapterIntegrityError",
    "canonical_key",
    "check_tensor_values",
    "config_digests",
    "disk_key",
    "folder_metadata",
    "parse_metadata",
    "tensors_sha256",
    "verify",
]


class AdapterIntegrityError(ValueError):
    """The adapter's files do not match the hashes recorded when it was saved."""


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted tensor names, dtypes, shapes and raw bytes (keys without the
    ``base_model.model.`` prefix, so both spellings hash the same)."""
    h = hashlib.sha256()
    for key in sorted(tensors, key=canonical_key):
        t = tensors[key].detach().to("cpu").contiguous()
        h.update(f"{canonical_key(key)}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def config_digests(config: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """(sha256 of the whole config, sha256 of each field), over canonical JSON."""
    return _sha(config), {k: _sha(v) for k, v in config.items()}


def folder_metadata(
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    modules: dict[str, list[int]],
    *,
    library_version: str,
    base_model_name_or_path: str | None = None,
    task_type: str | None = None,
) -> dict[str, Any]:
    """The ``adapter_config.json`` of format 2 for these config and tensors."""
    return {
        "peft_type": PEFT_TYPE,
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "frame_peft": namespaced_block(config, tensors, modules, library_version),
    }


def namespaced_block(
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    modules: dict[str, list[int]],
    library_version: str,
) -> dict[str, Any]:
    """The ``"frame_peft"`` block of format 2."""
    total, fields = config_digests(config)
    return {
        "format_version": FORMAT_VERSION,
        "config": config,
        "config_sha256": total,
        "config_field_sha256": fields,
        "weights_sha256": tensors_sha256(tensors),
        "modules": modules,
        "library_version": library_version,
    }


def parse_metadata(meta: Any, where: str | Path) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """``(format_version, adapter config dict, frame_peft block)`` of an ``adapter_config.json``.

    Raises ``ValueError`` naming the file for anything that is not one of our formats (a list,
    null, another PEFT method's config, a newer format).
    """
    if not isinstance(meta, dict):
        raise ValueError(
            f"{where} holds a JSON {type(meta).__name__}, not an object: it is not an adapter "
            "config (damaged or overwritten). Re-save or re-download the adapter"
        )
    block = meta.get("frame_peft")
    if meta.get("peft_type") is not None:
        if meta["peft_type"] != PEFT_TYPE:
            raise ValueError(
                f"{where} is a PEFT {meta['peft_type']} adapter, not a frame-peft one: load it "
                "with peft.PeftModel.from_pretrained (frame-peft's PEFT baselines do)"
            )
        if not isinstance(block, dict) or not isinstance(block.get("config"), dict):
            raise ValueError(f"{where}: the 'frame_peft' block with the adapter config is missing")
        version = block.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{where} has frame-peft format_version {version!r}; this version reads "
                f"{FORMAT_VERSION} (and 1). Upgrade frame-peft to load it"
            )
        return FORMAT_VERSION, dict(block["config"]), block
    if "method" in meta:  # format 1
        warnings.warn(
            f"{where} uses frame-peft's adapter format 1 (before 0.9), which PEFT cannot read; "
            "it loads, but re-save it (fp.save_adapter) to convert it to format 2",
            FutureWarning,
            stacklevel=3,
        )
        return 1, {k: v for k, v in meta.items() if k != "frame_peft"}, dict(block or {})
    raise ValueError(
        f"{where} has neither 'peft_type' nor 'method': it is not a frame-peft adapter config"
    )


def verify(
    block: dict[str, Any],
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor] | None,
    where: str | Path,
    allow_edited: bool = False,
) -> None:
    """Check format 2's hashes of ``config`` and (unless None) ``tensors``; raise
    :class:`AdapterIntegrityError` (or, with ``allow_edited``, warn) naming what differs.

    ``tensors=None``: the config only, for loaders that read the weights themselves
    (transformers' ``load_adapter``); a block that records no hash at all is then a config built
    in memory, not one read from a saved folder, and passes.
    """
    if tensors is None and "weights_sha256" not in block and "config_sha256" not in block:
        return
    problems = []
    total, fields = config_digests(config)
    recorded_fields = block.get("config_field_sha256") or {}
    if block.get("config_sha256") is None:
        problems.append("config_sha256 is missing")
    elif block["config_sha256"] != total:
        changed = sorted(
            k for k in set(fields) | set(recorded_fields) if fields.get(k) != recorded_fields.get(k)
        )
        problems.append(f"the config was edited after saving (fields: {changed or 'unknown'})")
    if tensors is not None and block.get("weights_sha256") is None:
        problems.append("weights_sha256 is missing")
    elif tensors is not None and block["weights_sha256"] != tensors_sha256(tensors):
        problems.append("the weights differ from those saved (truncated, modified or replaced)")
    if not problems:
        return
    what = "; ".join(problems)
    if allow_edited:
        warnings.warn(f"{where}: {what}; loading it anyway (allow_edited=True)", stacklevel=3)
        return
    raise AdapterIntegrityError(
        f"{where}: {what}. The adapter is not what was saved. Re-save or re-download it; to load "
        "a folder you edited by hand on purpose, pass allow_edited=True to fp.load_adapter "
        "(or set FRAME_PEFT_ALLOW_EDITED_ADAPTERS=1 for PEFT's and transformers' loaders), which "
        "warns naming what differs"
    )


def check_tensor_values(tensors: dict[str, torch.Tensor], where: str | Path) -> None:
    """Refuse NaN/inf values in float tensors (integer tensors, such as FourierMoE's positions,
    are checked against the adapter's own dtype when loading)."""
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(
                f"{where}: tensor {key!r} holds NaN or infinite values; this adapter cannot be "
                "used (re-train from the last finite checkpoint)"
            )


def disk_key(module: str, tensor: str) -> str:
    """The on-disk name of adapter tensor ``tensor`` of module ``module``."""
    return f"{KEY_PREFIX}{module}.{ADAPTERS_ATTR}.{tensor}"


def canonical_key(key: str) -> str:
    """``<module>.<tensor>`` for an on-disk name (format 2) or an in-memory one."""
    key = key.removeprefix(KEY_PREFIX)
    module, sep, tensor = key.partition(f".{ADAPTERS_ATTR}.")
    return f"{module}.{tensor}" if sep else key


def _sha(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)
