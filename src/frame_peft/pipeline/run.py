"""What ``frame-peft train / eval / compare`` do, as plain functions.

Each writes run directories; their layout, and how a run is reloaded, is
:mod:`frame_peft.run_dir`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .._files import write_json, write_text
from .._version import __version__
from ..peft_bridge import count_parameters
from ..recipes.data_prep import PreparedData, prepare_data
from ..recipes.model_prep import attach_adapter, build_model, load_base, load_trained
from ..recipes.schema import BASELINE, Recipe, builtin_recipes, load_recipe
from ..run_dir import (
    OFFLINE_NOTE,
    check_same_split,
    load_run,
    require_run_dir,
    write_data_json,
    write_recipe,
    write_run_json,
)
from ..training.callbacks import TrainerCallback

if TYPE_CHECKING:
    from ..evaluation import EvalResults

__all__ = ["compare_recipe", "evaluate_target", "train_recipe"]


def _evaluate(
    model, tokenizer, recipe: Recipe, data: PreparedData, method: str, meta: dict, progress=True
):
    from ..evaluation import evaluate

    spec = recipe.eval
    return evaluate(
        model,
        tokenizer,
        data.eval,
        progress=progress,
        batch_size=spec.batch_size,
        max_new_tokens=spec.max_new_tokens,
        code_timeout=spec.code_timeout,
        allow_unsafe_code_execution=spec.allow_unsafe_code_execution,
        chat=spec.chat,
        metadata={
            "method": method,
            "recipe": recipe.name,
            "model": recipe.model.name,
            "seed": recipe.train.get("seed", 0),
            "data_splits": data.records,
            "note": OFFLINE_NOTE if recipe.data.source == "offline" else "",
            **meta,
        },
    )


def _save_eval(results, run_dir: Path, method: str, echo: bool = True) -> None:
    """Write eval.json / eval.md; print the table unless ``echo=False`` (callers that print the
    results with their intervals: a lone table of point estimates invites reading noise)."""
    results.save_json(run_dir / "eval.json")
    write_text(run_dir / "eval.md", results.to_markdown() + "\n")
    if echo:
        print(f"\n[{method}] held-out results ({run_dir / 'eval.json'}):\n{results.to_markdown()}")
    else:
        print(f"[{method}] held-out results saved to {run_dir / 'eval.json'}")


def _world() -> tuple[int, int]:
    """(rank, world size) of this process under torchrun/accelerate, else (0, 1)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class _WriteRecipe(TrainerCallback):
    """Writes ``recipe.yaml`` and ``data.json`` once the Trainer has checked the run directory
    (a refused run must not leave the new recipe beside the old run's adapter)."""

    def __init__(self, recipe: Recipe, data: PreparedData) -> None:
        self.recipe, self.data = recipe, data

    def on_train_begin(self, trainer, total_steps: int, start_step: int) -> None:
        run_dir = Path(trainer.config.output_dir)
        write_recipe(self.recipe, run_dir)
        write_data_json(run_dir, self.data)


def _data_fingerprint(recipe: Recipe, data: PreparedData, dataset) -> str:
    """sha256 over the recipe's data section, the split records and the tokenised items (a
    sample): what the run was trained on, checked when it is resumed."""
    from ..training.run_identity import dataset_fingerprint

    described = json.dumps(
        {"data": recipe.to_dict().get("data"), "records": data.records}, sort_keys=True,
        default=str,
    )  # fmt: skip
    return hashlib.sha256((described + dataset_fingerprint(dataset)).encode()).hexdigest()


def train_recipe(
    recipe: Recipe,
    *,
    method: str | None = None,
    output_dir: str | Path | None = None,
    evaluate_after: bool = True,
    data: PreparedData | None = None,
    overwrite: bool = False,
    echo_results: bool = True,
):
    """Train ``method`` (default: the recipe's) and, unless told not to, evaluate it
    (``echo_results=False``: save the results without printing their table).

    The run directory belongs to one run: the Trainer checks it (resuming another recipe's data
    or adapter is refused; ``overwrite=True`` deletes an earlier run first) before
    ``recipe.yaml`` and ``data.json`` are written, so a refused run leaves them untouched.

    Under ``torchrun`` every rank trains; rank 0 then reloads the saved adapter on a fresh base
    model and evaluates (so FSDP-sharded weights never need gathering for generation). Returns
    the eval results (``None`` with ``evaluate_after=False`` or on other ranks).
    """
    from ..data import MultiTaskMixture, PadCollator, TaskVocabulary
    from ..training import Trainer

    method = method or recipe.method
    if method == BASELINE:
        raise ValueError("the base model is not trained; use `frame-peft eval RECIPE`")
    rank, world = _world()
    run_dir = Path(output_dir or recipe.run_root() / method)
    data = data or prepare_data(recipe)
    config = recipe.train_config(output_dir=str(run_dir))
    if overwrite:
        config = dataclasses.replace(config, overwrite=True)  # validated again
    model, tokenizer = load_base(recipe)
    vocab = TaskVocabulary(sorted({*data.train, *data.eval}))
    dataset = MultiTaskMixture(
        data.train,
        tokenizer,
        recipe.data.max_length,
        weights=recipe.data.mixture,
        seed=config.seed,
        vocab=vocab,
        chat_template=recipe.data.chat_template,
    )
    global_batch = config.per_device_batch_size * config.gradient_accumulation_steps * world
    total_steps = config.max_steps or config.num_epochs * (len(dataset) // global_batch)
    torch.manual_seed(config.seed)  # adapter init depends on the seed, not on what ran before
    model = attach_adapter(model, recipe, method, total_steps=total_steps)
    config.pad_token_id = tokenizer.pad_token_id
    if rank == 0:
        print(f"[{method}] {data.summary()}\n[{method}] parameters: {count_parameters(model)}")
    start = time.perf_counter()
    eval_fn, last_eval = None, {}
    if config.eval_every:  # periodic held-out eval, logged as eval/<task> in log.jsonl

        def eval_fn(m):
            res = last_eval["results"] = _evaluate(m, tokenizer, recipe, data, method, {}, False)
            return {**res.primary(), "overall": res.overall or 0.0}

    trainer = Trainer(
        model, dataset, config, collate_fn=PadCollator(tokenizer.pad_token_id), eval_fn=eval_fn,
        callbacks=[_WriteRecipe(recipe, data)] if rank == 0 else [],
        data_fingerprint=_data_fingerprint(recipe, data, dataset),
    )  # fmt: skip
    result = trainer.train()
    train_seconds = time.perf_counter() - start
    if rank != 0:
        return None
    info = {
        "method": method,
        "parameters": count_parameters(model),
        "train_seconds": train_seconds,
        "world_size": world,
        "frame_peft_version": __version__,
        "task_ids": vocab.to_dict(),
        "train_result": dict(vars(result)),
    }
    write_run_json(run_dir, info)
    if not evaluate_after:
        return None
    if world > 1:
        model, tokenizer = load_trained(recipe, method, Path(result.adapter_path))
        results = _evaluate(model, tokenizer, recipe, data, method, {})
    else:  # the Trainer's periodic eval also runs after the last step: reuse it
        results = last_eval.get("results") or _evaluate(model, tokenizer, recipe, data, method, {})
    results.metadata["train_seconds"] = train_seconds
    _save_eval(results, run_dir, method, echo_results)
    return results


def evaluate_target(
    target: str,
    *,
    overrides: Sequence[str] = (),
    method: str | None = None,
    output_dir: str | Path | None = None,
    lm_eval_tasks: Sequence[str] | None = None,
    lm_eval_include: Sequence[str | Path] = (),
    lm_eval_only: bool = False,
):
    """Evaluate a run directory (reloading its adapter) or a base model on a recipe.

    With ``lm_eval_tasks``, lm-evaluation-harness runs too (after ours, or instead of it with
    ``lm_eval_only``), on task YAMLs from ``lm_eval_include`` folders and lm-eval's own. Its
    tasks are checked first, before any model is loaded: an unknown name, or (in offline mode)
    a dataset that is not on this machine, raises ``LmEvalTaskError`` in seconds. Returns our
    results (``None`` with ``lm_eval_only``); lm-eval's output goes to ``lm_eval.json``.
    """
    from ..evaluation.lm_eval_bridge import LmEvalTaskError, check_lm_eval_tasks

    plan = None
    if lm_eval_tasks:
        plan = check_lm_eval_tasks(lm_eval_tasks, include_path=list(lm_eval_include))
        if plan.unchecked:
            print(f"lm-eval: cannot check offline whether {plan.unchecked} load (Python data)")
    elif lm_eval_include or lm_eval_only:
        raise LmEvalTaskError("--lm-eval-include / --lm-eval-only need --lm-eval TASK ...")
    path = Path(target)
    # A folder is a run directory or an error saying what it is (a checkpoint, an empty folder,
    # ...); only a built-in recipe's bare name wins over a same-named folder without run.json.
    if path.is_dir() and ((path / "run.json").is_file() or target not in builtin_recipes()):
        info, recipe, model, tokenizer, data = load_run(require_run_dir(path), overrides)
        method = info["method"]
        out_dir = Path(output_dir or path)
    else:
        recipe = load_recipe(target, overrides)
        method = method or BASELINE
        if method != BASELINE:
            raise ValueError(
                f"--method {method} with a recipe evaluates nothing trained; pass the run "
                f"directory written by `frame-peft train` (e.g. runs/{recipe.name}/{method})"
            )
        model, tokenizer = build_model(recipe, BASELINE)
        out_dir = Path(output_dir or recipe.run_root() / BASELINE)
        data = None if lm_eval_only else prepare_data(recipe)
        if data is not None:
            check_same_split(out_dir, data)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = None
    if not lm_eval_only:
        results = _evaluate(model, tokenizer, recipe, data, method, {})
        _save_eval(results, out_dir, method)
    if plan is not None:
        from ..evaluation import evaluate_with_lm_eval

        lm = evaluate_with_lm_eval(
            model,
            tokenizer,
            plan.names,
            batch_size=recipe.eval.batch_size,
            include_path=plan.include_path,
            include_defaults=plan.include_defaults,
        )
        write_json(out_dir / "lm_eval.json", lm, default=str)
        print(json.dumps(lm.get("results", lm), indent=2, default=str))
    return results


def run_comparison(
    recipe: Recipe, methods: Sequence[str], root: Path, *, print_table: bool = True
) -> tuple[str, list[EvalResults], PreparedData]:
    """Train and evaluate ``methods`` on the same data into ``root/<method>``; write
    ``compare.md`` / ``compare.json``; return ``(table, results, data)`` (the results keep the
    per-item records, e.g. for intervals). ``print_table=False``: print the wall times only
    (for callers that print the results with their intervals instead)."""
    from ..evaluation import comparison_table

    data = prepare_data(recipe)
    print(data.summary())
    results, timings = [], {}
    for method in methods:
        start = time.perf_counter()
        run_dir = root / method
        if method == BASELINE:
            run_dir.mkdir(parents=True, exist_ok=True)
            model, tokenizer = build_model(recipe, BASELINE)
            res = _evaluate(model, tokenizer, recipe, data, method, {})
            _save_eval(res, run_dir, method, print_table)
        else:
            res = train_recipe(recipe, method=method, output_dir=run_dir, data=data,
                               echo_results=print_table)  # fmt: skip
        results.append(res)
        timings[method] = time.perf_counter() - start
    table = comparison_table(results, names=list(methods))
    note = OFFLINE_NOTE if recipe.data.source == "offline" else ""
    text = f"# {recipe.name}: {', '.join(methods)}\n\n{table}\n\n{note}\n"
    write_text(root / "compare.md", text)
    write_json(
        root / "compare.json",
        {"methods": list(methods), "seconds": timings, "results": [r.to_dict() for r in results]},
        default=str,
    )
    print(
        (f"\n{text}" if print_table else "")
        + "\nwall time per method (s): "
        + ", ".join(f"{m} {t:.0f}" for m, t in timings.items())
    )
    return table, results, data


def compare_recipe(
    recipe: Recipe, *, methods: Sequence[str] | None = None, output_dir: str | Path | None = None
) -> str:
    """Train and evaluate every method on the same data; print and return one markdown table."""
    methods = list(methods or recipe.compare)
    return run_comparison(recipe, methods, Path(output_dir or recipe.run_root()))[0]
