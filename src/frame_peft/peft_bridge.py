"""Bridge to Hugging Face PEFT: PEFT's own baselines, and export of frame-peft adapters as LoRA.

Two directions:

- :func:`peft_baseline` wraps a model with PEFT's own FourierFT, DoRA, AdaLoRA or LoRA
  (``peft.get_peft_model``) with this project's defaults (all linear layers except the head,
  r = 8, α = 2r, dropout 0.05), so the baselines of docs/methods.md §4 come from PEFT rather than a
  re-implementation. :func:`count_parameters`, :func:`aux_loss` and :func:`after_optimizer_step`
  accept either a PEFT model or a frame-peft model, so a training loop can stay generic; branch
  on :func:`is_peft_model` where it must.
- :func:`export_peft_lora` writes a frame-peft adapter whose update is a fixed low-rank matrix
  (LoRA, one-expert MoE-LoRA / FRAME, or any mergeable adapter through an SVD truncation) in
  PEFT's LoRA format, loadable with ``PeftModel.from_pretrained(base, path)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._files import atomic_write_bytes, write_json
from .core.adapter import NotMergeableError, conv1d_class
from .core.inject import aux_loss as _fp_aux_loss
from .core.inject import count_parameters as _fp_count_parameters
from .core.inject import find_injection, injection_owner, require_injection

PEFT_METHODS = ("fourierft", "dora", "adalora", "lora")

# Defaults (docs/methods.md §2/§4): all linear layers but the head, r = 8, α = 2r, dropout 0.05.
# FourierFT keeps PEFT's own defaults (n_frequency = 1000, scaling = 150); AdaLoRA starts at
# init_r = 12 and is pruned to target_r = 8 (PEFT's defaults, target_r = the LoRA rank).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"target_modules": "all-linear", "r": 8, "lora_alpha": 16, "lora_dropout": 0.05},
    "dora": {
        "target_modules": "all-linear",
        "r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "use_dora": True,
    },
    "adalora": {
        "target_modules": "all-linear",
        "init_r": 12,
        "target_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
    },
    "fourierft": {"target_modules": "all-linear", "n_frequency": 1000, "scaling": 150.0},
}


def _peft():
    try:
        import peft
    except ImportError as err:  # pragma: no cover - peft is a test dependency
        raise ImportError(
            "frame_peft.peft_bridge needs Hugging Face PEFT: pip install 'peft>=0.17'"
        ) from err
    return peft


def _has_conv1d(model: nn.Module) -> bool:
    conv = conv1d_class()
    return conv is not None and any(isinstance(m, conv) for m in model.modules())


def peft_config_class(method: str) -> type:
    """PEFT's config dataclass behind ``method`` (``LoraConfig`` for both "lora" and "dora")."""
    if method not in PEFT_METHODS:
        raise ValueError(f"unknown PEFT baseline {method!r}; allowed: {list(PEFT_METHODS)}")
    peft = _peft()
    return {
        "lora": peft.LoraConfig,
        "dora": peft.LoraConfig,
        "adalora": peft.AdaLoraConfig,
        "fourierft": peft.FourierFTConfig,
    }[method]


def peft_config(method: str, model: nn.Module | None = None, **kwargs: Any):
    """The PEFT config :func:`peft_baseline` would use (defaults overridden by ``kwargs``)."""
    if method not in PEFT_METHODS:
        raise ValueError(
            f"unknown PEFT baseline {method!r}; allowed: {list(PEFT_METHODS)} (frame-peft's own "
            "methods go through frame_peft.inject)"
        )
    settings = {**_DEFAULTS[method], **kwargs}
    if method == "adalora" and settings.get("total_step") is None:
        raise ValueError(
            "peft_baseline('adalora') needs total_step=<number of optimizer steps>: AdaLoRA's "
            "rank budget schedule (tinit, tfinal, deltaT) is defined over it. Also call "
            "frame_peft.peft_bridge.after_optimizer_step(model, step) after every optimizer step"
        )
    if model is not None and "fan_in_fan_out" not in settings and _has_conv1d(model):
        settings["fan_in_fan_out"] = True  # GPT-2 Conv1D stores its weight (in, out)
    cls = peft_config_class(method)
    try:
        return cls(**settings)
    except TypeError as err:
        raise TypeError(
            f"peft_baseline({method!r}): bad keyword argument for {cls.__name__}: {err}"
        ) from err
    except ValueError as err:
        raise ValueError(f"peft_baseline({method!r}): {err}") from err


def peft_baseline(model: nn.Module, method: str, **kwargs: Any) -> nn.Module:
    """Wrap ``model`` with PEFT's implementation of ``method`` and return the PEFT model.

    ``method`` is one of ``"fourierft"``, ``"dora"`` (``LoraConfig(use_dora=True)``),
    ``"adalora"`` (needs ``total_step``; call :func:`after_optimizer_step` after each step) or
    ``"lora"``. ``kwargs`` are fields of the PEFT config (``r``, ``lora_alpha``,
    ``target_modules``, ``n_frequency``, ...) and override the defaults above; an unknown one
    raises ``TypeError`` naming the method. The base weights are frozen by PEFT.
    """
    if find_injection(model) is not None:
        raise ValueError(
            "this model already has frame-peft adapters; use a fresh base model for a PEFT "
            "baseline (or frame_peft.unload it first)"
        )
    config = peft_config(method, model, **kwargs)
    peft = _peft()
    try:
        return peft.get_peft_model(model, config)
    except ValueError as err:
        raise ValueError(f"peft_baseline({method!r}): {err}") from err


def is_peft_model(model: nn.Module) -> bool:
    """True for a ``peft.PeftModel`` (or a DDP/compiled wrapper of one)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    inner = [model, getattr(model, "module", None), getattr(model, "_orig_mod", None)]
    return any(isinstance(m, PeftModel) for m in inner if m is not None)


def _peft_baseline(model: nn.Module) -> bool:
    """A PEFT model of PEFT's own methods. A model built through frame-peft's PEFT method
    (``FRAME_PEFT``, :mod:`frame_peft.peft_method`) is a ``PeftModel`` too, but it carries a
    frame-peft injection: its counts and routing loss are frame-peft's."""
    return is_peft_model(model) and find_injection(model) is None


def peft_count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"total", "trainable", "active_per_token"}`` of a PEFT model.

    PEFT's baselines here route nothing, so every trainable parameter is used by every token:
    ``active_per_token == trainable``. AdaLoRA counts its full ``init_r`` budget (pruned ranks
    are masked, not removed).
    """
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "active_per_token": trainable}


def count_parameters(model: nn.Module) -> dict[str, int]:
    """:func:`frame_peft.count_parameters` for a frame-peft model (``FRAME_PEFT`` PEFT models
    included), the PEFT count for a PEFT baseline."""
    if _peft_baseline(model):
        return peft_count_parameters(model)
    return _fp_count_parameters(model)


def peft_aux_loss(model: nn.Module) -> torch.Tensor:
    """Zero: PEFT's baselines have no routing loss (AdaLoRA adds its orthogonality penalty to
    ``outputs.loss`` itself when ``labels`` are passed)."""
    p = next(model.parameters(), None)
    return torch.zeros((), device=p.device if p is not None else "cpu")


def aux_loss(model: nn.Module) -> torch.Tensor:
    """:func:`frame_peft.aux_loss` for a frame-peft model (``FRAME_PEFT`` PEFT models included),
    zero for a PEFT baseline."""
    return peft_aux_loss(model) if _peft_baseline(model) else _fp_aux_loss(model)


def after_optimizer_step(model: nn.Module, global_step: int) -> None:
    """Call after each optimizer step: AdaLoRA's ``update_and_allocate`` (rank pruning), a no-op
    for every other method. Call it before ``zero_grad`` (AdaLoRA scores ranks from gradients)."""
    if not is_peft_model(model):
        return
    peft_model = model if hasattr(model, "base_model") else model.module
    update = getattr(peft_model.base_model, "update_and_allocate", None)
    if callable(update):
        update(global_step)


# -- Export to PEFT's LoRA format ----------------------------------------------------------------


def _svd_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    return vh[:k] * root[:, None], u[:, :k] * root[None, :], 1.0


def _relative_error(approx: torch.Tensor, delta: torch.Tensor) -> float:
    norm = torch.linalg.matrix_norm(delta.double()).item()
    diff = torch.linalg.matrix_norm(approx.double() - delta.double()).item()
    return 0.0 if norm == 0.0 else diff / norm


def export_peft_lora(
    model: nn.Module,
    path: str | Path,
    svd_rank: int | None = None,
    task_type: str | None = "auto",
    uniform_rank: bool = True,
) -> dict[str, Any]:
    """Write the frame-peft adapters of ``model`` as a PEFT LoRA adapter in ``path``.

    Files: ``adapter_config.json`` (``peft.LoraConfig``: ``r``, ``lora_alpha = r``, the adapted
    modules' full names as ``target_modules``, ``fan_in_fan_out`` for GPT-2 Conv1D) and
    ``adapter_model.safetensors`` with keys ``base_model.model.<module>.lora_A.weight`` (R, d_in)
    and ``...lora_B.weight`` (d_out, R). Both are written atomically.

    Every module's scale is folded into its B (``B' = scale · B``) and ``lora_alpha = r``, so the
    scaling ``lora_alpha / r`` is 1 for every module. Serving readers apply one scaling from the
    top-level ``r`` and ``lora_alpha`` (vLLM's ``PEFTHelper`` ignores ``rank_pattern`` and
    ``alpha_pattern``; llama.cpp uses ``lora_alpha / <rank of the tensor>``), which is why
    per-module scales may not live in patterns.

    - ``uniform_rank=True`` (default): modules of lower rank are zero-padded to the largest rank
      R (A gets zero rows, B' zero columns: the product is unchanged, exactly), and the config
      has ``r = lora_alpha = R`` and no ``rank_pattern``/``alpha_pattern``: exact in PEFT, vLLM,
      llama.cpp and any reader applying one ``lora_alpha / r``. Costs the padding's memory: a
      module of rank k stores R/k times its factors (the file, PEFT, llama.cpp; vLLM sizes its
      buffers by ``max_lora_rank`` anyway).
    - ``uniform_rank=False``: each module keeps its own rank; ``r = lora_alpha = R`` and, for the
      lower-rank modules, ``rank_pattern`` with an equal ``alpha_pattern`` (scaling 1). Exact in
      PEFT only: llama.cpp would scale those modules by R/k. Use it for PEFT-only consumers.

    FRAME exports rank 2r, so a server must allow rank ≥ the returned ``r`` (vLLM:
    ``--max-lora-rank``).

    Modes:

    - ``svd_rank=None``: exact export of every adapter stored as low-rank factors
      (``adapter.merge_factors()``): LoRA's A, B; a one-expert MoE-LoRA, FRAME or HMoRA, a
      one-head HydraLoRA and FlyLoRA with top_k == rank export their effective factors (rank r,
      or 2r for FRAME, whose ``Re(T^H B A T)`` has rank up to 2r). Any other adapter raises
      (pass ``svd_rank``).
    - ``svd_rank=k``: every module's ``delta_weight()`` is truncated by SVD to rank
      ``min(k, d_in, d_out)`` (works for any mergeable adapter, e.g. one-expert FourierMoE).

    Routed mixtures (E > 1, or FlyLoRA with top_k < rank) have no single ΔW and are refused with
    :class:`frame_peft.NotMergeableError` in both modes, before anything is written.

    Returns ``{"path", "mode": "exact" | "svd", "r": R, "rank": {module: its own rank before
    padding}, "relative_error": {module: ‖ΔW_peft − ΔW‖_F / ‖ΔW‖_F}, "max_relative_error"}``;
    the error is measured on the written factors (in float64), so it is ~1e-7 for exact float32
    exports and the truncation error for SVD.
    """
    peft = _peft()
    if svd_rank is not None and (
        isinstance(svd_rank, bool) or not isinstance(svd_rank, int) or svd_rank < 1
    ):
        raise ValueError(f"svd_rank must be None or a positive integer, got {svd_rank!r}")
    if not isinstance(uniform_rank, bool):
        raise ValueError(f"uniform_rank must be True or False, got {uniform_rank!r}")
    inj = require_injection(model)
    root = injection_owner(model)
    conv = conv1d_class()
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    deltas: dict[str, torch.Tensor] = {}
    fan_in_fan_out = False
    for name, layer in inj.layers.items():  # check every module before writing anything
        adapter = layer.adapter
        try:
            with torch.no_grad():
                delta = adapter.delta_weight().detach()
        except NotMergeableError as err:
            raise NotMergeableError(
                f"cannot export {name} as LoRA: {err}. A routed mixture applies a different "
                "update to each token; only adapters with one fixed ΔW export (LoRA, one-expert "
                "MoE-LoRA/FRAME, or svd_rank for other mergeable adapters). Serve it in-process "
                "instead (model.generate; docs/peft_bridge.md)"
            ) from err
        if svd_rank is None:
            with torch.no_grad():
                exact = adapter.merge_factors()
            if exact is None:
                raise ValueError(
                    f"{name}: {type(adapter).__name__} is mergeable but not stored as low-rank "
                    "factors; pass svd_rank=k to export an SVD truncation of its ΔW"
                )
            a, b, scaling = exact[0].detach(), exact[1].detach(), exact[2]
        else:
            a, b, scaling = _svd_factors(delta, svd_rank)
        dtype = adapter_dtype(adapter)
        b = b.double() * float(scaling)  # fold the scale into B: every module's scaling is 1
        factors[name] = (a.to(dtype).contiguous().cpu(), b.to(dtype).contiguous().cpu())
        deltas[name] = delta.cpu()
        if conv is not None and isinstance(layer.base_layer, conv):
            fan_in_fan_out = True

    ranks = {n: int(a.shape[0]) for n, (a, _) in factors.items()}
    r = max(ranks.values())
    if uniform_rank:
        factors = {n: _pad_rank(a, b, r) for n, (a, b) in factors.items()}
    errors = {
        n: _relative_error(b.double() @ a.double(), deltas[n]) for n, (a, b) in factors.items()
    }
    patterns = {} if uniform_rank else {f"^{n}$": k for n, k in ranks.items() if k != r}
    if task_type == "auto":
        task_type = "CAUSAL_LM" if hasattr(root, "generate") and hasattr(root, "config") else None
    config = peft.LoraConfig(
        r=r,
        lora_alpha=r,
        target_modules=sorted(factors),
        rank_pattern=dict(patterns),
        alpha_pattern=dict(patterns),
        lora_dropout=float(inj.config.dropout),
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
        task_type=task_type,
        base_model_name_or_path=getattr(getattr(root, "config", None), "_name_or_path", None),
    )
    _write_lora(Path(path), config, factors)
    return {
        "path": str(path),
        "mode": "exact" if svd_rank is None else "svd",
        "r": r,
        "rank": ranks,
        "relative_error": errors,
        "max_relative_error": max(errors.values(), default=0.0),
    }


def _pad_rank(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) zero-padded to ``rank``: A (k, d_in) gets zero rows, B (d_out, k) zero columns, so
    ``B @ A`` is unchanged exactly (the extra terms are products with zero)."""
    k = a.shape[0]
    if k == rank:
        return a, b
    a = torch.cat([a, a.new_zeros(rank - k, a.shape[1])], dim=0)
    b = torch.cat([b, b.new_zeros(b.shape[0], rank - k)], dim=1)
    return a.contiguous(), b.contiguous()


def _write_lora(out: Path, config: Any, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]):
    """Write ``adapter_config.json`` (as PEFT's ``save_pretrained`` formats it: sets as lists,
    indent 2, sorted keys) and ``adapter_model.safetensors``, each atomically."""
    from safetensors.torch import save

    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (a, b) in factors.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = a
        tensors[f"base_model.model.{name}.lora_B.weight"] = b
    data = save(tensors, metadata={"format": "pt"})
    atomic_write_bytes(out / "adapter_model.safetensors", data)
    cfg = config.to_dict()
    cfg = {k: sorted(v) if isinstance(v, set) else v for k, v in cfg.items()}
    write_json(out / "adapter_config.json", cfg, indent=2, sort_keys=True, newline=False)


def adapter_dtype(adapter: nn.Module) -> torch.dtype:
    for n, p in adapter.named_parameters():
        if n not in adapter.fp32_parameters and p.is_floating_point():
            return p.dtype
    return torch.float32
