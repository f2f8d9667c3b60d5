"""`frame-peft eval --lm-eval`: local task YAMLs from the CLI, and the preflight that rejects
unknown tasks and (offline) tasks whose data is not here before any model is loaded."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest

from _runs import tiny_recipe
from frame_peft.cli import main
from frame_peft.data.types import Example
from frame_peft.evaluation.lm_eval_bridge import (
    LmEvalTaskError,
    check_lm_eval_tasks,
    write_local_mc_task,
    write_local_task_yaml,
)

pytest.importorskip("lm_eval", reason="lm-eval is optional: pip install 'lm-eval==0.4.*'")
warnings.filterwarnings("ignore", category=UserWarning)

ROWS = [
    Example(task="toy_local", uid=f"t{i}", prompt=f"What is {i} plus one?", choices=c, label=0)
    for i, c in enumerate([(" 1", " 7"), (" 2", " 9", " 4"), (" 3", " 0")])
]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Offline mode as CI sets it, with an empty datasets cache (so nothing is cached)."""
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "empty_cache"))


def _hub_yaml(directory, task, **extra):
    """A task YAML whose data is a Hub dataset (what lm-eval's built-in tasks look like)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"task: {task}", "dataset_path: allenai/ai2_arc", "dataset_name: ARC-Easy"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    lines += ["output_type: multiple_choice", "test_split: test", "doc_to_text: q"]
    lines += ["doc_to_choice: c", "doc_to_target: 0", "metric_list: [{metric: acc}]"]
    (directory / f"{task}.yaml").write_text("\n".join(lines) + "\n")


def test_cli_eval_runs_a_local_task_offline(tmp_path, offline, capsys):
    recipe = tiny_recipe(tmp_path / "tiny")
    write_local_mc_task(tmp_path / "tasks", "toy_local", ROWS)
    out = tmp_path / "out"
    args = ["eval", str(recipe), "--method", "base", "--output-dir", str(out)]
    args += ["--lm-eval", "toy_local", "--lm-eval-include", str(tmp_path / "tasks")]
    assert main(args) == 0
    lm = json.loads((out / "lm_eval.json").read_text())
    assert lm["results"]["toy_local"]["acc,none"] in {0.0, 1 / 3, 2 / 3, 1.0}
    assert (out / "eval.json").is_file()  # our own evaluation ran too

    only = tmp_path / "only"
    args = ["eval", str(recipe), "--method", "base", "--output-dir", str(only), "--lm-eval-only"]
    args += ["--lm-eval", "toy_loc*", "--lm-eval-include", str(tmp_path / "tasks")]
    assert main(args) == 0
    assert not (only / "eval.json").exists()  # only lm-eval ran; the glob reached its task
    assert json.loads((only / "lm_eval.json").read_text())["results"] == lm["results"]
    assert main(["eval", str(recipe), "--lm-eval-only"]) == 2
    assert "need --lm-eval" in capsys.readouterr().err


def test_unknown_task_fails_before_the_model_is_loaded(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path / "tiny")
    write_local_mc_task(tmp_path / "tasks", "toy_local", ROWS)
    shutil.rmtree(tmp_path / "tiny" / "model")  # loading the model would fail differently
    out = tmp_path / "out"
    base = ["eval", str(recipe), "--method", "base", "--output-dir", str(out)]
    with pytest.raises(Exception) as err:  # without lm-eval: the missing model is hit
        main(base)
    assert not isinstance(err.value, LmEvalTaskError)
    code = main([*base, "--lm-eval", "toy_locl", "--lm-eval-include", str(tmp_path / "tasks")])
    msg = capsys.readouterr().err
    assert code == 2
    assert "unknown lm-eval task" in msg and "'toy_locl'" in msg and "toy_local" in msg
    assert not out.exists()  # nothing evaluated, nothing written


def test_builtin_hub_task_offline_fails_early_with_what_to_do(tmp_path, offline, capsys):
    recipe = tiny_recipe(tmp_path / "tiny")
    shutil.rmtree(tmp_path / "tiny" / "model")
    out = tmp_path / "out"
    args = ["eval", str(recipe), "--method", "base", "--output-dir", str(out)]
    assert main([*args, "--lm-eval", "arc_easy"]) == 2
    msg = capsys.readouterr().err
    assert "offline mode is set (" in msg and "HF_HUB_OFFLINE=1" in msg  # CI sets more vars
    assert "arc_easy: would download the Hugging Face Hub dataset 'allenai/ai2_arc'" in msg
    assert "ARC-Easy" in msg and "--lm-eval-include DIR" in msg and "pre-download" in msg
    assert not out.exists()


def test_offline_rule_local_files_cache_and_urls(tmp_path, offline):
    tasks = tmp_path / "tasks"
    _hub_yaml(tasks, "hub_task")
    with pytest.raises(LmEvalTaskError, match="hub_task: would download"):
        check_lm_eval_tasks(["hub_task"], include_path=tasks)
    plan = check_lm_eval_tasks(["hub_task"], include_path=tasks, offline=False)  # online: fine
    assert plan.leaves == {"hub_task": ["hub_task"]} and not plan.include_defaults
    # a datasets cache that holds the config (datasets' own layout) makes it local
    cache = tmp_path / "cache"
    (cache / "allenai___ai2_arc" / "ARC-Easy" / "0.0.0" / "abc123").mkdir(parents=True)
    _hub_yaml(tasks, "hub_task", dataset_kwargs=json.dumps({"cache_dir": str(cache)}))
    assert check_lm_eval_tasks(["hub_task"], include_path=tasks).offline
    _hub_yaml(tasks, "hub_task", dataset_name="ARC-Challenge")  # another config: not cached
    with pytest.raises(LmEvalTaskError, match="config 'ARC-Challenge'"):
        check_lm_eval_tasks(["hub_task"], include_path=tasks)
    # local data files must exist; URLs are downloads
    data = tmp_path / "rows.jsonl"
    write_local_task_yaml(tasks, "gone", data)
    with pytest.raises(LmEvalTaskError, match="local files are missing"):
        check_lm_eval_tasks(["gone"], include_path=tasks)
    data.write_text('{"prompt": "Q:", "choices": ["a", "b"], "label": 0}\n')
    assert check_lm_eval_tasks(["gone"], include_path=tasks).leaves == {"gone": ["gone"]}
    remote = (tasks / "gone.yaml").read_text().replace("gone", "remote")
    remote = remote.replace(f"[{json.dumps(str(data.resolve()))}]", '"https://x.org/r.jsonl"')
    (tasks / "remote.yaml").write_text(remote)
    with pytest.raises(LmEvalTaskError, match="remote: would download data files"):
        check_lm_eval_tasks(["remote"], include_path=tasks)


def test_groups_tags_and_globs_expand_to_checked_leaves(tmp_path, offline):
    tasks = tmp_path / "tasks"
    write_local_mc_task(tasks, "toy_a", ROWS)
    write_local_mc_task(tasks, "toy_b", ROWS)
    with (tasks / "toy_a.yaml").open("a") as f:
        f.write("tag: toy_tag\n")
    (tasks / "toy_group.yaml").write_text("group: toy_group\ntask: [toy_a, toy_b]\n")
    plan = check_lm_eval_tasks(["toy_group", "toy_tag", "toy_*"], include_path=tasks)
    assert plan.leaves["toy_group"] == ["toy_a", "toy_b"]
    assert plan.leaves["toy_tag"] == ["toy_a"]
    assert set(plan.leaves["toy_*"]) >= {"toy_a", "toy_b"}
    assert plan.names[:2] == ["toy_group", "toy_tag"] and "toy_a" in plan.names
    # a group member that needs the Hub is caught through the group
    _hub_yaml(tasks, "hub_member")
    (tasks / "mixed.yaml").write_text("group: mixed\ntask: [toy_a, hub_member]\n")
    with pytest.raises(LmEvalTaskError, match="hub_member: would download") as err:
        check_lm_eval_tasks(["mixed"], include_path=tasks)
    assert "toy_a:" not in str(err.value)
    with pytest.raises(LmEvalTaskError, match="not a folder"):
        check_lm_eval_tasks(["toy_a"], include_path=tmp_path / "nowhere")
