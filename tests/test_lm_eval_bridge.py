"""lm-eval bridge: an in-memory adapted model on local JSONL tasks agrees with our own scorer."""

from __future__ import annotations

import warnings

import pytest
import torch

import frame_peft as fp
from _tokenizer import char_tokenizer, tiny_text_llama
from frame_peft.data.types import Example
from frame_peft.evaluation import (
    evaluate_with_lm_eval,
    lm_eval_metrics,
    loglikelihoods,
    score_multiple_choice,
    write_local_task_yaml,
)

pytest.importorskip("lm_eval", reason="lm-eval is optional: pip install 'lm-eval==0.4.*'")
warnings.filterwarnings("ignore", category=UserWarning)

SPACED = [  # every choice starts with a space: stored stripped, target_delimiter " "
    Example(task="toy_spaced", uid=f"s{i}", prompt=p, choices=c, label=lab)
    for i, (p, c, lab) in enumerate(
        [
            ("Question: 2+2?\nAnswer:", (" 4", " 5", " twenty-two"), 0),
            ("Question: sky?\nAnswer:", (" blue", " green"), 0),
            ("Pick:", (" alpha", " beta", " gamma", " delta"), 2),
            ("A longer prompt so that the batch needs padding.\nAnswer:", (" yes", " no"), 1),
            ("x", (" y", " z z z"), 1),
        ]
    )
]
RAW = [  # choices without a shared leading space: stored as is, target_delimiter ""
    Example(task="toy_raw", uid=f"r{i}", prompt=p, choices=c, label=lab)
    for i, (p, c, lab) in enumerate(
        [
            ("The colour is ", ("red", "blue", "a dark green"), 1),  # trailing-space context
            ("1+1=", ("2", " 3", "11"), 0),
            ("Say hi:", ("\nhi", " hello there"), 0),
        ]
    )
]


def _adapted_model():
    cfg = fp.FrameConfig(
        target_modules=["q_proj", "v_proj"], num_experts=4, top_k=2, rank=2, dropout=0.0
    )
    model = fp.inject(tiny_text_llama(seed=6), cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    return model.eval()


def test_lm_eval_matches_our_scorer_on_local_tasks(tmp_path):
    tok, model = char_tokenizer(), _adapted_model()
    out = evaluate_with_lm_eval(
        model,
        tok,
        [],
        local_tasks={"toy_spaced": SPACED, "toy_raw": RAW},
        batch_size=4,
        log_samples=True,
    )
    metrics = lm_eval_metrics(out)
    for name, examples in (("toy_spaced", SPACED), ("toy_raw", RAW)):
        samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
        assert [s["doc"]["uid"] for s in samples] == [ex.uid for ex in examples]
        theirs = [ll for s in samples for ll, _ in s["filtered_resps"]]
        pairs = [(ex.prompt, c) for ex in examples for c in ex.choices]
        ours = [a for a, _ in loglikelihoods(model, tok, pairs)]
        assert ours == pytest.approx(theirs, abs=1e-4)  # same strings, same tokens, same scores
        mc = score_multiple_choice(model, tok, examples, batch_size=4)
        assert metrics[name]["acc"] == pytest.approx(mc.metrics["acc"])
        if name == "toy_spaced":
            assert metrics[name]["acc_norm"] == pytest.approx(mc.metrics["acc_norm"])
        else:
            # stored as is with target_delimiter "": lm-eval's acc_norm divides by len(choice)
            # *including* its leading whitespace, ours by len(choice.lstrip()), documented.
            lls = iter(ours)
            hits = 0
            for ex in examples:
                norm = [next(lls) / len(c) for c in ex.choices]
                hits += max(range(len(norm)), key=norm.__getitem__) == ex.label
            assert metrics[name]["acc_norm"] == pytest.approx(hits / len(examples))
            assert metrics[name]["acc_norm"] != pytest.approx(mc.metrics["acc_norm"])
    # the adapters are live inside lm-eval: the base model scores differently
    base = [a for a, _ in loglikelihoods(fp.unload(model), tok, pairs)]
    assert base != pytest.approx(theirs, abs=1e-3)


def test_write_local_task_yaml(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "Q:", "choices": ["a", "b"], "label": 0}\n')
    path = write_local_task_yaml(tmp_path / "tasks", "my_task", data, target_delimiter="")
    text = path.read_text()
    assert path.name == "my_task.yaml"
    assert "dataset_path: json" in text and str(data.resolve()) in text
    assert 'target_delimiter: ""' in text and "output_type: multiple_choice" in text
    with pytest.raises(ValueError, match="dataset_path"):
        write_local_task_yaml(tmp_path, "t", data, dataset_path="sql")
    with pytest.raises(ValueError, match="task name"):
        write_local_task_yaml(tmp_path, "bad name!", data)
