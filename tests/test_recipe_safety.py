"""Issue 16: a malformed recipe, or a folder that is not a run, fails with a message naming it.

Recipes: a null or wrongly typed section (``model: null``, ``train: [..]``, ``--set train=5``)
and a name that is not one safe path component (``../../x``) are refused with the key named, so
nothing trains the default model by accident or writes outside ``runs/``. Eval targets: a
checkpoint folder, an adapter folder, an empty folder or an unfinished run says what it is and
what to pass, not "no recipe file".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from frame_peft.cli import main
from frame_peft.pipeline import evaluate_target
from frame_peft.recipes.schema import RecipeError, load_recipe, recipe_from_dict
from frame_peft.run_dir import NotARunDirError, check_finished

BASE = {"name": "safe", "train": {"max_steps": 1}}


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"model": None}, "model is null"),
        ({"data": None}, "data is null"),
        ({"eval": None}, "eval is null"),
        ({"train": None}, "train must be a mapping"),
        ({"train": [1, 2]}, "train must be a mapping"),
        ({"train": {"max_steps": 1, "output_dir": "/tmp/elsewhere"}}, "train.output_dir"),
        ({"compare": None}, "compare must be a list"),
        ({"description": 3}, "description must be a string"),
    ],
)
def test_wrong_sections_are_refused_with_the_key(extra, key):
    with pytest.raises(RecipeError) as err:
        recipe_from_dict({**BASE, **extra})
    assert key in str(err.value)


@pytest.mark.parametrize("name", ["../../x", "a/b", "/abs", "..", ".", "", "x y", 5])
def test_unsafe_names_are_refused(name):
    with pytest.raises(RecipeError, match=r"name = .* not allowed.*--output-dir"):
        recipe_from_dict({**BASE, "name": name})


def test_safe_name_gives_a_run_dir_inside_runs():
    recipe = recipe_from_dict({**BASE, "name": "my-run_1.v2"})
    assert recipe.run_root() == Path("runs/my-run_1.v2")
    recipe.name = "../escape"  # reassigned after validation: still refused
    with pytest.raises(RecipeError, match="not allowed"):
        recipe.run_root()


def test_set_override_of_a_section_by_a_scalar(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(BASE))
    with pytest.raises(RecipeError, match=r"train must be a mapping.*got 5"):
        load_recipe(path, ["train=5"])
    with pytest.raises(RecipeError, match="model is null"):
        load_recipe(path, ["model=null"])


def test_cli_train_refuses_an_escaping_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    path = tmp_path / "work" / "r.yaml"
    path.write_text(yaml.safe_dump({**BASE, "name": "../../x"}))
    monkeypatch.chdir(tmp_path / "work")
    assert main(["train", str(path)]) == 2
    assert "name = '../../x' is not allowed" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["r.yaml", "work"]


def _eval_error(target: Path, capsys) -> str:
    assert main(["eval", str(target)]) == 2
    return capsys.readouterr().err


def test_eval_of_a_checkpoint_names_the_run_above(tmp_path, capsys):
    run = tmp_path / "run"
    ckpt = run / "checkpoint-3"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    (run / "run.json").write_text(json.dumps({"method": "frame"}))
    err = _eval_error(ckpt, capsys)
    assert "training checkpoint (checkpoint-3)" in err and f"above it ({run})" in err
    with pytest.raises(NotARunDirError, match="checkpoint"):
        evaluate_target(str(ckpt))


def test_eval_of_an_adapter_folder_names_the_run_above(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"method": "frame"}))
    err = _eval_error(run / "adapter", capsys)
    assert "adapter folder of a run" in err and f"above it ({run})" in err


def test_eval_of_an_empty_folder_says_what_it_expected(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _eval_error(empty, capsys)
    assert f"{empty} is empty" in err and "run.json, recipe.yaml, adapter/" in err
    assert "no recipe file" not in err


def test_eval_of_an_unfinished_run(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "recipe.yaml").write_text(yaml.safe_dump(BASE))
    err = _eval_error(run, capsys)
    assert "recipe.yaml but no run.json" in err and "did not finish" in err
    assert f"--output-dir {run}" in err


def test_eval_of_a_base_model_folder(tmp_path, capsys):
    run = tmp_path / "base"
    run.mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump(BASE))
    (run / "eval.json").write_text("{}")
    assert "--method base" in _eval_error(run, capsys)


def test_check_finished_names_what_is_missing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"method": "frame"}))
    (run / "recipe.yaml").write_text(yaml.safe_dump(BASE))
    with pytest.raises(NotARunDirError, match=r"has no adapter"):
        check_finished(run)


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_code_timeout_must_be_finite_and_positive(value):
    with pytest.raises(RecipeError, match=r"eval\.code_timeout"):
        load_recipe("quickstart", [f"eval.code_timeout={value}"])


@pytest.mark.parametrize("allowed", [False, True])
def test_recipe_eval_passes_allow_unsafe_code_execution_to_evaluate(allowed):
    """The recipe field reaches evaluate() (recorded in the results' settings), so a recipe
    that opts in on a machine without namespaces is not refused anyway."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from frame_peft.data.types import Example
    from frame_peft.pipeline.run import _evaluate
    from frame_peft.recipes import load_recipe
    from frame_peft.recipes.data_prep import PreparedData
    from test_docs_integrations import char_tokenizer, tiny_text_llama

    recipe = load_recipe("quickstart", [f"eval.allow_unsafe_code_execution={str(allowed).lower()}"])
    item = Example("arc_easy", "x1", "Question: 1+1?\nAnswer:", choices=(" 2", " 3"), label=0)
    data = PreparedData({}, {"arc_easy": [item]})
    res = _evaluate(tiny_text_llama(), char_tokenizer(), recipe, data, "lora", {}, False)
    assert res.metadata["settings"]["allow_unsafe_code_execution"] is allowed
