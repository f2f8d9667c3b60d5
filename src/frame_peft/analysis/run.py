"""``frame-peft analyze``: numbers, figures and an HTML report for trained run directories.

For each run directory written by ``frame-peft train`` (``recipe.yaml``, ``data.json``,
``run.json``, ``adapter/``, ``orders.jsonl``): the recipe is reloaded, the trained adapter put
back on a fresh base model, and the held-out items rebuilt (and checked against ``data.json``,
as ``frame-peft eval`` does). Up to ``max_items_per_task`` held-out items per task, prompt +
reference answer, then go through the model once, batched, under
``fp.routing_context(attention_mask=..., task_ids=...)`` (the task ids training used, from
``run.json``) inside a :class:`~frame_peft.analysis.routing.RoutingRecorder`. Orders come from the
adapter and ``orders.jsonl`` (:func:`~frame_peft.analysis.orders.order_statistics`), expert
similarity from the adapter weights (:func:`~frame_peft.analysis.decorrelation.decorrelation`).

Writes ``report.html`` (self-contained), ``analysis.json`` and the PNG figures into the output
directory (default ``<run_dir>/analysis/`` for one run; required for several).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["analyze_run", "held_out_batches"]


def _routed(model: Any) -> bool:
    """Some adapter of ``model`` has a router (else there is nothing to record on held-out
    tokens and no experts to decorrelate); asked of the adapters, never of the method name."""
    from ..core.inject import find_injection

    inj = find_injection(model)
    return inj is not None and any(layer.adapter.has_router for layer in inj.layers.values())


def _reference(ex: Any) -> Any | None:
    """``ex`` with a ``target`` to append after the prompt (the gold choice or the answer)."""
    if ex.target is not None:
        return ex
    if ex.choices and ex.label is not None:
        return dataclasses.replace(ex, target=ex.choices[ex.label])
    if ex.answer is not None:
        return dataclasses.replace(ex, target=" " + ex.answer)
    return None


def check_analysis_args(
    run_dirs: Sequence[str | Path], output_dir: str | Path | None, max_items_per_task: int
) -> list[Path]:
    """The run directories as paths; ``ValueError`` for none, a count below 1, or several runs
    without an output folder for the joint report."""
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ValueError("analyze needs at least one run directory")
    if max_items_per_task < 1:
        raise ValueError(f"max_items_per_task must be >= 1, got {max_items_per_task}")
    if len(dirs) > 1 and output_dir is None:
        raise ValueError(
            f"{len(dirs)} run directories are analysed together: give --output DIR (output_dir) "
            "for the joint report"
        )
    return dirs


def held_out_batches(
    eval_sets: dict[str, list[Any]],
    tokenizer: Any,
    *,
    vocab: Any,
    max_length: int,
    batch_size: int,
    max_items_per_task: int,
    chat_template: bool = False,
) -> tuple[list[dict[str, torch.Tensor]], dict[str, int]]:
    """Right-padded batches of prompt + reference answer, one task per batch.

    Items are encoded exactly as for training (:func:`frame_peft.data.encode_example`, task id
    from ``vocab``); items without a reference text, or whose answer does not fit in
    ``max_length``, are left out. Returns ``(batches, {task: items used})``; each batch has
    ``input_ids``, ``attention_mask`` (B, S) and ``task_ids`` (B,).
    """
    from ..data import PadCollator, TargetTooLongError, encode_example

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = PadCollator(int(pad))
    batches, used = [], {}
    for task, examples in eval_sets.items():
        encoded = []
        for ex in examples:
            if len(encoded) >= max_items_per_task:
                break
            ex = _reference(ex)
            if ex is None:
                continue
            try:
                encoded.append(
                    encode_example(
                        tokenizer,
                        ex,
                        max_length,
                        chat_template=chat_template,
                        task_id=vocab.id(task),
                    )
                )
            except TargetTooLongError:
                continue
        used[task] = len(encoded)
        for start in range(0, len(encoded), batch_size):
            batch = collate(encoded[start : start + batch_size])
            batches.append({k: batch[k] for k in ("input_ids", "attention_mask", "task_ids")})
    return batches, used


def _labels(run_dirs: Sequence[Path]) -> list[str]:
    """Short unique names: the directory names, prefixed by their parent's where they clash."""
    from .figures import slug

    names = [slug(d.name) for d in run_dirs]
    if len(set(names)) < len(names):
        names = [slug(f"{d.parent.name}-{d.name}") for d in run_dirs]
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def _read_run(run_dir: Path) -> dict[str, Any]:
    """``run.json`` of a finished run of a frame-peft method; refuses anything else."""
    from ..recipes.schema import BASELINE, PEFT_METHODS
    from ..run_dir import check_finished, read_run_info

    info = read_run_info(run_dir)
    method = info.get("method")
    if method == BASELINE or method in PEFT_METHODS:
        raise ValueError(
            f"{run_dir} is a {method!r} run: `frame-peft analyze` reads frame-peft adapters "
            "(frame, moe-lora, hydralora, fouriermoe, hmora; lora/flylora give parameters only); "
            "PEFT baselines and the base model have no experts or orders to analyse"
        )
    check_finished(run_dir)
    return info


def _analyze_one(
    run_dir: Path, label: str, info: dict, *, max_items: int, coherence: bool, progress: bool
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from ..data import TaskVocabulary
    from ..peft_bridge import count_parameters
    from ..routing import routing_context
    from ..run_dir import load_run
    from .decorrelation import decorrelation
    from .orders import order_statistics
    from .routing import RoutingRecorder

    method = info["method"]
    _, recipe, model, tokenizer, data = load_run(run_dir)
    model.eval()
    notes: list[str] = []
    if "task_ids" in info:
        vocab = TaskVocabulary.from_dict(info["task_ids"])
    else:  # runs from before run.json kept the vocabulary: training's rule, rebuilt
        vocab = TaskVocabulary(sorted({*data.train, *data.eval}))
        notes.append("run.json has no task_ids: task ids rebuilt from the recipe's tasks")
    eval_sets = {t: exs for t, exs in data.eval.items() if t in vocab}
    if len(eval_sets) < len(data.eval):
        notes.append(
            f"held-out tasks outside the run's task vocabulary left out: "
            f"{sorted(set(data.eval) - set(eval_sets))}"
        )
    routing: dict[str, Any] = {}
    used: dict[str, int] = {}
    routed = _routed(model)
    if not routed:
        notes.append(f"{method} has no router: no held-out pass, no routing statistics")
    else:
        batches, used = held_out_batches(
            eval_sets,
            tokenizer,
            vocab=vocab,
            max_length=recipe.data.max_length,
            batch_size=recipe.eval.batch_size,
            max_items_per_task=max_items,
            chat_template=recipe.data.chat_template,
        )
        device = next(model.parameters()).device
        no_cache = (
            {"use_cache": False} if hasattr(getattr(model, "config", None), "use_cache") else {}
        )
        with RoutingRecorder(model, task_names=vocab.names) as recorder, torch.no_grad():
            for batch in tqdm(batches, desc=f"analyze {label}", unit="batch", disable=not progress):
                ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                tasks = batch["task_ids"].to(device)
                with routing_context(attention_mask=mask, task_ids=tasks):
                    model(input_ids=ids, attention_mask=mask, **no_cache)
        routing = recorder.statistics()
        if not batches:
            notes.append("no held-out item with a reference answer: no routing recorded")
    order_log, scan_log = run_dir / "orders.jsonl", run_dir / "scans.jsonl"
    orders = order_statistics(
        model, order_log if order_log.is_file() else None, scan_log if scan_log.is_file() else None
    )
    dec = None
    if not routed:
        notes.append(f"{method} has one update per module, not experts: decorrelation skipped")
    else:
        dec = decorrelation(model, coherence=coherence)
        if not dec.get("modules"):
            notes.append(
                "no module has two or more experts with per-expert factors: nothing to decorrelate"
            )
    steps = (info.get("train_result") or {}).get("global_step")
    entry = {
        "label": label,
        "run_dir": str(run_dir),
        "method": method,
        "recipe": recipe.name,
        "model": recipe.model.name,
        "parameters": info.get("parameters") or count_parameters(model),
        "train_steps": steps,
        "tasks": list(vocab.names),
        "items": used,
        "notes": notes,
        "orders": orders,
        "routing": routing,
        "decorrelation": dec,
    }
    del model
    return entry


def analyze_run(
    run_dirs: Sequence[str | Path],
    output_dir: str | Path | None = None,
    *,
    max_items_per_task: int = 32,
    coherence: bool = True,
    progress: bool = True,
) -> Path:
    """Analyse one or several trained runs together; returns the path of ``report.html``.

    Args:
        run_dirs: run directories written by ``frame-peft train`` (frame-peft methods only;
            ``peft:*`` and ``base`` runs are refused).
        output_dir: where ``report.html``, ``analysis.json`` and the PNGs go; default
            ``<run_dir>/analysis`` for one run; required for several.
        max_items_per_task: held-out items per task run through the model to record routing.
        coherence: compute the (slower) mutual coherence of FRAME experts' transforms.
        progress: show a tqdm bar per run.

    Raises:
        ValueError: no run, several runs without ``output_dir``, a refused method, bad counts.
        FileNotFoundError: a directory that is not a finished run.
    """
    from .._version import __version__
    from .figures import analysis_figures
    from .report import write_report

    dirs = check_analysis_args(run_dirs, output_dir, max_items_per_task)
    infos = [_read_run(d) for d in dirs]  # refuse before loading any model
    out = Path(output_dir) if output_dir is not None else dirs[0] / "analysis"
    start = time.perf_counter()
    runs = [
        _analyze_one(
            d, label, info, max_items=max_items_per_task, coherence=coherence, progress=progress
        )
        for d, label, info in zip(dirs, _labels(dirs), infos, strict=True)
    ]
    analysis = {
        "frame_peft_version": __version__,
        "settings": {"max_items_per_task": max_items_per_task, "coherence": coherence},
        "runs": runs,
    }
    out.mkdir(parents=True, exist_ok=True)
    figures = analysis_figures(analysis, out)
    analysis["seconds"] = time.perf_counter() - start
    report = write_report(analysis, figures, out / "report.html")
    if progress:
        print(f"analysis of {', '.join(r['label'] for r in runs)} written to {report}")
    return report
