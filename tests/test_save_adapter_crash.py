"""A process killed inside ``fp.save_adapter`` over an existing adapter leaves one loadable
version: the old one or the new one, whole (issue 16 §5)."""

from __future__ import annotations

import pytest
import torch

import frame_peft as fp
from _adapters import inputs
from _models import tiny_llama
from test_atomic_swap import run_killed

SAVE = """
    import torch, frame_peft as fp
    from _models import tiny_llama
    model = fp.inject(tiny_llama(), fp.FrameConfig(target_modules=["q_proj", "v_proj"], rank=2,
                                                   num_experts=4, top_k=2))
    torch.manual_seed({seed})
    with torch.no_grad():
        for layer in fp.adapted_layers(model).values():
            layer.adapter.B.normal_(0, 0.1)
    fp.save_adapter(model, {path!r})
"""


def logits_of(path) -> torch.Tensor:
    model = fp.load_adapter(tiny_llama(), path).eval()
    with torch.no_grad():
        return model(**inputs()).logits


# "ad": killed between moving the old folder aside and renaming the new one into place;
# "adapter_config.json": killed while the new version is half written. (The other kill points
# of the swap are in tests/test_atomic_swap.py.)
@pytest.mark.parametrize("kill_at", ["ad", "adapter_config.json"])
def test_a_kill_inside_save_adapter_leaves_the_old_or_the_new_version(tmp_path, kill_at):
    path, ref = tmp_path / "runs" / "ad", tmp_path / "ref"
    assert run_killed(SAVE.format(seed=1, path=str(path))) == 0
    assert run_killed(SAVE.format(seed=2, path=str(ref))) == 0
    old, new = logits_of(path), logits_of(ref)
    assert not torch.allclose(old, new)
    assert run_killed(SAVE.format(seed=2, path=str(path)), kill_renaming_to=kill_at) == 137
    got = logits_of(path)  # readers see one whole version, before any recovery
    assert torch.equal(got, old) or torch.equal(got, new)
    assert run_killed(SAVE.format(seed=2, path=str(path))) == 0  # the next save recovers
    assert torch.equal(logits_of(path), new)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ad"]  # no .tmp / .old left
