"""Write an adapter folder in format 1 (frame-peft before 0.9), to test that old folders load."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from frame_peft._files import file_sha256
from frame_peft.core.inject import require_injection
from frame_peft.core.serialization import adapter_state_dict


def save_format1(model, path, drop: tuple[str, ...] = (), hashed: bool = True) -> Path:
    """The adapter of ``model`` as format 1 wrote it: config at the top level, tensors keyed
    ``<module>.<tensor>``, the sha256 of the weights *file*; tensors ending in ``drop`` left out
    (state an earlier version did not have)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    inj = require_injection(model)
    tensors = {
        k: v.detach().cpu().contiguous()
        for k, v in adapter_state_dict(model).items()
        if not k.endswith(drop or ("\0",))
    }
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    block = {"library_version": "0.8.0", "modules": {
        n: [layer.in_features, layer.out_features] for n, layer in inj.layers.items()
    }}  # fmt: skip
    if hashed:
        block["weights_sha256"] = file_sha256(out / "adapter_model.safetensors")
    meta = {**inj.config.to_dict(), "frame_peft": block}
    (out / "adapter_config.json").write_text(json.dumps(meta, indent=2))
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    return out
