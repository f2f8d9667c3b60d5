"""``frame-peft analyze --spectral``: the spectral section of the analysis, for trained runs.

For each run directory (the same checks and reload as :func:`.run.analyze_run`) it computes

- ``profiles``: the band profile of every module's update (:func:`.spectral.spectral_profiles`,
  FourierMoE's rings) and the nulls of every shape (random dense, random-factor LoRA);
- ``coverage`` and ``band_routing`` (routed runs): each expert's band profile, and the band ×
  expert routing map on up to ``max_items`` held-out items per task
  (:mod:`.spectral_routing`);
- ``compactness``: the curve "energy a rank-r FRAME expert captures vs order a" next to LoRA r
  and 2r (:mod:`.spectral_compact`, the order scan's own fit) of the module's trained update
  ΔW, for the first, middle and last layer of every module kind. (A LoRA update of rank r is
  trivially compact at order 0; the whitened gradient targets, the cleaner test of FRAME's
  premise, are in ``benchmarks/spectral.py`` and :func:`.spectral_compact.whitened_module_targets`.)

The numbers go under ``"spectral"`` of each run in ``analysis.json``; the figures and tables into
the report's "Spectral analysis" section.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .spectral import DEFAULT_BANDS, module_updates, spectral_profiles

__all__ = ["analyze_spectral", "spectral_analysis"]


def _pick_modules(names: Sequence[str]) -> list[str]:
    from .modules import group_by_kind

    out = []
    for infos in group_by_kind(names).values():
        idx = sorted({0, len(infos) // 2, len(infos) - 1})
        out += [infos[i].name for i in idx]
    return out


def spectral_analysis(
    model: nn.Module,
    batches: Sequence[dict[str, torch.Tensor]] = (),
    *,
    task_names: Sequence[str] | None = None,
    num_bands: int = DEFAULT_BANDS,
    compact_rank: int = 4,
    compact_points: int = 32,
    compact_modules: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The spectral numbers of one adapted model (module docstring); ``batches`` (``input_ids``,
    ``attention_mask``, optional ``task_ids``) feed the band-routing recorder of routed models."""
    from ..routing import routing_context
    from .spectral_compact import compactness_curve
    from .spectral_routing import BandRoutingRecorder, expert_band_coverage

    updates, skipped = module_updates(model)
    out: dict[str, Any] = {"profiles": spectral_profiles(updates, num_bands), "skipped": skipped}
    routed = any(la.adapter.has_router for la in _layers(model).values())
    if routed:
        out["coverage"] = expert_band_coverage(model)
        if batches:
            device = next(model.parameters()).device
            with BandRoutingRecorder(model, task_names=task_names) as rec, torch.no_grad():
                for b in batches:
                    ids, mask = b["input_ids"].to(device), b["attention_mask"].to(device)
                    tasks = b.get("task_ids")
                    with routing_context(
                        attention_mask=mask, task_ids=None if tasks is None else tasks.to(device)
                    ):
                        model(input_ids=ids, attention_mask=mask)  # fmt: skip
            out["band_routing"] = rec.statistics()
    names = list(compact_modules) if compact_modules is not None else _pick_modules(updates)
    curves = {}
    for name in names:
        dw = updates.get(name)
        if dw is None or not float(dw.square().sum()) > 0:
            continue
        if dw.shape[0] % 2 or dw.shape[1] % 2:
            curves[name] = {"skipped": f"odd width {tuple(dw.shape)}: the chirp fit needs even"}
            continue
        curves[name] = compactness_curve(dw, compact_rank, points=compact_points)
    out["compactness"] = {"target": "trained update ΔW", "rank": compact_rank, "modules": curves}
    return out


def _layers(model: nn.Module) -> dict[str, Any]:
    from ..core.inject import require_injection

    return require_injection(model).layers


def analyze_spectral(
    run_dirs: Sequence[str | Path],
    output_dir: str | Path | None = None,
    *,
    num_bands: int = DEFAULT_BANDS,
    max_items_per_task: int = 32,
    progress: bool = True,
) -> Path:
    """Spectral analysis of trained runs: ``report.html`` (the spectral section), ``analysis.json``
    and PNGs in ``output_dir`` (default ``<run_dir>/analysis``); returns the report's path.

    Raises:
        ValueError: no run, several runs without ``output_dir``, a refused method, bad counts.
        FileNotFoundError: a directory that is not a finished run.
    """
    from .._version import __version__
    from ..data import TaskVocabulary
    from ..peft_bridge import count_parameters
    from ..run_dir import load_run
    from .report import write_report
    from .run import _labels, _read_run, check_analysis_args, held_out_batches
    from .spectral_figures import spectral_figures

    dirs = check_analysis_args(run_dirs, output_dir, max_items_per_task)
    if num_bands < 2:
        raise ValueError(f"--bands must be >= 2, got {num_bands}")
    infos = [_read_run(d) for d in dirs]
    out = Path(output_dir) if output_dir is not None else dirs[0] / "analysis"
    start = time.perf_counter()
    runs = []
    for d, label, info in zip(dirs, _labels(dirs), infos, strict=True):
        _, recipe, model, tokenizer, data = load_run(d)
        model.eval()
        vocab = (TaskVocabulary.from_dict(info["task_ids"]) if "task_ids" in info
                 else TaskVocabulary(sorted({*data.train, *data.eval})))  # fmt: skip
        batches, used = held_out_batches(
            {t: e for t, e in data.eval.items() if t in vocab}, tokenizer, vocab=vocab,
            max_length=recipe.data.max_length, batch_size=recipe.eval.batch_size,
            max_items_per_task=max_items_per_task, chat_template=recipe.data.chat_template,
        )  # fmt: skip
        if progress:
            print(f"analyze --spectral {label}: {len(batches)} held-out batches", flush=True)
        spectral = spectral_analysis(model, batches, task_names=vocab.names, num_bands=num_bands)
        runs.append({
            "label": label, "run_dir": str(d), "method": info["method"], "recipe": recipe.name,
            "model": recipe.model.name,
            "parameters": info.get("parameters") or count_parameters(model),
            "train_steps": (info.get("train_result") or {}).get("global_step"),
            "tasks": list(vocab.names), "items": used, "notes": [], "orders": None,
            "routing": {}, "decorrelation": None, "spectral": spectral,
        })  # fmt: skip
        del model
    analysis = {
        "frame_peft_version": __version__,
        "settings": {
            "spectral": True,
            "bands": num_bands,
            "max_items_per_task": max_items_per_task,
        },
        "sections": [],  # the report shows the spectral section only
        "runs": runs,
    }
    out.mkdir(parents=True, exist_ok=True)
    figures = spectral_figures(analysis, out)
    analysis["seconds"] = time.perf_counter() - start
    return write_report(analysis, figures, out / "report.html")
