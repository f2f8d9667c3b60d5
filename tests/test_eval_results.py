"""EvalResults (averages, JSON, markdown, comparison table) and the ``evaluate`` runner."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import frame_peft as fp
from _tokenizer import char_tokenizer, tiny_text_llama
from frame_peft.data.types import Example
from frame_peft.evaluation import (
    EvalResults,
    TaskResult,
    comparison_table,
    evaluate,
    infer_kind,
    score_multiple_choice,
)

warnings.filterwarnings("ignore", category=UserWarning)


def _results(method: str, scale: float = 1.0) -> EvalResults:
    mc, cs = "multiple_choice", "commonsense"
    tasks = {
        "arc_easy": TaskResult("arc_easy", mc, cs, 10, {"acc": 0.6 * scale, "acc_norm": 0.5}),
        "piqa": TaskResult("piqa", mc, cs, 20, {"acc": 0.8 * scale, "acc_norm": 0.7}),
        "gsm8k": TaskResult("gsm8k", "math", "math", 5, {"exact_match": 0.2 * scale}),
        "humaneval": TaskResult("humaneval", "code", "code", 4, {"pass@1": 0.25 * scale}),
    }
    params = {"total": 1100, "trainable": 100, "active_per_token": 25, "base": 1000}
    return EvalResults(tasks, {"method": method, "parameters": params, "seed": 0})


def test_primary_metrics_and_averages():
    r = _results("frame")
    assert r.primary() == {"arc_easy": 0.6, "piqa": 0.8, "gsm8k": 0.2, "humaneval": 0.25}
    assert r.family_averages() == pytest.approx({"commonsense": 0.7, "math": 0.2, "code": 0.25})
    assert list(r.family_averages()) == ["commonsense", "math", "code"]  # FAMILIES order
    assert r.overall == pytest.approx((0.6 + 0.8 + 0.2 + 0.25) / 4)  # mean over tasks
    assert r.active_params_pct == pytest.approx(2.5)
    assert EvalResults().overall is None


def test_task_result_validation():
    with pytest.raises(ValueError, match="kind 'essay'"):
        TaskResult("t", "essay", "other", 1, {"acc": 1.0})
    with pytest.raises(ValueError, match="primary metric 'exact_match'"):
        TaskResult("t", "math", "math", 1, {"acc": 1.0})
    with pytest.raises(ValueError, match="n must be"):
        TaskResult("t", "code", "code", -1, {"pass@1": 1.0})


def test_json_round_trip_and_predictions_jsonl(tmp_path):
    r = _results("frame")
    r.predictions = {"gsm8k": [{"uid": "a", "pred": "3", "correct": False}]}
    path = r.save_json(tmp_path / "deep" / "eval.json")
    data = json.loads(path.read_text())
    assert data["overall"] == pytest.approx(r.overall)
    assert data["tasks"]["gsm8k"]["primary_metric"] == "exact_match"
    back = EvalResults.load_json(path)
    assert back == r and back.family_averages() == r.family_averages()
    lines = r.save_predictions(tmp_path / "preds.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [
        {"task": "gsm8k", "uid": "a", "pred": "3", "correct": False}
    ]
    with pytest.raises(ValueError, match="format"):
        EvalResults.from_dict({"tasks": {}})


def test_markdown_and_comparison_table():
    md = _results("frame").to_markdown()
    assert "| arc_easy | commonsense | multiple_choice | 10 | acc | 60.0 | acc_norm 50.0 |" in md
    assert "| **commonsense avg** |  |  |  |  | 70.0 |  |" in md
    assert "2.500% of base" in md
    a, b = _results("lora", scale=0.5), _results("frame")
    del b.tasks["humaneval"]
    table = comparison_table([a, b], names=["LoRA", "FRAME"]).splitlines()
    assert table[0] == (
        "| method | arc_easy | piqa | gsm8k | humaneval | commonsense avg | math avg | code avg "
        "| overall | active % |"
    )
    assert table[2] == "| LoRA | 30.0 | 40.0 | 10.0 | 12.5 | 35.0 | 10.0 | 12.5 | 23.1 | 2.500 |"
    assert table[3] == "| FRAME | 60.0 | 80.0 | 20.0 | – | 70.0 | 20.0 | – | 53.3 | 2.500 |"
    assert comparison_table([a]).splitlines()[2].startswith("| lora |")
    with pytest.raises(ValueError, match="names"):
        comparison_table([a, b], names=["one"])


def test_infer_kind():
    mc = Example(task="t", uid="0", prompt="p", choices=(" a", " b"), label=0)
    code = Example(task="t", uid="1", prompt="p", tests="assert True", entry_point="f")
    math = Example(task="t", uid="2", prompt="p", answer="3")
    assert [infer_kind([e]).value for e in (mc, code, math)] == [
        "multiple_choice",
        "code",
        "math",
    ]
    with pytest.raises(ValueError, match="mix"):
        infer_kind([mc, math])
    with pytest.raises(ValueError, match="cannot tell"):
        infer_kind([Example(task="t", uid="3", prompt="p")])


MC = [
    Example(task="toy_mc", uid=str(i), prompt=f"Q{i}: pick\nA:", choices=(" a", " bb"), label=i % 2)
    for i in range(4)
]
CODE = [
    Example(
        task="toy_code",
        uid=str(i),
        prompt="def add(a, b):\n    return a + b\n# ",  # the completion stays in a comment
        tests=f"assert add(1, 2) == {3 + i}\n",
        entry_point="add",
        meta={"stop": "\n"},
    )
    for i in range(2)
]


def _perturb(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    return model


def _frame_model():
    cfg = fp.FrameConfig(target_modules=["q_proj", "v_proj"], num_experts=4, top_k=2, rank=2)
    return _perturb(fp.inject(tiny_text_llama(seed=4), cfg))


def _peft_model():
    pytest.importorskip("peft")
    return _perturb(fp.peft_baseline(tiny_text_llama(seed=4), "lora", r=2))


@pytest.mark.parametrize("kind", ["base", "frame", "peft"])
def test_evaluate_mc_and_code_for_every_kind_of_model(kind):
    tok = char_tokenizer()
    model = {"base": lambda: tiny_text_llama(seed=4), "frame": _frame_model, "peft": _peft_model}[
        kind
    ]()
    model.train()
    res = evaluate(
        model,
        tok,
        {"toy_mc": MC, "toy_code": CODE},
        batch_size=3,
        max_new_tokens=8,
        code_timeout=5,
        code_workers=2,
        progress=False,
        metadata={"seed": 7, "splits": {"toy_mc": "all"}},
    )
    assert model.training and all(m.training for m in model.modules())  # restored
    mc = res.tasks["toy_mc"]
    model.eval()
    assert mc.metrics == score_multiple_choice(model, tok, MC).metrics
    assert (mc.kind, mc.family, mc.n, mc.primary_metric) == ("multiple_choice", "other", 4, "acc")
    code = res.tasks["toy_code"]
    assert code.metrics == {"pass@1": 0.5}, res.predictions["toy_code"]
    assert [p["status"] for p in res.predictions["toy_code"]] == ["passed", "failed"]
    assert res.overall == pytest.approx((mc.metrics["acc"] + 0.5) / 2)
    meta = res.metadata
    assert meta["seed"] == 7 and meta["splits"] == {"toy_mc": "all"}
    assert set(meta["timings"]["tasks"]) == {"toy_mc", "toy_code"}
    params = meta["parameters"]
    counted = fp.peft_bridge.count_parameters(model)
    assert {k: params[k] for k in counted} == counted
    if kind == "base":
        assert meta["method"] == "base" and params["base"] == params["total"]
        assert params["active_per_token"] == 0
    else:
        assert params["base"] == sum(p.numel() for p in tiny_text_llama().parameters())
        assert meta["method"] == ("frame" if kind == "frame" else "peft:lora")
        assert 0 < params["active_per_token"] <= params["trainable"]
    assert EvalResults.from_dict(json.loads(json.dumps(res.to_dict()))) == res


def test_evaluate_refuses_empty_input():
    tok, model = char_tokenizer(), tiny_text_llama()
    with pytest.raises(ValueError, match="at least one task"):
        evaluate(model, tok, {}, progress=False)
    with pytest.raises(ValueError, match="no examples"):
        evaluate(model, tok, {"t": []}, progress=False)
