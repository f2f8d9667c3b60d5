"""`frame-peft analyze` end to end on tiny trained runs (FRAME, MoE-LoRA, LoRA; 2 tasks)."""

from __future__ import annotations

import argparse
import json

import pytest

from _runs import tiny_recipe, train_tiny_run
from frame_peft.analysis.cli import add_analyze_parser, run_analyze
from frame_peft.analysis.run import analyze_run, held_out_batches

TASKS = ("arc_challenge", "arc_easy")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    recipe = tiny_recipe(root, tasks=TASKS, num_experts=3, max_steps=3)
    dirs = {m: train_tiny_run(recipe, m, root / "runs" / m) for m in ("frame", "moe-lora", "lora")}
    return root, dirs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frame-peft")
    add_analyze_parser(parser.add_subparsers(dest="command"))
    return parser


def _expected_tokens(run_dir, max_items: int) -> dict[str, int]:
    """Non-padding tokens per task of the held-out pass, rebuilt independently of the recorder."""
    from frame_peft.data import TaskVocabulary
    from frame_peft.pipeline import prepare_data
    from frame_peft.recipes import load_recipe
    from frame_peft.recipes.model_prep import load_base

    recipe = load_recipe(run_dir / "recipe.yaml")
    _, tokenizer = load_base(recipe, for_training=False)
    vocab = TaskVocabulary.from_dict(json.loads((run_dir / "run.json").read_text())["task_ids"])
    batches, used = held_out_batches(
        prepare_data(recipe).eval,
        tokenizer,
        vocab=vocab,
        max_length=recipe.data.max_length,
        batch_size=4,
        max_items_per_task=max_items,
    )
    assert used == dict.fromkeys(TASKS, min(6, max_items))
    tokens = dict.fromkeys(TASKS, 0)
    for b in batches:
        assert len(set(b["task_ids"].tolist())) == 1  # one task per batch
        tokens[vocab.name(int(b["task_ids"][0]))] += int(b["attention_mask"].sum())
    return tokens


def test_frame_and_moe_lora_together(runs):
    root, dirs = runs
    report = analyze_run([dirs["frame"], dirs["moe-lora"]], root / "joint", progress=False)
    assert report == root / "joint" / "report.html" and report.is_file()
    saved = json.loads((report.parent / "analysis.json").read_text())
    frame, moe = saved["runs"]
    assert (frame["label"], moe["label"]) == ("frame", "moe-lora")
    tokens = _expected_tokens(dirs["frame"], 32)
    for run in (frame, moe):
        assert run["items"] == dict.fromkeys(TASKS, 6)
        routing = run["routing"]
        assert sorted(routing["tasks"]) == sorted(TASKS)  # the training vocabulary, by name
        assert len(routing["modules"]) == 4  # 2 layers × q_proj, v_proj
        for m in routing["modules"].values():
            assert m["per_task_tokens"] == tokens  # padding excluded, ids as in training
            assert m["num_tokens"] == sum(tokens.values())
            assert set(m["per_task_load"]) == set(TASKS)
            assert sum(m["load"]) == pytest.approx(1.0)
        assert set(routing["by_layer_task"]) == {"0", "1"}
        dec = run["decorrelation"]
        assert len(dec["modules"]) == 4 and dec["per_layer"]
        for m in dec["modules"].values():
            assert len(m["delta_cosine"]) == 3 and m["delta_cosine"][0][0] == pytest.approx(1.0)
    orders = frame["orders"]
    assert orders is not None and len(orders["modules"]) == 4
    assert orders["trajectory"]["steps"] == [1, 2, 3]  # from orders.jsonl (log_every=1)
    assert moe["orders"] is None
    assert frame["decorrelation"]["modules"]["model.layers.0.self_attn.q_proj"]["coherence"]
    html = report.read_text()
    assert html.count("<img ") == len(list(report.parent.glob("*.png")))
    assert "comparison_decorrelation_layers.png" in html  # FRAME vs MoE-LoRA side by side
    assert "No FRAME module in this run (method moe-lora)" in html


def test_each_run_alone_through_the_cli(runs, capsys):
    _, dirs = runs
    args = _parser().parse_args(
        ["analyze", str(dirs["frame"]), "--max-items", "2", "--no-coherence", "--no-progress"]
    )
    assert args.func is run_analyze and run_analyze(args) == 0
    report = dirs["frame"] / "analysis" / "report.html"
    assert report.is_file() and str(report) in capsys.readouterr().out
    saved = json.loads((report.parent / "analysis.json").read_text())["runs"][0]
    assert saved["items"] == dict.fromkeys(TASKS, 2)
    assert all(m["coherence"] is None for m in saved["decorrelation"]["modules"].values())
    assert saved["orders"]["modules"] and saved["routing"]["modules"]

    moe = analyze_run([dirs["moe-lora"]], max_items_per_task=2, progress=False)
    saved = json.loads((moe.parent / "analysis.json").read_text())["runs"][0]
    assert moe == dirs["moe-lora"] / "analysis" / "report.html"
    assert saved["orders"] is None and saved["decorrelation"]["modules"]
    assert set(next(iter(saved["routing"]["modules"].values()))["per_task_tokens"]) == set(TASKS)


def test_lora_run_is_reported_not_crashed(runs):
    _, dirs = runs
    report = analyze_run([dirs["lora"]], progress=False)
    saved = json.loads((report.parent / "analysis.json").read_text())["runs"][0]
    assert saved["orders"] is None and saved["routing"] == {} and saved["decorrelation"] is None
    html = report.read_text()
    assert "<img " not in html and "lora has no router" in html
    assert "Decorrelation skipped" in html


def test_refusals_and_errors(runs, tmp_path, capsys):
    _, dirs = runs
    with pytest.raises(ValueError, match="--output"):
        analyze_run([dirs["frame"], dirs["moe-lora"]])
    for method in ("peft:lora", "base"):
        fake = tmp_path / method.replace(":", "_")
        fake.mkdir()
        (fake / "run.json").write_text(json.dumps({"method": method}))
        args = _parser().parse_args(["analyze", str(fake)])
        assert run_analyze(args) == 2
        err = capsys.readouterr().err
        assert f"a {method!r} run" in err and "PEFT baselines and the base model" in err
    assert run_analyze(_parser().parse_args(["analyze", str(tmp_path / "missing")])) == 2
    assert "no run.json" in capsys.readouterr().err
    with pytest.raises(ValueError, match="max_items_per_task"):
        analyze_run([dirs["frame"]], max_items_per_task=0)


def test_help_says_what_it_writes(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["analyze", "--help"])
    text = capsys.readouterr().out
    for needle in (
        "report.html",
        "analysis.json",
        "--output",
        "--max-items",
        "--no-coherence",
        "frame-peft analyze runs/quickstart/frame",
    ):
        assert needle in text
