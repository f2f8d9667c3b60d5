"""A run directory belongs to one run (issue 16 §5): no silent mixing of two runs' files."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import frame_peft as fp
from _models import tiny_llama
from _training_data import RandomTokens, frame_config
from frame_peft.training import TrainConfig, Trainer, list_checkpoints
from frame_peft.training.run_identity import dataset_fingerprint


def run_config(out, **kw) -> TrainConfig:
    base = dict(
        output_dir=str(out), max_steps=2, per_device_batch_size=2, lr=1e-2, order_lr=1e-2,
        save_every=1, keep_checkpoints=None, progress=False, report_to="none", log_every=1,
        seed=7,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def build(config=None):
    model = tiny_llama()
    torch.manual_seed(0)
    return fp.inject(model, config or frame_config())


def test_resume_none_into_another_runs_directory_is_refused(tmp_path):
    out = tmp_path / "run"
    Trainer(build(), RandomTokens(16), run_config(out, max_steps=4)).train()
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ValueError, match=r"holds files of an earlier run .*overwrite=True"):
        Trainer(build(), RandomTokens(16), run_config(out, resume=None)).train()
    assert sorted(p.name for p in out.iterdir()) == before  # nothing pruned, nothing written


def test_overwrite_clears_the_earlier_run_first(tmp_path):
    out = tmp_path / "run"
    Trainer(build(), RandomTokens(16), run_config(out, max_steps=4)).train()
    with pytest.warns(UserWarning, match="overwrite=True: deleted"):
        result = Trainer(
            build(), RandomTokens(16, seed=1), run_config(out, resume=None, overwrite=True)
        ).train()
    assert result.resumed_from is None and result.global_step == 2
    assert [step for step, _ in list_checkpoints(out)] == [1, 2]  # the old 3 and 4 are gone
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_overwrite_refuses_a_folder_that_is_not_a_run_directory(tmp_path):
    out = tmp_path / "home"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "log.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"files frame-peft did not write \(\['notes.txt'\]\)"):
        Trainer(build(), RandomTokens(16), run_config(out, overwrite=True)).train()
    assert (out / "notes.txt").read_text() == "mine" and (out / "log.jsonl").exists()
    with pytest.raises(ValueError, match="overwrite=True deletes output_dir"):
        run_config(out, overwrite=True, resume=str(out / "checkpoint-1"))


def test_resume_with_other_data_is_an_error(tmp_path):
    out = tmp_path / "run"
    Trainer(build(), RandomTokens(16), run_config(out)).train()
    with pytest.raises(ValueError, match=r"checkpoint-2 was trained on other data.*--overwrite"):
        Trainer(build(), RandomTokens(16, seed=1), run_config(out, max_steps=3)).train()
    # an exact fingerprint given by the caller is what counts when there is one
    with pytest.raises(ValueError, match="trained on other data"):
        Trainer(build(), RandomTokens(16), run_config(out, max_steps=3),
                data_fingerprint="files-v2").train()  # fmt: skip
    assert [step for step, _ in list_checkpoints(out)] == [1, 2]


def test_resume_with_another_adapter_config_is_an_error(tmp_path):
    out = tmp_path / "run"
    Trainer(build(), RandomTokens(16), run_config(out)).train()
    other = frame_config()
    other.alpha = 7.0  # same tensors, other maths: loading would succeed silently
    with pytest.raises(ValueError, match=r"another adapter config \(alpha: None -> 7.0\)"):
        Trainer(build(other), RandomTokens(16), run_config(out, max_steps=3)).train()


def test_resume_with_another_learning_rate_only_warns(tmp_path):
    out = tmp_path / "run"
    Trainer(build(), RandomTokens(16), run_config(out)).train()
    with pytest.warns(UserWarning, match=r"changed settings \['lr'\]"):
        result = Trainer(build(), RandomTokens(16), run_config(out, max_steps=3, lr=5e-3)).train()
    assert result.resumed_from == out / "checkpoint-2" and result.global_step == 3


def test_a_fresh_start_does_not_take_over_another_runs_files(tmp_path):
    out = tmp_path / "run"
    Trainer(build(), RandomTokens(16), run_config(out, save_every=None)).train()
    for _, path in list_checkpoints(out):  # the user deleted the checkpoints to save space
        import shutil

        shutil.rmtree(path)
    with pytest.raises(ValueError, match=r"finished run's adapter/ but no checkpoint"):
        Trainer(build(), RandomTokens(16), run_config(out)).train()
    with pytest.raises(ValueError, match="trained on other data"):
        Trainer(build(), RandomTokens(16, seed=2), run_config(out)).train()
    # an unfinished run of the same data and adapter (no checkpoint yet) is simply restarted
    (out / "adapter").rename(tmp_path / "moved")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = Trainer(build(), RandomTokens(16), run_config(out)).train()
    assert result.resumed_from is None and result.global_step == 2


def test_dataset_fingerprint_sees_size_and_content():
    a = dataset_fingerprint(RandomTokens(16))
    assert a == dataset_fingerprint(RandomTokens(16))
    assert a != dataset_fingerprint(RandomTokens(17))
    assert a != dataset_fingerprint(RandomTokens(16, seed=1))
    assert dataset_fingerprint(RandomTokens(200)) != dataset_fingerprint(RandomTokens(200, seed=3))


def test_train_recipe_refuses_another_recipes_data_and_keeps_its_files(tmp_path, capsys):
    import yaml

    from _runs import tiny_recipe
    from frame_peft.cli import main
    from frame_peft.pipeline import train_recipe
    from frame_peft.recipes import load_recipe
    from frame_peft.run_dir import load_run

    recipe_file = tiny_recipe(tmp_path / "r", max_steps=2)
    out = tmp_path / "run"
    train_recipe(load_recipe(recipe_file), output_dir=out, evaluate_after=False)
    recipe_before = (out / "recipe.yaml").read_text()
    args = ["train", str(recipe_file), "--output-dir", str(out), "--no-eval"]
    assert main([*args, "--set", "data.split_seed=1"]) == 2
    assert "other data" in capsys.readouterr().err
    assert (out / "recipe.yaml").read_text() == recipe_before  # not the new recipe beside it
    # a finished run whose adapter swap was interrupted still loads (the old version)
    (out / "adapter").rename(out / "adapter.old")
    info, *_ = load_run(out)
    assert info["method"] == "frame"
    assert main([*args, "--set", "data.split_seed=1", "--overwrite"]) == 0
    assert yaml.safe_load((out / "recipe.yaml").read_text())["data"]["split_seed"] == 1
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("adapter")) == ["adapter"]


def test_resume_of_a_peft_baseline_with_another_lora_alpha_is_an_error(tmp_path):
    def peft(alpha):
        torch.manual_seed(0)
        return fp.peft_baseline(tiny_llama(), "lora", r=4, lora_alpha=alpha,
                                target_modules=["q_proj", "v_proj"])  # fmt: skip

    out = tmp_path / "run"
    Trainer(peft(8), RandomTokens(16), run_config(out)).train()
    with pytest.raises(ValueError, match=r"another adapter config \(lora_alpha: 8 -> 16\)"):
        Trainer(peft(16), RandomTokens(16), run_config(out, max_steps=3)).train()
    result = Trainer(peft(8), RandomTokens(16), run_config(out, max_steps=3)).train()
    assert result.resumed_from == out / "checkpoint-2" and result.global_step == 3
