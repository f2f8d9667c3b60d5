"""benchmarks/quality.py at --quick: the whole pipeline (sweep, cells, resume, report, plot) on a
tiny random model in seconds, its intervals against hand-checked values, and answer NLL."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import quality
from _quality_data import char_tokenizer, quick_parts, tiny_text_llama
from _quality_report import aggregate
from frame_peft.evaluation import score_multiple_choice
from frame_peft.evaluation.answer_nll import answer_nll, mc_answer_nll
from frame_peft.evaluation.intervals import bootstrap_ci

METHODS = "lora,moe-lora,frame"


def _argv(tmp: Path, *extra: str) -> list[str]:
    return ["--quick", "--out-dir", str(tmp / "quality"), "--runs-dir", str(tmp / "runs"),
            "--methods", METHODS, "--seeds", "2", "--lrs", "1e-3,1e-2", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quality")
    assert quality.main(_argv(tmp)) == 0
    return tmp


def test_quick_run_writes_every_cell_page_json_and_plot(done):
    out = done / "quality"
    cells = sorted(p.name for p in (out / "cells").glob("*.json"))
    assert cells == sorted(["base-seed0.json"] + [f"{m}-seed{s}.json" for m in METHODS.split(",")
                                                  for s in (0, 1)])  # fmt: skip
    assert len(list((out / "sweep").glob("*.json"))) == 6  # 3 methods x 2 learning rates
    page = (done / "quality.md").read_text()
    assert "What this shows" in page and "Against MoE-LoRA" in page and "quality.png" in page
    assert (done / "quality.png").stat().st_size > 1000
    res = json.loads((done / "quality.json").read_text())
    frame = res["aggregate"]["methods"]["frame"]
    assert frame["parameters"]["active_per_token"] > 0 and frame["cost"]["peak_rss_mb"] > 0
    cell = json.loads((out / "cells" / "frame-seed1.json").read_text())
    assert cell["cost"]["tokens_per_second"] > 0 and cell["part"] == "test"
    assert {t: len(v["items"]) for t, v in cell["tasks"].items()} == {
        "mc_a": 12, "mc_b": 12, "math_a": 12,
    }  # fmt: skip


def test_the_page_intervals_are_recomputable_from_the_cells(done):
    out = done / "quality"
    res = json.loads((done / "quality.json").read_text())
    cell = json.loads((out / "cells" / "lora-seed0.json").read_text())
    nll = [i["nll"] for i in cell["tasks"]["mc_a"]["items"]]
    assert res["aggregate"]["methods"]["lora"]["mc_a"]["nll"]["per_seed"][0] == (
        bootstrap_ci(nll).to_dict()
    )


def test_test_cells_use_the_lr_with_the_lowest_validation_nll(done):
    out = done / "quality"
    for m in METHODS.split(","):
        means = {}
        for path in (out / "sweep").glob(f"{m}-lr*.json"):
            sweep = json.loads(path.read_text())
            assert sweep["part"] == "val"
            tasks = sweep["tasks"].values()
            means[sweep["lr"]] = sum(
                sum(i["nll"] for i in t["items"]) / len(t["items"]) for t in tasks
            )
        cell = json.loads((out / "cells" / f"{m}-seed0.json").read_text())
        assert cell["lr"] == min(means, key=means.get)


def test_complete_cells_are_skipped_and_a_missing_one_is_redone(done, capsys):
    out = done / "quality"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    victim = out / "cells" / "moe-lora-seed1.json"
    victim.unlink()
    assert quality.main(_argv(done, "--list")) == 0
    listing = capsys.readouterr().out
    assert "todo  test   moe-lora     seed 1" in listing and listing.count("todo  ") == 1
    assert "estimate_seconds" in listing
    assert quality.main(_argv(done, "--only", "moe-lora/1,lora")) == 0
    printed = capsys.readouterr().out
    assert "moe-lora-seed1.json: done" in printed
    assert victim.exists()
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    assert {p for p in after if after[p] != before.get(p)} == {victim}


def test_paired_difference_of_a_method_with_itself_is_zero_width():
    items = [{"uid": str(i), "nll": 0.5 + 0.1 * i, "correct": float(i % 2)} for i in range(6)]
    common = {"parameters": {"active_per_token": 1, "trainable": 1, "config": "x"}, "lr": 1e-3,
              "cost": {k: 1.0 for k in ("train_seconds", "eval_seconds", "tokens_per_second",
                                        "peak_rss_mb")}}  # fmt: skip
    cells = [{**common, "method": m, "seed": 0, "tasks": {"t": {"items": items}}}
             for m in ("moe-lora", "frame")]  # fmt: skip
    d = aggregate(cells, n_boot=500)["methods"]["frame"]["t"]
    for metric in ("nll", "correct"):
        assert (d[metric]["minus_moe-lora"]["low"], d[metric]["minus_moe-lora"]["high"]) == (0, 0)
    # the hand-checked fixture of tests/test_intervals.py, through the report: [0, 0, 0, 1]
    items4 = [{"uid": str(i), "nll": 1.0, "correct": float(i == 3)} for i in range(4)]
    agg = aggregate([{**common, "method": "lora", "seed": 0, "tasks": {"t": {"items": items4}}}],
                    n_boot=4000)  # fmt: skip
    acc = agg["methods"]["lora"]["t"]["correct"]["per_seed"][0]
    assert (acc["estimate"], acc["low"], acc["high"]) == (0.25, 0.0, 0.75)


def test_a_difference_only_one_seed_shows_is_not_called_significant():
    # frame is 0.6 nats worse than moe-lora on every item with seed 0 and equal with seed 1:
    # averaged over seeds every item differs by exactly 0.3 (an item-only interval of zero
    # width), but a rerun may give 0 or 0.6, so the seeds × items interval is [0, 0.6].
    from _quality_report import findings, frame_table

    common = {"parameters": {"active_per_token": 1, "trainable": 1, "config": "x"}, "lr": 1e-3,
              "cost": {k: 1.0 for k in ("train_seconds", "eval_seconds", "tokens_per_second",
                                        "peak_rss_mb")}}  # fmt: skip

    def cell(method, seed, shift):
        items = [{"uid": str(i), "nll": 1.0 + 0.1 * i + shift, "correct": 1.0} for i in range(8)]
        return {**common, "method": method, "seed": seed, "tasks": {"t": {"items": items}}}

    cells = [cell("moe-lora", 0, 0.0), cell("moe-lora", 1, 0.0),
             cell("frame", 0, 0.6), cell("frame", 1, 0.0)]  # fmt: skip
    agg = aggregate(cells, n_boot=4000)
    d = agg["methods"]["frame"]["t"]["nll"]
    assert d["minus_moe-lora_items"]["low"] == pytest.approx(0.3)
    assert d["minus_moe-lora_items"]["high"] == pytest.approx(0.3)
    assert d["minus_moe-lora"]["low"] == pytest.approx(0.0)
    assert d["minus_moe-lora"]["high"] == pytest.approx(0.6)
    line = next(x for x in findings(agg) if x.startswith("- frame, t, answer NLL"))
    assert "no significant difference from MoE-LoRA" in line
    vs = agg["frame_vs"]["moe-lora"]["t"]["nll"]  # FRAME's control table: the same interval
    ref = d["minus_moe-lora"]
    assert (vs["low"], vs["high"], vs["seeds"]) == (ref["low"], ref["high"], [0, 1])
    assert "| frame − moe-lora (2 seeds) | NLL +0.300 n.s.; acc +0.000 n.s. |" in frame_table(agg)


def test_mc_answer_nll_equals_scoring_the_gold_choice():
    tok, model = char_tokenizer(), tiny_text_llama()
    items = quick_parts().test["mc_a"][:5]
    with torch.no_grad():
        mc = score_multiple_choice(model, tok, items, batch_size=2)
        direct = answer_nll(model, tok, items, batch_size=3)
    reused = mc_answer_nll(tok, items, mc.predictions)
    assert [r.tokens for r in reused] == [d.tokens for d in direct]
    for r, d in zip(reused, direct, strict=True):
        assert r.per_token == pytest.approx(d.per_token, rel=1e-5)
    with pytest.raises(ValueError, match="predictions"):
        mc_answer_nll(tok, items[:2], mc.predictions)


def test_quick_refuses_to_write_into_the_results_folder(tmp_path):
    with pytest.raises(SystemExit):
        quality.main(["--quick"])
    with pytest.raises(SystemExit):  # --only names a method that is not benchmarked
        quality.main(_argv(tmp_path, "--only", "dora"))


def test_matched_and_peft_baselines_run_in_the_pipeline(tmp_path):
    argv = ["--quick", "--out-dir", str(tmp_path / "q"), "--runs-dir", str(tmp_path / "runs"),
            "--methods", "moe-lora,fouriermoe,hydralora,peft_dora", "--seeds", "1",
            "--lrs", "1e-3"]  # fmt: skip
    assert quality.main(argv) == 0
    res = json.loads((tmp_path / "q.json").read_text())["aggregate"]["methods"]
    target = res["moe-lora"]["parameters"]["active_per_token"]
    for m in ("hydralora", "peft_dora"):  # matched to MoE-LoRA's active count (within 10 %)
        assert abs(res[m]["parameters"]["active_per_token"] - target) <= 0.1 * target
    assert "dropout=0.05" in res["peft_dora"]["parameters"]["config"]


def test_cells_made_with_other_settings_are_refused_not_mixed(done, capsys):
    with pytest.raises(SystemExit, match="other settings"):
        quality.main(_argv(done, "--steps", "3"))


def test_the_written_reading_is_marked_stale_when_the_cells_change(tmp_path):
    from _quality_report import READING_TAG, cells_fingerprint, reading_section

    cells = [{"method": "lora", "seed": 0, "tasks": {"t": {"items": [{"nll": 1.0}]}}}]
    fp_now = cells_fingerprint(cells)
    path = tmp_path / "reading.md"
    assert "No reading" in reading_section(path, fp_now)[0]
    path.write_text(f"{READING_TAG} {fp_now} -->\nLoRA wins.\n")
    assert reading_section(path, fp_now) == ["LoRA wins."]
    cells[0]["tasks"]["t"]["items"][0]["nll"] = 1.5  # one number changed
    later = reading_section(path, cells_fingerprint(cells))
    assert later[0].startswith("**Stale**") and later[-1] == "LoRA wins."
    assert cells_fingerprint(list(reversed(cells + cells[:0]))) == cells_fingerprint(cells)
