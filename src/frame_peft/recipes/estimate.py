"""Per-GPU memory and step FLOPs of a fine-tuning run, from shapes and parameter counts alone.

The dry run (:mod:`frame_peft.recipes.dry_run`) counts the parameters on the meta device; this
module turns those counts and the model's shapes into an estimate. Every term is a formula,
documented here and in ``docs/recipes.md`` ("Dry run"), and pinned by ``tests/test_dry_run.py``.
It is an estimate for planning (does the run fit, by how much), not a measurement: allocator
fragmentation, temporary buffers and kernel workspaces are covered only by the fixed
:data:`CUDA_CONTEXT_BYTES` reserve.

Notation: h hidden size, i FFN size, L decoder layers, kv = n_kv_heads·head_dim,
d_attn = n_heads·head_dim, V vocabulary, b micro-batch per GPU, s sequence length (data.max_length),
a bytes of one activation element (2 under bf16/fp16, else 4), W processes (GPUs).

Memory per GPU (bytes):

* ``weights`` — the frozen base in its dtype, divided by W under FSDP (every parameter is a
  dim-0 shard); 4-bit linear weights count 0.5625 B each (0.5 B + one fp32 absmax per 64).
* ``fsdp_gather`` — FSDP only: two decoder layers all-gathered at once (the current one and the
  prefetched next), ``2 · bytes(largest decoder layer)``.
* ``adapter``, ``grads``, ``optimizer`` — the trainable parameters in their own dtype (adapters
  stay float32), their gradients (same dtype) and AdamW's two moments (``zeros_like`` the
  parameter), each divided by W under FSDP. DDP adds ``ddp_buckets``: one more copy of the
  gradients (the reducer's buckets).
* ``activations`` — saved for the backward pass, per token and decoder layer (elements)::

      A_layer = 6h + 2kv + 4i
              = 2h (input RMSNorm in/out) + (h + 2kv) (q, k, v after RoPE, kept by attention)
                + h (attention output) + 2h (post-attention RMSNorm in/out)
                + 4i (gate, SiLU(gate), up, their product)

  (flash/SDPA attention: no s×s score matrix is kept), plus the adapters' own, per adapted
  module: ``d_in`` when its dropout p > 0 (the dropped copy of the input, plus a 1-byte mask)
  and ``r_eff = active / (d_in + d_out)`` (the low-rank intermediate; k·r for a top-k mixture).
  Without gradient checkpointing: ``b·s·(L·A_layer + Σ adapters)·a``; with it (HF checkpoints
  every decoder layer): ``b·s·(L·h + A_layer + Σ adapters / L)·a`` (the layer inputs, plus one
  layer recomputed at a time).
* ``logits`` — ``b·s·V·(a + 4 + 4)``: the logits, their float32 copy for the cross-entropy and
  its gradient.
* ``cuda_context`` — :data:`CUDA_CONTEXT_BYTES` (CUDA context, cuBLAS workspace, fragmentation).

Step FLOPs per GPU (one optimizer step, T = b·s·gradient_accumulation_steps tokens)::

    forward  = 2·N_lin·T + 4·L·s·d_attn·T + 2·N_act·T
    backward = 2·N_lin·T + 8·L·s·d_attn·T + 4·N_act·T
    recompute (gradient checkpointing) = forward

N_lin: the base's linear weights (decoder projections and the LM head; the embedding lookup is
free). The base is frozen, so its backward computes input gradients only (2·N_lin·T, no weight
gradients); attention scores and values are 4·s·d_attn per token forward (PaLM's convention, no
causal halving) and twice that backward. N_act: adapter parameters one token uses
(``active_per_token``), forward 2, backward 4 (input and weight gradients).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "CUDA_CONTEXT_BYTES",
    "AdaptedModule",
    "MemoryEstimate",
    "ModelShape",
    "activation_elements_per_layer",
    "estimate_memory",
    "eval_logits_bytes",
    "kv_cache_bytes",
    "step_flops",
]

GIB = 1024**3
CUDA_CONTEXT_BYTES = 1 * GIB


@dataclass(frozen=True)
class ModelShape:
    """The shapes of a decoder-only transformer that the estimate needs."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tie_embeddings: bool
    max_positions: int | None = None

    @property
    def kv(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def attn(self) -> int:
        return self.heads * self.head_dim

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """Read a ``transformers`` config (LLaMA/Qwen2 field names; GPT-2's are mapped)."""

        def pick(*names: str, default: Any = None) -> Any:
            for name in names:
                value = getattr(config, name, None)
                if value is not None:
                    return value
            return default

        hidden = pick("hidden_size", "n_embd")
        heads = pick("num_attention_heads", "n_head")
        if hidden is None or heads is None:
            raise ValueError(
                f"model config {type(config).__name__} has no hidden_size/num_attention_heads; "
                "the dry run supports decoder-only transformers configs (LLaMA, Qwen2, GPT-2)"
            )
        return cls(
            hidden=hidden,
            intermediate=pick("intermediate_size", "n_inner", default=4 * hidden),
            layers=pick("num_hidden_layers", "n_layer"),
            heads=heads,
            kv_heads=pick("num_key_value_heads", default=heads),
            head_dim=pick("head_dim", default=hidden // heads),
            vocab=pick("vocab_size"),
            tie_embeddings=bool(pick("tie_word_embeddings", default=False)),
            max_positions=pick("max_position_embeddings", "n_positions"),
        )


@dataclass(frozen=True)
class AdaptedModule:
    """One adapted module: its input/output widths, active adapter parameters, dropout on?"""

    d_in: int
    d_out: int
    active: int
    dropout: bool


def activation_elements_per_layer(shape: ModelShape) -> int:
    """``A_layer = 6h + 2kv + 4i`` elements per token (see the module docstring)."""
    return 6 * shape.hidden + 2 * shape.kv + 4 * shape.intermediate


def _adapter_activation_bytes(modules: list[AdaptedModule], a: int) -> float:
    """Per token, all layers: dropped input copies (a + 1 mask byte each) and ``r_eff``."""
    total = 0.0
    for m in modules:
        if m.dropout:
            total += m.d_in * (a + 1)
        total += a * m.active / (m.d_in + m.d_out)
    return total


@dataclass
class MemoryEstimate:
    """Bytes per GPU by term (see the module docstring); ``total`` is their sum."""

    weights: float
    fsdp_gather: float
    adapter: float
    grads: float
    optimizer: float
    ddp_buckets: float
    activations: float
    logits: float
    cuda_context: float

    @property
    def total(self) -> float:
        return sum(asdict(self).values())

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total}


def estimate_memory(
    shape: ModelShape,
    *,
    base_bytes: float,
    largest_layer_bytes: float,
    trainable_bytes: float,
    adapted: list[AdaptedModule],
    micro_batch: int,
    seq_len: int,
    act_bytes: int,
    gradient_checkpointing: bool,
    mode: str,
    world_size: int,
) -> MemoryEstimate:
    """Training memory per GPU (bytes), term by term; ``mode`` is ``none``, ``ddp`` or ``fsdp``.

    ``trainable_bytes``: Σ numel·element size of the trainable parameters (AdamW's moments have
    the parameter's dtype, so each moment costs ``trainable_bytes`` as well).
    """
    if mode not in ("none", "ddp", "fsdp"):
        raise ValueError(f"mode must be 'none', 'ddp' or 'fsdp', got {mode!r}")
    if world_size < 1 or micro_batch < 1 or seq_len < 1:
        raise ValueError("world_size, micro_batch and seq_len must be >= 1")
    shard = world_size if mode == "fsdp" else 1
    tokens = micro_batch * seq_len
    layer = activation_elements_per_layer(shape) * act_bytes
    adapters = _adapter_activation_bytes(adapted, act_bytes)
    if gradient_checkpointing:
        per_token = shape.layers * shape.hidden * act_bytes + layer + adapters / shape.layers
    else:
        per_token = shape.layers * layer + adapters
    return MemoryEstimate(
        weights=base_bytes / shard,
        fsdp_gather=2 * largest_layer_bytes if mode == "fsdp" and world_size > 1 else 0.0,
        adapter=trainable_bytes / shard,
        grads=trainable_bytes / shard,
        optimizer=2 * trainable_bytes / shard,
        ddp_buckets=trainable_bytes if mode == "ddp" else 0.0,
        activations=tokens * per_token,
        logits=tokens * shape.vocab * (act_bytes + 4 + 4),
        cuda_context=float(CUDA_CONTEXT_BYTES),
    )


def step_flops(
    shape: ModelShape,
    *,
    linear_params: int,
    active_params: int,
    tokens: int,
    seq_len: int,
    gradient_checkpointing: bool,
) -> dict[str, float]:
    """``{"forward", "backward", "recompute", "total"}`` FLOPs for ``tokens`` tokens per GPU."""
    attn = 4 * shape.layers * seq_len * shape.attn
    forward = float(tokens) * (2 * linear_params + attn + 2 * active_params)
    backward = float(tokens) * (2 * linear_params + 2 * attn + 4 * active_params)
    recompute = forward if gradient_checkpointing else 0.0
    return {
        "forward": forward,
        "backward": backward,
        "recompute": recompute,
        "total": forward + backward + recompute,
    }


def kv_cache_bytes(shape: ModelShape, batch: int, positions: int, act_bytes: int) -> float:
    """Generation's key/value cache: ``2 · L · kv · batch · positions · a`` bytes."""
    return 2.0 * shape.layers * shape.kv * batch * positions * act_bytes


def eval_logits_bytes(shape: ModelShape, batch: int, positions: int, act_bytes: int) -> float:
    """Multiple-choice scoring's logits, every position of a batch: ``batch · positions · V · a``
    (``evaluation/multiple_choice.py`` takes the log-softmax of the answer span only)."""
    return float(batch) * positions * shape.vocab * act_bytes
