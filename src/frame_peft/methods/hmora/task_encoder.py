"""HMoRA's model-level task encoder: one task representation per sequence, shared by all layers.

As in the authors' ``TaskEncoder`` (``hmora/model.py``): the prompt's input embeddings of each
sequence, left-packed to (B, P, D) (the authors tokenise the prompt alone with left padding), get
sinusoidal positions aligned to the right end of a 5000-position table, a learned task token
τ (D,) is appended without position, and a post-norm Transformer encoder (ReLU FFN of width 2D,
``heads`` heads, dropout) reads the task token's output::

    e_j   = emb(prompt token j) + PE(5000 − P + j),   j = 0 … P−1        (B, P, D)
    z     = Encoder([e_0 … e_{P−1}, τ], key padding = prompt padding)[P]   (B, D)

One :class:`TaskContext` per injection (``RoutingState.shared``) references the encoder, which
the first HMoRA adapter built owns (registers, saves, moves); every routed adapter asks it for z.

Which tokens are the prompt, per forward of the model (B, S): ``routing_context(prompt_mask=)``
if given; else, when the model is called with ``labels``, the valid positions before each row's
first supervised label (labels ≠ −100); else every valid position (attention mask). Without any
prompt boundary a training forward lets the encoder read the whole sequence, answer included.

Reuse across forwards (generation): a cached decoding step (layer input shorter than the attention
mask) reuses the z of the prompt forward; so does a no-grad forward whose ``input_ids`` extend the
previous forward's ids (uncached ``generate``), so decoding with and without the KV cache route
identically. Beam search (cache reordering) is not tracked. z is computed once per forward and
shared by the layers (``scratch``) when the forward is not gradient-checkpointed; under
checkpointing each routed module recomputes it inside its own checkpointed region.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...routing import RoutingState

MAX_POSITIONS = 5000  # the authors' positional table length; positions are right-aligned to it
_SCRATCH = "hmora.task"
_PREPARED = "hmora.prepared"


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal encoding (P, dim) of float positions (P,): sin on even, cos on odd columns."""
    div = torch.exp(
        torch.arange(0, dim, 2, device=positions.device).float() * (-math.log(10000.0) / dim)
    )
    angle = positions.float().unsqueeze(-1) * div
    pe = torch.zeros(positions.shape[0], dim, device=positions.device)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : dim // 2])
    return pe


def left_pack(x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept positions of each row of ``x`` (B, S, D), in order, right-aligned (left padding):
    ``(packed (B, P, D), valid (B, P) bool)`` with P the largest kept count (zeros where padded)."""
    keep = keep.bool()
    count = keep.sum(1)
    p = int(count.max()) if keep.numel() else 0
    packed = x.new_zeros(x.shape[0], p, x.shape[-1])
    valid = torch.zeros(x.shape[0], p, dtype=torch.bool, device=x.device)
    if p == 0:
        return packed, valid
    dest = (p - count).unsqueeze(1) + torch.cumsum(keep.long(), 1) - 1  # (B, S)
    rows, cols = keep.nonzero(as_tuple=True)
    packed = packed.index_put((rows, dest[rows, cols]), x[rows, cols])
    valid[rows, dest[rows, cols]] = True
    return packed, valid


class TaskEncoder(nn.Module):
    """The authors' encoder: right-aligned sinusoidal positions, appended task token, a post-norm
    ``nn.TransformerEncoder`` (ReLU, FFN 2D); returns the task token's output (B, D)."""

    def __init__(self, dim: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(
                f"HMoRA's task encoder has width {dim} (the model's embedding width), which "
                f"task_encoder_heads={heads} does not divide; pick a divisor of {dim}"
            )
        self.dim = dim
        self.task_token = nn.Parameter(torch.randn(1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x (B, P, D) left-padded prompt embeddings, valid (B, P) bool -> z (B, D)."""
        b, p, _ = x.shape
        start = MAX_POSITIONS - p
        pos = torch.arange(start, start + p, device=x.device)
        src = x.float() + sinusoid(pos, self.dim).to(x.device)
        src = torch.cat([src, self.task_token.float().expand(b, 1, -1)], dim=1)
        pad = torch.cat([~valid, valid.new_zeros(b, 1)], dim=1)
        return self.encoder(src, src_key_padding_mask=pad)[:, -1]


def prompt_keep(state: RoutingState, b: int, s: int, device: torch.device) -> torch.Tensor:
    """(B, S) bool: the prompt positions of this forward (module docstring)."""
    rec = state.current
    mask = rec.attention_mask
    valid = (
        mask.to(device).bool()
        if mask is not None and tuple(mask.shape) == (b, s)
        else torch.ones(b, s, dtype=torch.bool, device=device)
    )
    if rec.prompt_mask is not None and tuple(rec.prompt_mask.shape) == (b, s):
        return valid & rec.prompt_mask.to(device).bool()
    labels = rec.labels
    if labels is not None and tuple(labels.shape) == (b, s):
        supervised = labels.to(device) != -100
        before = torch.cumsum(supervised.long(), 1) == 0  # before the first supervised label
        return valid & before
    return valid


class TaskContext:
    """Per injection: the shared encoder and the last prompt's z (for decoding steps)."""

    def __init__(self, encoder: TaskEncoder) -> None:
        self.encoder = encoder
        self.last: dict[str, Any] | None = None

    def representation(
        self, state: RoutingState, route_x: torch.Tensor, lead: torch.Size, name: str
    ) -> torch.Tensor:
        """z (B, D) float32 for the sequences of a layer input with leading shape ``lead``."""
        rec = state.current
        cached = rec.scratch.get(_SCRATCH)
        if (
            cached is not None
            and tuple(cached.shape[:1]) == (_batch(lead),)
            and (cached.requires_grad or not torch.is_grad_enabled() or not self._trainable())
        ):  # a z from a no-grad pass (reentrant checkpointing) is not reused with grad on
            return cached
        z = self._compute(state, route_x, lead, name)
        shareable = rec.from_model and (
            not torch.is_grad_enabled() or rec.scratch.get(_PREPARED, False)
        )
        if shareable:
            rec.scratch[_SCRATCH] = z
        return z

    def _trainable(self) -> bool:
        return any(p.requires_grad for p in self.encoder.parameters())

    def _compute(
        self, state: RoutingState, route_x: torch.Tensor, lead: torch.Size, name: str
    ) -> torch.Tensor:
        rec = state.current
        b, s = _batch(lead), (int(lead[-1]) if len(lead) >= 2 else 1)
        full = rec.attention_mask
        if full is not None and len(lead) == 2 and lead[0] == full.shape[0] and s < full.shape[1]:
            last = self.last
            if last is None or last["batch"] != b:
                seen = None if last is None else last["batch"]
                raise RuntimeError(
                    f"{name}: cached decoding step of batch {b}, but HMoRA's task encoder last "
                    f"encoded a prompt batch of {seen}. Run the prompt through this model first "
                    "(as generate() does) or decode without a KV cache"
                )
            return last["z"].to(route_x.device)
        ids = rec.input_ids
        last = self.last
        if (
            not torch.is_grad_enabled()
            and last is not None
            and last.get("ids") is not None
            and ids is not None
            and rec.prompt_mask is None
            and rec.labels is None
            and ids.shape[0] == last["ids"].shape[0] == b
            and last["ids"].shape[1] < ids.shape[1] == s
            and torch.equal(ids[:, : last["ids"].shape[1]], last["ids"].to(ids.device))
        ):
            return last["z"].to(route_x.device)  # uncached generation: same prompt, longer input
        emb = state.input_embeddings()
        if emb is None or tuple(emb.shape[:2]) != (b, s):
            emb = route_x.reshape(b, s, -1)  # no model embeddings: the first routed layer's input
        if emb.shape[-1] != self.encoder.dim:
            raise ValueError(
                f"{name}: HMoRA's task encoder has width {self.encoder.dim} but the sequence "
                f"embeddings have width {emb.shape[-1]}; inject into a model whose "
                "get_input_embeddings() gives them"
            )
        device = self.encoder.task_token.device
        keep = prompt_keep(state, b, s, emb.device)
        packed, valid = left_pack(emb.to(device), keep.to(device))
        z = self.encoder(packed, valid)
        self.last = {"batch": b, "z": z.detach(), "ids": ids}
        return z.to(route_x.device)


def _batch(lead: torch.Size) -> int:
    """Number of sequences B of a layer input of leading shape ``lead`` (the last axis is S)."""
    return math.prod(lead[:-1]) if len(lead) >= 2 else (int(lead[0]) if len(lead) else 1)


def mark_prepared(scratch: dict[str, Any]) -> None:
    """From ``prepare_forward`` (a gradient forward, no checkpointing): z may be shared."""
    scratch[_PREPARED] = True
