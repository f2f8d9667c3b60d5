"""The command line: help for every subcommand, recipe listing, assets status, clear errors."""

from __future__ import annotations

import pytest

from frame_peft.cli import main

SUBCOMMANDS = ["train", "eval", "compare", "assets", "recipes", "demo", "transforms-tour"]


def test_help_lists_every_subcommand_and_method(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out
    for method in ("frame", "moe-lora", "fouriermoe", "hmora", "peft:fourierft", "base"):
        assert method in out


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_each_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: frame-peft " + command in capsys.readouterr().out


def test_recipes_listing_and_printing(capsys):
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out
    for name in ("quickstart", "commonsense", "math", "code", "knowledge", "multitask"):
        assert name in listed
    assert main(["recipes", "quickstart"]) == 0
    assert "name: quickstart" in capsys.readouterr().out
    assert main(["recipes", "nope"]) == 2


def test_assets_status_runs_without_network(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FRAME_PEFT_CACHE", str(tmp_path))
    assert main(["assets", "status"]) == 0
    out = capsys.readouterr().out
    assert "smollm2" in out and "missing" in out


def test_missing_recipe_and_bad_override_are_errors_not_tracebacks(capsys):
    assert main(["train", "no-such-recipe"]) == 2
    assert "built-in recipes" in capsys.readouterr().err
    assert main(["compare", "quickstart", "--set", "data.source=cloud"]) == 2
    assert "offline" in capsys.readouterr().err
    assert main(["train", "quickstart", "--set", "adapters.frame.top_k"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_every_builtin_recipe_validates():
    from frame_peft.recipes import builtin_recipes, load_recipe

    for name in builtin_recipes():
        recipe = load_recipe(name)
        assert recipe.name == name
        for method in recipe.compare:
            if method != "base":
                recipe.adapter_kwargs(method, validate=True)


def test_version_is_one_string_everywhere():
    import tomllib
    from pathlib import Path

    import frame_peft
    from frame_peft._version import __version__

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["version"]
    assert frame_peft.__version__ == __version__ == declared


def test_demo_runs_the_quick_start_and_transforms_tour_runs_the_tour(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(
        "frame_peft.quickstart.run_quickstart", lambda **kw: calls.append(kw) or "table"
    )
    assert main(["demo", "--set", "train.max_steps=1"]) == 0
    assert calls == [{"overrides": ["train.max_steps=1"], "output_dir": None}]
    assert main(["transforms-tour", "--n", "16"]) == 0
    assert "frame-peft transforms, n = 16" in capsys.readouterr().out
