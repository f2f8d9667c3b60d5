"""Multiple choice by log-likelihood: lm-eval's tokenisation rule, batched == one at a time."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

import frame_peft as fp
from _tokenizer import char_tokenizer, tiny_text_llama
from frame_peft.data.types import Example
from frame_peft.evaluation import encode_pair, loglikelihoods, score_multiple_choice

warnings.filterwarnings("ignore", category=UserWarning)


class WordTokenizer:
    """Words with their leading space are single tokens (" yes"), like a BPE vocabulary;
    optionally prepends a BOS id. Enough of the HF call interface for ``encode_pair``."""

    bos_token_id = 99
    eos_token_id = 98

    def __init__(self, add_bos: bool) -> None:
        self.add_bos, self.vocab = add_bos, {}

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        pieces = re.findall(r"\s*\S+|\s+", text)
        ids = [self.vocab.setdefault(p, len(self.vocab)) for p in pieces]
        if self.add_bos and add_special_tokens:
            ids = [self.bos_token_id, *ids]
        return {"input_ids": ids}


@pytest.mark.parametrize("add_bos", [False, True])
def test_encode_pair_moves_context_whitespace_into_the_continuation(add_bos):
    tok = WordTokenizer(add_bos)
    ctx, cont = encode_pair(tok, "Answer: ", "yes")
    assert cont == [tok.vocab[" yes"]]  # scored as the merged token " yes", not " " + "yes"
    assert ctx == ([99] if add_bos else []) + [tok.vocab["Answer:"]]
    ctx2, cont2 = encode_pair(tok, "Answer:", " yes")
    assert (ctx2, cont2) == (ctx, cont)


def test_encode_pair_empty_context_uses_bos_then_eos():
    tok = WordTokenizer(add_bos=False)
    ctx, cont = encode_pair(tok, "", " yes")
    assert ctx == [99] and cont == [tok.vocab[" yes"]]
    tok.bos_token_id = None
    assert encode_pair(tok, "", " yes")[0] == [98]
    with pytest.raises(ValueError, match="empty continuation"):
        encode_pair(tok, "Q:", "")


def _examples() -> list[Example]:
    prompts = [
        "Question: which is larger, 3 or 7?\nAnswer:",
        "Q: sky colour?\nA: ",  # trailing space moves into every choice
        "Pick one:",
        "A much longer prompt that forces padding in every batch it lands in.\nAnswer:",
        "x",
    ]
    choices = [
        (" 3", " 7"),
        ("blue", "green", "a deep shade of red"),
        (" alpha", " beta", " gamma", " delta"),
        (" ok", " not ok at all, by a long way"),
        (" y", " z"),
    ]
    return [
        Example(task="toy", uid=str(i), prompt=p, choices=c, label=i % len(c))
        for i, (p, c) in enumerate(zip(prompts, choices, strict=True))
    ]


def _reference(model, tok, prompt: str, choice: str) -> float:
    """One unpadded forward of prompt + choice; every char is a token, so the continuation is
    the last len(choice) tokens plus the prompt's trailing whitespace (lm-eval moves it)."""
    full = tok(prompt + choice)["input_ids"]
    n = len(choice) + len(prompt) - len(prompt.rstrip())
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0].float()
    logp = logits[:-1].log_softmax(-1)
    target = torch.tensor(full[-n:])
    return logp[-n:].gather(-1, target[:, None]).sum().item()


def tiny_text_gpt2():
    """GPT-2 (absolute position embeddings) sized for the character tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(5)
    cfg = GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=256)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return tiny_text_llama(seed=3), char_tokenizer()


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("batch_size", [1, 3, 16])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_loglikelihoods_equal_unbatched_reference(
    model_and_tokenizer, padding_side, batch_size, arch
):
    model, tok = model_and_tokenizer
    if arch == "gpt2":  # absolute positions: left padding is only right with position_ids
        model = tiny_text_gpt2()
    examples = _examples()
    pairs = [(ex.prompt, c) for ex in examples for c in ex.choices]
    got = loglikelihoods(model, tok, pairs, batch_size=batch_size, padding_side=padding_side)
    want = [_reference(model, tok, p, c) for p, c in pairs]
    assert [g for g, _ in got] == pytest.approx(want, abs=2e-4)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_acc_and_acc_norm_match_the_reference_argmaxes(model_and_tokenizer, padding_side):
    model, tok = model_and_tokenizer
    examples = _examples()
    out = score_multiple_choice(model, tok, examples, batch_size=4, padding_side=padding_side)
    acc = acc_norm = 0
    for ex, pred in zip(examples, out.predictions, strict=True):
        lls = [_reference(model, tok, ex.prompt, c) for c in ex.choices]
        norm = [ll / len(c.lstrip()) for ll, c in zip(lls, ex.choices, strict=True)]
        assert pred["pred"] == max(range(len(lls)), key=lls.__getitem__)
        assert pred["pred_norm"] == max(range(len(norm)), key=norm.__getitem__)
        acc += pred["pred"] == ex.label
        acc_norm += pred["pred_norm"] == ex.label
    assert out.metrics == {"acc": acc / len(examples), "acc_norm": acc_norm / len(examples)}


def test_adapted_model_batched_equals_unbatched():
    tok = char_tokenizer()
    cfg = fp.FrameConfig(
        target_modules=["q_proj", "v_proj"], num_experts=4, top_k=2, rank=2, dropout=0.0
    )
    model = fp.inject(tiny_text_llama(seed=1), cfg)
    with torch.no_grad():  # non-zero B so the routed experts change the logits
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    pairs = [(ex.prompt, c) for ex in _examples() for c in ex.choices]
    batched = loglikelihoods(model, tok, pairs, batch_size=8, padding_side="left")
    alone = loglikelihoods(model, tok, pairs, batch_size=1)
    assert [b for b, _ in batched] == pytest.approx([a for a, _ in alone], abs=2e-4)
    base = loglikelihoods(fp.unload(model), tok, pairs[:2], batch_size=1)
    assert [b for b, _ in base] != pytest.approx([a for a, _ in alone[:2]], abs=1e-3)


def test_errors_name_the_problem(model_and_tokenizer):
    model, tok = model_and_tokenizer
    math_ex = Example(task="gsm", uid="0", prompt="1+1=", answer="2")
    with pytest.raises(ValueError, match="not multiple choice"):
        score_multiple_choice(model, tok, [math_ex])
    with pytest.raises(ValueError, match="padding_side"):
        loglikelihoods(model, tok, [("a", "b")], padding_side="middle")
    with pytest.raises(ValueError, match="longer than the model"):
        loglikelihoods(model, tok, [("a", "b" * 20)], max_length=8)
