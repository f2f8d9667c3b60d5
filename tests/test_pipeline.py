"""End to end on a tiny local model: recipe -> data -> train -> eval -> compare -> re-eval, CLI."""

from __future__ import annotations

import json

import pytest

from _runs import tiny_recipe
from frame_peft.cli import main
from frame_peft.pipeline import compare_recipe, evaluate_target, prepare_data
from frame_peft.recipes import load_recipe


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    return tiny_recipe(
        tmp_path_factory.mktemp("pipeline"),
        num_experts=2,
        lr=1e-3,
        extra_adapters={"peft:lora": {"r": 2, "lora_alpha": 4}},
    )


def test_prepare_data_is_disjoint_and_deterministic(recipe_file):
    recipe = load_recipe(recipe_file)
    a, b = prepare_data(recipe), prepare_data(recipe)
    assert [e.uid for e in a.eval["arc_easy"]] == [e.uid for e in b.eval["arc_easy"]]
    assert len(a.train["arc_easy"]) == 16 and len(a.eval["arc_easy"]) == 6
    assert not {e.uid for e in a.train["arc_easy"]} & {e.uid for e in a.eval["arc_easy"]}
    other = prepare_data(load_recipe(recipe_file, ["data.split_seed=1"]))
    assert {e.uid for e in other.eval["arc_easy"]} != {e.uid for e in a.eval["arc_easy"]}


def test_compare_then_reevaluate_a_run(recipe_file, tmp_path, capsys):
    recipe = load_recipe(recipe_file)
    table = compare_recipe(recipe, output_dir=tmp_path)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 3  # header + base, lora, frame
    frame_row = next(r for r in rows if r.startswith("| frame "))
    assert not frame_row.rstrip(" |").endswith("–")  # active-parameter share is reported
    for method in ("base", "lora", "frame"):
        assert (tmp_path / method / "eval.json").is_file()
    assert (tmp_path / "frame" / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "frame" / "log.jsonl").is_file()
    saved = json.loads((tmp_path / "frame" / "eval.json").read_text())
    # Reloading the saved adapter on a fresh base model reproduces the held-out numbers.
    again = evaluate_target(str(tmp_path / "frame"), output_dir=tmp_path / "re")
    for task, row in again.to_dict()["tasks"].items():
        assert row["metrics"] == saved["tasks"][task]["metrics"] and row["n"] == 6
    assert "compare.md" in {p.name for p in tmp_path.iterdir()}


def test_cli_train_peft_baseline_and_errors(recipe_file, tmp_path, capsys):
    out = tmp_path / "peft"
    code = main(
        [
            "train",
            str(recipe_file),
            "--method",
            "peft:lora",
            "--output-dir",
            str(out),
            "--set",
            "train.max_steps=2",
            "--set",
            "train.eval_every=1",
        ]
    )
    assert code == 0
    assert (out / "eval.json").is_file() and (out / "adapter").is_dir()
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert sum("eval/arc_easy" in row for row in logged) == 2  # periodic eval at steps 1 and 2
    final = json.loads((out / "eval.json").read_text())  # the last periodic eval, reused
    assert final["tasks"]["arc_easy"]["metrics"]["acc"] == logged[-1]["eval/arc_easy"]
    assert final["metadata"]["train_seconds"] > 0
    assert main(["train", str(recipe_file), "--set", "train.bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "bogus" in err and "max_steps" in err
    assert main(["train", str(recipe_file), "--method", "nope"]) == 2
    assert "choose one of" in capsys.readouterr().err


def test_training_is_reproducible_whatever_ran_before(recipe_file, tmp_path):
    import torch
    from safetensors.torch import load_file

    from frame_peft.pipeline import train_recipe

    recipe = load_recipe(recipe_file, ["train.max_steps=2"])
    train_recipe(recipe, output_dir=tmp_path / "a", evaluate_after=False)
    torch.rand(1000)  # the adapter init must not depend on the global RNG state
    train_recipe(recipe, output_dir=tmp_path / "b", evaluate_after=False)
    a = load_file(tmp_path / "a" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
