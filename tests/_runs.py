"""Tiny trained run directories (as `frame-peft train` writes them), for tests of what reads them.

:func:`tiny_recipe` writes a 2-layer character-level Llama, its tokenizer and small ARC-style
data files for one or more tasks, and a recipe YAML that trains on them offline;
:func:`train_tiny_run` trains one method on it (no evaluation) and returns the run directory.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from _tokenizer import char_tokenizer, tiny_text_llama


def arc_rows(n: int, *, offset: int = 0) -> list[dict]:
    """``n`` ARC-format rows (question, 3 labelled choices, answer A) with distinct ids."""
    return [
        {
            "id": f"Q{i}",
            "question": f"What is {i} plus one?",
            "choices": {"text": [str(i + 1), str(i + 7), str(i + 3)], "label": ["A", "B", "C"]},
            "answerKey": "A",
        }
        for i in range(offset, offset + n)
    ]


def tiny_recipe(
    root: Path,
    *,
    tasks: Sequence[str] = ("arc_easy",),
    rows_per_task: int = 24,
    train_per_task: int = 16,
    eval_per_task: int = 6,
    num_experts: int = 3,
    max_steps: int = 3,
    lr: float = 1e-2,
    extra_adapters: dict[str, dict] | None = None,
) -> Path:
    """Write model, tokenizer, data and ``tiny.yaml`` under ``root``; returns the recipe path.

    Every task gets its own ARC-format file (``arc_easy``, ``arc_challenge`` and ``openbookqa``
    -style names all load it); FRAME, MoE-LoRA and LoRA adapters are configured small, plus
    ``extra_adapters`` (e.g. ``{"peft:lora": {...}}``).
    """
    root.mkdir(parents=True, exist_ok=True)
    model_dir = root / "model"
    tiny_text_llama().save_pretrained(model_dir)
    char_tokenizer().save_pretrained(model_dir)
    paths = {}
    for i, task in enumerate(tasks):
        path = root / f"{task}.jsonl"
        rows = arc_rows(rows_per_task, offset=100 * i)
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        paths[task] = str(path)
    experts = {"num_experts": num_experts, "top_k": 1, "rank": 2}
    recipe = {
        "name": "tiny",
        "model": {"name": str(model_dir), "dtype": "float32"},
        "method": "frame",
        "target_modules": ["q_proj", "v_proj"],
        "adapters": {
            "frame": dict(experts),
            "moe-lora": dict(experts),
            "lora": {"rank": 2},
            **(extra_adapters or {}),
        },
        "data": {
            "source": "offline",
            "paths": paths,
            "train": dict.fromkeys(tasks, train_per_task),
            "eval": dict.fromkeys(tasks, eval_per_task),
            "max_length": 96,
        },
        "train": {
            "max_steps": max_steps,
            "per_device_batch_size": 2,
            "progress": False,
            "report_to": "none",
            "log_every": 1,
            "lr": lr,
        },
        "eval": {"batch_size": 4, "max_new_tokens": 4},
        "compare": ["base", "lora", "frame"],
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def train_tiny_run(recipe_path: Path, method: str, run_dir: Path) -> Path:
    """Train ``method`` on the recipe into ``run_dir`` (no evaluation); returns ``run_dir``."""
    from frame_peft.pipeline import train_recipe
    from frame_peft.recipes import load_recipe

    train_recipe(load_recipe(recipe_path), method=method, output_dir=run_dir, evaluate_after=False)
    return run_dir
