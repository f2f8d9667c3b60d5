"""Data of the benchmark of record (``quality.py``): three disjoint parts per task, and ``--quick``.

Real data (SmolLM2 tokenizer, shipped validation sets, ``frame_peft.data``): for every
multiple-choice task (ARC-Easy, BoolQ, PIQA) and GSM8K,

1. ``split_examples(all, eval_size=test, seed=split_seed)`` -> ``rest``, **test** (scored once per
   cell, never trained on, never used to choose anything);
2. ``split_examples(rest, eval_size=val, seed=split_seed + 1)`` -> ``pool``, **val** (the
   learning-rate sweep's selection set);
3. **train** = up to ``train`` items drawn from ``pool`` (seeded); ARC-Challenge (not evaluated)
   is added to training because ARC-Easy has only 570 items and 500 are held out; math training
   problems are reasoning-gym's (generated, avoiding every GSM8K test and val item's template).

``check_disjoint`` is run on train vs test + val and on val vs test, across tasks. The prompt
format is the tasks' own zero-shot format (``Question: ...\\nAnswer:``), no chat template: the
instruct model's chat template puts the answer after ``<|im_start|>assistant\\n``, which the
multiple-choice scoring (lm-eval's, continuation after the raw prompt) does not use.

``--quick``: a character tokenizer and synthetic items (two tiny multiple-choice tasks whose
answer is the sum of two digits, one math task with ``#### <answer>``), no assets, seconds.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from typing import Any

from frame_peft.data import Example, check_disjoint, get_task, split_examples

MC_TASKS = ("arc_easy", "boolq", "piqa")
MATH_TASK = "gsm8k"


@dataclass
class Parts:
    """``train``/``val``/``test`` examples by task, and the record of how they were drawn."""

    train: dict[str, list[Example]]
    val: dict[str, list[Example]]
    test: dict[str, list[Example]]
    records: list[dict[str, Any]] = field(default_factory=list)

    def sizes(self) -> dict[str, dict[str, int]]:
        return {
            part: {t: len(v) for t, v in getattr(self, part).items()}
            for part in ("train", "val", "test")
        }


def _draw(examples: list[Example], n: int, seed: int, task: str) -> list[Example]:
    ordered = sorted(examples, key=lambda e: e.uid)
    random.Random(f"{seed}:{task}").shuffle(ordered)
    return ordered[:n] if n else ordered


def _flat(parts: dict[str, list[Example]]) -> list[Example]:
    return [ex for exs in parts.values() for ex in exs]


def real_parts(sizes: dict[str, Any], split_seed: int = 0) -> Parts:
    """The parts of the module docstring; ``sizes`` = ``{"test": {task: n}, "val": n,
    "train": n, "math_train": n}`` (``train``: per multiple-choice task, ``0``: all of the pool)."""
    from frame_peft.data import reasoning_gym_math

    train: dict[str, list[Example]] = {}
    val: dict[str, list[Example]] = {}
    test: dict[str, list[Example]] = {}
    records = []
    for task in (*MC_TASKS, MATH_TASK):
        examples = get_task(task).load("offline")
        n_test = sizes["test"][task]
        if n_test + sizes["val"] >= len(examples):
            raise ValueError(
                f"{task}: {n_test} test + {sizes['val']} val items leave nothing of its "
                f"{len(examples)} items to train on; lower --test-items or --val-items"
            )
        rest, test[task], rec = split_examples(examples, eval_size=n_test, seed=split_seed)
        pool, val[task], _ = split_examples(rest, eval_size=sizes["val"], seed=split_seed + 1)
        if task in MC_TASKS:
            train[task] = _draw(pool, sizes["train"], split_seed, task)
        records.append({**rec.to_dict(), "val": len(val[task]), "pool": len(pool),
                        "train_used": len(train.get(task, []))})  # fmt: skip
    train["arc_challenge"] = _draw(
        get_task("arc_challenge").load("offline"), sizes["train"], split_seed, "arc_challenge"
    )
    held = [*test[MATH_TASK], *val[MATH_TASK]]
    train["reasoning_gym_math"] = reasoning_gym_math(
        sizes["math_train"], seed=split_seed, avoid=held
    )
    check_disjoint(_flat(train), [*_flat(test), *_flat(val)])
    check_disjoint(_flat(val), _flat(test))
    return Parts(train, val, test, records)


# --quick -----------------------------------------------------------------------------------------


def char_tokenizer():
    """Every printable character is one token (ids 0/1/2: pad, eos, unk); no downloads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    tok.padding_side = "right"
    return tok


def tiny_text_llama(seed: int = 0):
    """A random 2-block Llama (hidden 32, vocab 128) for :func:`char_tokenizer`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=0, eos_token_id=1, bos_token_id=None,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def _sum_item(task: str, i: int, rng: random.Random, math: bool) -> Example:
    a, b = rng.randint(0, 4), rng.randint(0, 4)
    prompt = f"Q{i}: {a}+{b}?\nA:"
    if math:
        return Example(task=task, uid=str(i), prompt=prompt, target=f" {a + b}\n#### {a + b}",
                       answer=str(a + b))  # fmt: skip
    wrong = (a + b + 1 + rng.randint(0, 2)) % 10
    choices = [f" {a + b}", f" {wrong}"]
    label = rng.randint(0, 1)
    if label == 1:
        choices.reverse()
    return Example(task=task, uid=str(i), prompt=prompt, choices=tuple(choices), label=label,
                   target=choices[label])  # fmt: skip


def quick_parts(test: int = 12, val: int = 6, train: int = 24) -> Parts:
    """Synthetic parts for ``--quick``: tasks ``mc_a``, ``mc_b`` (two choices) and ``math_a``."""
    rng = random.Random(0)
    parts = Parts({}, {}, {})
    for task, math in (("mc_a", False), ("mc_b", False), ("math_a", True)):
        items = [_sum_item(task, i, rng, math) for i in range(test + val + train)]
        parts.test[task] = items[:test]
        parts.val[task] = items[test : test + val]
        parts.train[task] = items[test + val :]
    return parts
