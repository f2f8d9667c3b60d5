"""Dry run: does a recipe's run fit, before the first step, without weights, GPU or network.

``frame-peft train RECIPE --dry-run [--nproc N] [--gpu-memory-gb G] [--json]`` (and
``frame-peft compare RECIPE --dry-run`` for every method of the recipe) calls :func:`dry_run`:

1. the base model's config is found without the network (:mod:`.meta_model`, which says which
   source it used) and the model is built on the meta device in ``model.dtype``;
2. each method is injected there (:func:`~frame_peft.recipes.model_prep.attach_adapter`, the
   training path) and counted with :func:`frame_peft.peft_bridge.count_parameters` (the counts
   of :mod:`frame_peft.accounting`);
3. memory per GPU and step FLOPs come from :mod:`.estimate` (formulas documented there) for the
   parallelism of ``--nproc`` and ``train.distributed``, and are compared with the GPU's memory;
4. the data and eval settings are checked (:func:`check_data`): sources, local paths, offline
   sizes where the shipped data is on this machine, lengths against the model's positions.

Anything that would fail the run is an ``error`` finding (the CLI exits with status 1).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .._tables import markdown_table
from .dry_run_data import Finding, check_data, train_items
from .estimate import (
    GIB,
    AdaptedModule,
    ModelShape,
    estimate_memory,
    eval_logits_bytes,
    kv_cache_bytes,
    step_flops,
)
from .meta_model import build_meta_model, fast_meta_draws, resolve_model_config
from .model_prep import attach_adapter
from .schema import BASELINE, Recipe, RecipeError, all_method_names

__all__ = ["DryRunReport", "Finding", "MethodEstimate", "dry_run", "recipe_methods"]

_HALF = ("bfloat16", "float16")


@dataclass
class MethodEstimate:
    """One method's counts, memory per GPU (bytes by term), step FLOPs and verdict."""

    method: str
    total: int
    trainable: int
    active_per_token: int
    memory: dict[str, float]
    eval_memory: float
    flops: dict[str, float]
    fits: bool
    margin_gb: float
    notes: list[str] = field(default_factory=list)


@dataclass
class DryRunReport:
    """Everything :func:`dry_run` found; :meth:`to_dict` is the ``--json`` output."""

    recipe: str
    model: str
    config_source: str
    base_parameters: int
    dtype: str
    mode: str
    nproc: int
    gpu_memory_gb: float
    micro_batch: int
    grad_accum: int
    seq_len: int
    gradient_checkpointing: bool
    tokens_per_step_per_gpu: int
    total_steps: int | None  # None: the training set's size is not known without downloading
    methods: list[MethodEstimate]
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        """No error finding and every method fits."""
        return all(f.level != "error" for f in self.findings) and all(m.fits for m in self.methods)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out

    def format(self) -> str:
        """The human-readable report: setting, findings, counts and memory tables."""
        return _format(self)


def recipe_methods(recipe: Recipe) -> list[str]:
    """Every method the recipe names (``method``, ``compare``, ``adapters``), ``base`` left out."""
    names = [recipe.method, *recipe.compare, *recipe.adapters]
    return [m for m in dict.fromkeys(names) if m != BASELINE]


def _mode(recipe: Recipe, nproc: int, findings: list[Finding]) -> str:
    mode = recipe.train_config(output_dir="/tmp/frame-peft-dry-run").distributed
    if mode == "auto":
        return "ddp" if nproc > 1 else "none"
    if mode == "none" and nproc > 1:
        findings.append(Finding("error", "train.distributed",
                                f"'none' refuses to run under a launcher with {nproc} processes; "
                                "use 'auto', 'ddp' or 'fsdp'"))  # fmt: skip
    return mode


def _param_bytes(model: nn.Module, four_bit: bool) -> tuple[float, int]:
    """(bytes of the frozen parameters, numel of the base's linear weights)."""
    frozen, linear = 0.0, 0  # a tied LM head is one parameter, counted once; its matmul counts
    for module in model.modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            linear += module.weight.numel()
    for name, p in model.named_parameters():
        if p.requires_grad:
            continue
        quantized = four_bit and p.dim() == 2 and ".layers." in f".{name}" and "embed" not in name
        frozen += p.numel() * (0.5625 if quantized else p.element_size())
    return frozen, linear


def _largest_block_bytes(model: nn.Module) -> float:
    names = set(getattr(model, "_no_split_modules", None) or ())
    sizes = [
        sum(p.numel() * p.element_size() for p in m.parameters())
        for m in model.modules()
        if type(m).__name__ in names
    ]
    return float(max(sizes, default=0))


def _adapted_modules(model: nn.Module) -> list[AdaptedModule]:
    """Every adapted module (frame-peft's injection, or PEFT's ``base_layer`` wrappers)."""
    from ..core.inject import find_injection

    def has_dropout(module: nn.Module) -> bool:
        return any(isinstance(m, nn.Dropout) and m.p > 0 for m in module.modules())

    inj = find_injection(model)
    if inj is not None:
        return [
            AdaptedModule(
                w.adapter.in_features,
                w.adapter.out_features,
                w.adapter.active_parameters(),
                has_dropout(w),
            )
            for w in inj.layers.values()
        ]
    out = []
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if base is None or not hasattr(module, "in_features") or hasattr(base, "base_layer"):
            continue
        active = sum(p.numel() for p in module.parameters() if p.requires_grad)
        out.append(AdaptedModule(module.in_features, module.out_features, active,
                                 has_dropout(module)))  # fmt: skip
    return out


def _block_note(model: nn.Module) -> list[str]:
    from ..core.blocks import AdaptedBlock

    if any(isinstance(m, AdaptedBlock) for m in model.modules()):
        note = "block adapter: its frozen FFN projections after the routing run once per "
        return [note + "selected expert; FLOPs and activations count them once (underestimate)"]
    return []


def dry_run(
    recipe: Recipe,
    methods: list[str] | None = None,
    *,
    nproc: int = 1,
    gpu_memory_gb: float = 80.0,
) -> DryRunReport:
    """Build ``recipe``'s model on meta, inject each of ``methods`` (default: all it names) and
    estimate memory per GPU and step FLOPs for ``nproc`` processes; check the data settings.

    Raises:
        RecipeError: bad ``nproc``/``gpu_memory_gb``, an unknown method, or no model config.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise RecipeError(f"--nproc must be an integer >= 1, got {nproc!r}")
    if not isinstance(gpu_memory_gb, int | float) or not gpu_memory_gb > 0:
        raise RecipeError(f"--gpu-memory-gb must be a number > 0, got {gpu_memory_gb!r}")
    methods = recipe_methods(recipe) if methods is None else list(methods)
    if BASELINE in methods:
        raise RecipeError("the base model is not trained; dry-run a method instead")
    known = all_method_names()
    for method in methods:
        if method not in known:
            raise RecipeError(f"unknown method {method!r}; choose from {known}")
    recipe.train_config(output_dir="/tmp/frame-peft-dry-run")  # validated again
    config, source = resolve_model_config(recipe.model.name)
    shape = ModelShape.from_config(config)
    tc = recipe.train_config(output_dir="/tmp/frame-peft-dry-run")
    findings: list[Finding] = []
    mode = _mode(recipe, nproc, findings)
    base = build_meta_model(config, recipe.model.dtype)
    base_params = sum(p.numel() for p in base.parameters())
    dtype = str(next(base.parameters()).dtype).removeprefix("torch.")
    gc = recipe.model.gradient_checkpointing or tc.gradient_checkpointing
    act_bytes = 2 if (tc.dtype in _HALF or dtype in _HALF) else 4
    b, s, accum = tc.per_device_batch_size, recipe.data.max_length, tc.gradient_accumulation_steps
    findings += check_data(recipe, shape, nproc)
    items = train_items(recipe)
    total_steps = tc.max_steps or (
        tc.num_epochs * (items // (b * accum * nproc)) if items is not None else None
    )
    rows = []
    for method in methods:
        rows.append(
            _estimate(
                recipe,
                method,
                config,
                shape,
                mode=mode,
                nproc=nproc,
                b=b,
                s=s,
                accum=accum,
                gc=gc,
                act_bytes=act_bytes,
                gpu_gb=gpu_memory_gb,
            )
        )
    return DryRunReport(
        recipe=recipe.name, model=recipe.model.name, config_source=source,
        base_parameters=base_params, dtype=dtype, mode=mode, nproc=nproc,
        gpu_memory_gb=float(gpu_memory_gb), micro_batch=b, grad_accum=accum, seq_len=s,
        gradient_checkpointing=gc, tokens_per_step_per_gpu=b * s * accum,
        total_steps=total_steps, methods=rows, findings=findings,
    )  # fmt: skip


@dataclass
class _Facts:
    """What one method's meta model tells the estimate (cached: building it is the slow part)."""

    counts: dict[str, int]
    frozen: float  # bytes of the frozen parameters as trained (4-bit where asked)
    frozen_full: float  # ... as reloaded for evaluation (never 4-bit)
    linear: int
    trainable: float
    largest_block: float
    adapted: list[AdaptedModule]
    notes: list[str]
    order_scan: bool


_FACTS: dict[str, _Facts] = {}


def _model_facts(recipe: Recipe, method: str, config: Any) -> _Facts:
    from ..core.inject import find_injection
    from ..peft_bridge import count_parameters

    spec = recipe.model
    key = json.dumps(
        [config.to_json_string(), spec.dtype, spec.load_in_4bit, method,
         recipe.adapter_kwargs(method)], sort_keys=True, default=str,
    )  # fmt: skip
    if key in _FACTS:
        return _FACTS[key]
    model = build_meta_model(config, spec.dtype)
    with fast_meta_draws(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # AdaLoRA's total_step shapes its schedule, never its parameter count
            model = attach_adapter(model, recipe, method, total_steps=1000)
        except (ValueError, TypeError, RuntimeError) as err:
            raise RecipeError(f"{method}: cannot be injected into {spec.name}: {err}") from None
    inj = find_injection(model)
    facts = _Facts(
        counts=count_parameters(model),
        frozen=_param_bytes(model, spec.load_in_4bit)[0],
        frozen_full=_param_bytes(model, False)[0],
        linear=_param_bytes(model, False)[1],
        trainable=sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad),
        largest_block=_largest_block_bytes(model),
        adapted=_adapted_modules(model),
        notes=_block_note(model),
        order_scan=inj is not None and getattr(inj.config, "order_search", None) == "scan",
    )
    if len(_FACTS) > 64:
        _FACTS.clear()
    _FACTS[key] = facts
    return facts


def _estimate(recipe: Recipe, method: str, config: Any, shape: ModelShape, *, mode: str,
              nproc: int, b: int, s: int, accum: int, gc: bool, act_bytes: int,
              gpu_gb: float) -> MethodEstimate:  # fmt: skip
    f = _model_facts(recipe, method, config)
    mem = estimate_memory(
        shape, base_bytes=f.frozen, largest_layer_bytes=f.largest_block,
        trainable_bytes=f.trainable, adapted=f.adapted, micro_batch=b, seq_len=s,
        act_bytes=act_bytes, gradient_checkpointing=gc, mode=mode, world_size=nproc,
    )  # fmt: skip
    flops = step_flops(shape, linear_params=f.linear, active_params=f.counts["active_per_token"],
                       tokens=b * s * accum, seq_len=s, gradient_checkpointing=gc)  # fmt: skip
    # Rank 0 evaluates after training; with several processes it reloads the full (unsharded)
    # model while the Trainer still holds its own (pipeline/run.py), plus the larger of the
    # generation KV cache and the multiple-choice logits of one eval batch.
    width, eval_b = s + recipe.eval.max_new_tokens, recipe.eval.batch_size
    kv = max(kv_cache_bytes(shape, eval_b, width, act_bytes),
             eval_logits_bytes(shape, eval_b, width, act_bytes))  # fmt: skip
    static = mem.weights + mem.fsdp_gather + mem.adapter + mem.grads + mem.optimizer
    static += mem.ddp_buckets + mem.cuda_context
    reload = f.frozen_full + f.trainable if nproc > 1 else 0.0
    eval_peak = static + reload + kv
    peak = max(mem.total, eval_peak)
    notes = list(f.notes)
    scan_fsdp = f.order_scan and mode == "fsdp"
    if scan_fsdp:
        notes.append("order_search='scan' is not supported under FSDP: use --set "
                     f"adapters.{method}.order_search=gradient, or DDP")  # fmt: skip
    if recipe.model.load_in_4bit:
        notes.append("4-bit: linear weights at 0.5625 B each (NF4 + one fp32 absmax per 64)")
    if eval_peak > mem.total:
        notes.append(f"peak is the evaluation after training ({eval_peak / GIB:.1f} GiB)")
    return MethodEstimate(
        method=method, total=f.counts["total"], trainable=f.counts["trainable"],
        active_per_token=f.counts["active_per_token"], memory=mem.to_dict(),
        eval_memory=eval_peak, flops=flops, fits=peak <= gpu_gb * GIB and not scan_fsdp,
        margin_gb=gpu_gb - peak / GIB, notes=notes,
    )  # fmt: skip


def _n(x: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= size:
            return f"{x / size:.2f} {unit}"
    return str(int(x))


def _format(r: DryRunReport) -> str:
    lines = [
        f"dry run of recipe {r.recipe!r}: {r.model} ({_n(r.base_parameters)} parameters, "
        f"{r.dtype}), config from {r.config_source}",
        f"parallelism: {r.mode} × {r.nproc} GPU(s) of {r.gpu_memory_gb:g} GiB; micro-batch "
        f"{r.micro_batch} × {r.seq_len} tokens × {r.grad_accum} accumulation = "
        f"{r.tokens_per_step_per_gpu} tokens per step per GPU; gradient checkpointing "
        f"{'on' if r.gradient_checkpointing else 'off'}; optimizer steps: "
        f"{r.total_steps if r.total_steps is not None else 'unknown (hub data not counted)'}",
        "",
    ]
    g = GIB
    head = ["method", "trainable", "active/token", "weights", "adapter+grad+AdamW",
            "activations", "logits", "other", "train GiB", "eval GiB", "fits (margin GiB)",
            "step TFLOPs/GPU"]  # fmt: skip
    cells = []
    for m in r.methods:
        mem = m.memory
        other = mem["fsdp_gather"] + mem["ddp_buckets"] + mem["cuda_context"]
        state = mem["adapter"] + mem["grads"] + mem["optimizer"]
        verdict = f"{'yes' if m.fits else 'NO'} ({m.margin_gb:+.1f})"
        cells.append([m.method, _n(m.trainable), _n(m.active_per_token),
                      f"{mem['weights'] / g:.2f}", f"{state / g:.2f}",
                      f"{mem['activations'] / g:.2f}", f"{mem['logits'] / g:.2f}",
                      f"{other / g:.2f}", f"{mem['total'] / g:.2f}", f"{m.eval_memory / g:.2f}",
                      verdict, f"{m.flops['total'] / 1e12:.1f}"])  # fmt: skip
    lines.append(markdown_table(head, cells, align="lrrrrrrrrrlr"))
    notes = [f"- {m.method}: {n}" for m in r.methods for n in m.notes]
    lines += ["", "data and eval checks:"]
    lines += [f"- [{f.level}] {f.where}: {f.message}" for f in r.findings] or ["- all passed"]
    if notes:
        lines += ["", "notes:", *notes]
    lines += ["", "estimate formulas: docs/recipes.md (Dry run) and frame_peft.recipes.estimate",
              f"verdict: {'OK' if r.ok else 'NOT OK (see above)'}"]  # fmt: skip
    return "\n".join(lines)
