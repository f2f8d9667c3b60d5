"""Parameter accounting without weights: total, trainable and active-per-token counts per method.

``parameter_table`` builds the model from a ``transformers`` config on the meta device (no memory,
no download), injects each method there and counts with :func:`frame_peft.count_parameters` (or
PEFT's counts for PEFT baselines), so an 8B table takes seconds. Every frame-peft adapter
initialises on meta (FourierMoE positions and FlyLoRA's sparse A are drawn on the CPU and moved),
and ``tests/test_accounting.py`` checks the meta counts against a real model.

Print the tables of ``docs/parameters.md``::

    OMP_NUM_THREADS=1 python -m frame_peft.accounting
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from ._tables import markdown_table as _markdown_table
from .core.config import AdapterConfig
from .core.inject import count_parameters, inject


@dataclass
class PeftMethod:
    """A PEFT baseline for :func:`parameter_table`: ``peft_baseline(model, method, **kwargs)``."""

    method: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def _meta_model(model_config):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model_config)


def parameter_table(
    model_config, methods: dict[str, AdapterConfig | PeftMethod]
) -> list[dict[str, Any]]:
    """One row per method: ``{"method", "total", "trainable", "active_per_token", "base",
    "trainable_pct", "active_pct", "note"}``; percentages are of the base model's parameters
    (tied embeddings counted once). A method that cannot be counted gets ``None`` counts and the
    reason in ``note``."""
    base = sum(p.numel() for p in _meta_model(model_config).parameters())
    rows = []
    for name, cfg in methods.items():
        row: dict[str, Any] = {"method": name, "base": base, "note": ""}
        try:
            model = _meta_model(model_config)
            if isinstance(cfg, PeftMethod):
                from .peft_bridge import peft_baseline, peft_count_parameters

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = peft_baseline(model, cfg.method, **cfg.kwargs)
                counts = peft_count_parameters(model)
                row["note"] = "PEFT"
            elif isinstance(cfg, AdapterConfig):
                counts = count_parameters(inject(model, cfg))
            else:
                raise TypeError(
                    f"methods[{name!r}] must be an AdapterConfig or a PeftMethod, got "
                    f"{type(cfg).__name__}"
                )
        except (ValueError, RuntimeError, NotImplementedError) as err:
            row.update(total=None, trainable=None, active_per_token=None)
            row.update(trainable_pct=None, active_pct=None, note=f"skipped: {err}")
            rows.append(row)
            continue
        row.update(counts)
        row["trainable_pct"] = 100.0 * counts["trainable"] / base
        row["active_pct"] = 100.0 * counts["active_per_token"] / base
        rows.append(row)
    return rows


def _fmt(n: int | None) -> str:
    if n is None:
        return "—"
    if n >= 1e9:
        return f"{n / 1e9:.3f} B"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    return f"{n / 1e3:.1f} K" if n >= 1e3 else str(n)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f} %"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`parameter_table` as a markdown table (docs/parameters.md's form)."""
    headers = ["method", "total", "trainable", "trainable %", "active / token", "active %", "note"]
    cells = [
        [
            r["method"],
            _fmt(r["total"]),
            _fmt(r["trainable"]),
            _pct(r["trainable_pct"]),
            _fmt(r["active_per_token"]),
            _pct(r["active_pct"]),
            r["note"],
        ]
        for r in rows
    ]
    return _markdown_table(headers, cells, align="lrrrrrl")


def default_methods() -> dict[str, AdapterConfig | PeftMethod]:
    """The comparison of docs/parameters.md: every method on all linear layers but the head."""
    from .methods import (
        FlyLoRAConfig,
        FourierMoEConfig,
        FrameConfig,
        HMoRAConfig,
        HydraLoRAConfig,
        LoRAConfig,
        MixLoRAConfig,
        MoELoRAConfig,
    )

    t = "all-linear"
    return {
        "lora r=8": LoRAConfig(target_modules=t, rank=8),
        "moe-lora E8 k2 r4": MoELoRAConfig(target_modules=t, num_experts=8, top_k=2, rank=4),
        "frame E8 k2 r4": FrameConfig(target_modules=t, num_experts=8, top_k=2, rank=4),
        "fouriermoe (defaults)": FourierMoEConfig(target_modules=t),
        "hydralora (defaults)": HydraLoRAConfig(target_modules=t),
        "flylora (defaults)": FlyLoRAConfig(target_modules=t),
        "mixlora (defaults)": MixLoRAConfig(target_modules=t),
        "hmora (defaults)": HMoRAConfig(target_modules=t),
        "hmora (simplified)": HMoRAConfig.simplified(target_modules=t),
        "PEFT dora r=8": PeftMethod("dora"),
        "PEFT fourierft n=1000": PeftMethod("fourierft"),
        "PEFT adalora init_r=12 target_r=8": PeftMethod("adalora", {"total_step": 1000}),
    }


SMOLLM2_135M = dict(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
)  # fmt: skip
LLAMA31_8B = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False,
)  # fmt: skip


def model_configs() -> dict[str, Any]:
    """Shapes of SmolLM2-135M and LLaMA-3.1-8B as ``LlamaConfig`` (no download)."""
    from transformers import LlamaConfig

    return {
        "SmolLM2-135M": LlamaConfig(**SMOLLM2_135M),
        "LLaMA-3.1-8B": LlamaConfig(**LLAMA31_8B),
    }


def main() -> None:
    for name, cfg in model_configs().items():
        rows = parameter_table(cfg, default_methods())
        print(f"### {name} (base {_fmt(rows[0]['base'])} parameters)\n")
        print(markdown_table(rows))
        print()


if __name__ == "__main__":
    main()
