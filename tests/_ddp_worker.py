"""The script ``tests/test_distributed.py`` launches with torchrun (2 processes, gloo on the CPU).

Usage: ``torchrun --nproc_per_node 2 _ddp_worker.py MODE OUT_DIR`` with MODE ``ddp`` or ``fsdp``.
Trains LoRA (per-device batch 2) and FRAME (per-device batch 2, aux loss on) for 3 steps each
through ``Trainer``; every rank then writes the adapter tensors it holds (gathered to full tensors
under FSDP) to ``OUT_DIR/<method>/rank<r>.safetensors``; rank 0's checkpoint and final adapter stay
in ``OUT_DIR/<method>/run``. Finally a new FRAME model resumes from the step-2 checkpoint
and writes its final tensors to ``OUT_DIR/frame_resumed/rank<r>.safetensors``. Under DDP, FRAME
with the order scan (scans after steps 1 and 2) also trains and writes
``OUT_DIR/frame_scan/rank<r>.safetensors``: both ranks must hold the same orders and factors.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from safetensors.torch import save_file

import frame_peft as fp
from _models import tiny_llama
from _training_data import RandomTokens, frame_config, lora_config, randomise_lora_b
from frame_peft.training import TrainConfig, Trainer
from frame_peft.training.distributed import full_tensors

STEPS = 3


def run_config(out: Path, mode: str) -> TrainConfig:
    return TrainConfig(
        output_dir=str(out), max_steps=STEPS, per_device_batch_size=2, lr=1e-2, order_lr=1e-2,
        warmup_steps=1, distributed=mode, progress=False, report_to="none", log_every=1,
        save_every=2, seed=3,
    )  # fmt: skip


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    for method, config in (("lora", lora_config()), ("frame", frame_config())):
        model = tiny_llama()
        fp.inject(model, config)
        randomise_lora_b(model)
        trainer = Trainer(model, RandomTokens(16), run_config(out / method / "run", mode))
        result = trainer.train()
        # state_dict() of an FSDP2 model holds DTensor shards: gather them (collective).
        tensors = full_tensors(fp.adapter_state_dict(model))
        rank = int(os.environ["RANK"])
        save_file({k: v.contiguous() for k, v in tensors.items()},
                  str(out / method / f"rank{rank}.safetensors"))  # fmt: skip
        if rank == 0:
            (out / method / "result.txt").write_text(f"{result.global_step} {result.loss!r}\n")
        torch.distributed.barrier()
    # Resume FRAME from its step-2 checkpoint with a new model: must end where the run ended.
    resume_dir = out / "frame_resumed"
    if rank == 0:
        shutil.copytree(out / "frame" / "run" / "checkpoint-2", resume_dir / "checkpoint-2")
    torch.distributed.barrier()
    model = tiny_llama()
    torch.manual_seed(1)  # another adapter init: the adapter state must come from the checkpoint
    fp.inject(model, frame_config())
    randomise_lora_b(model, seed=11)
    Trainer(model, RandomTokens(16), run_config(resume_dir, mode)).train()
    tensors = full_tensors(fp.adapter_state_dict(model))
    save_file({k: v.contiguous() for k, v in tensors.items()},
              str(resume_dir / f"rank{rank}.safetensors"))  # fmt: skip
    torch.distributed.barrier()
    if mode == "ddp":
        model = tiny_llama()
        fp.inject(model, frame_scan_config())
        randomise_lora_b(model)
        Trainer(model, RandomTokens(16), run_config(out / "frame_scan" / "run", mode)).train()
        save_file({k: v.contiguous() for k, v in fp.adapter_state_dict(model).items()},
                  str(out / "frame_scan" / f"rank{rank}.safetensors"))  # fmt: skip
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def frame_scan_config() -> fp.FrameConfig:
    return fp.FrameConfig(
        target_modules=["q_proj", "v_proj", "down_proj"], num_experts=4, top_k=2, rank=2,
        dropout=0.0, order_search="scan", scan_at=[0.3, 0.6], scan_batches=2, scan_tokens=64,
    )  # fmt: skip


if __name__ == "__main__":
    main()
