"""A character-level fast tokenizer (no downloads) and tiny causal LMs sized for it.

Every printable ASCII character and newline is one token, so prompts, choices and code round-trip
exactly; ids 0/1/2 are ``<pad>``, ``<eos>``, ``<unk>``. Use with :func:`tiny_text_llama` (vocab
128) wherever a test needs real text.
"""

from __future__ import annotations

import string

import torch
from torch import nn

TEXT_VOCAB = 128

#: Eight short texts for tiny Trainer runs (4 micro-batches of 2).
TINY_TEXTS = [
    "hello world",
    "a b c d e f",
    "frame peft",
    "mixture of experts!",
    "xyz",
    "tiny text 12",
    "one more",
    "the eighth",
]
_SPECIALS = ["<pad>", "</s>", "<unk>"]


def char_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {tok: i for i, tok in enumerate(_SPECIALS + chars)}
    assert len(vocab) <= TEXT_VOCAB
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    tok.padding_side = "right"
    return tok


def tiny_text_llama(seed: int = 0, layers: int = 2) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=TEXT_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=0, eos_token_id=1, bos_token_id=None,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()
