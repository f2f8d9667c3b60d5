"""Random token datasets for the training tests (uneven lengths and label counts)."""

from __future__ import annotations

import torch

import frame_peft as fp
from frame_peft.training import TrainerCallback


class Crash(TrainerCallback):
    """Simulates a killed process: raises after step ``at`` (before that step's checkpoint)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, trainer, step, metrics):
        if step == self.at:
            raise KeyboardInterrupt(f"simulated crash at step {step}")


class RandomTokens(torch.utils.data.Dataset):
    """``n`` items of 6-15 random tokens from ``[3, vocab)``; the first 1..L-2 positions of each are
    unlabelled (-100), so items carry different numbers of labelled tokens."""

    def __init__(self, n: int = 32, vocab: int = 64, seed: int = 0, num_tasks: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            length = int(torch.randint(6, 16, (1,), generator=g))
            ids = torch.randint(3, vocab, (length,), generator=g).tolist()
            prompt = int(torch.randint(1, length - 1, (1,), generator=g))
            labels = [-100] * prompt + ids[prompt:]
            self.items.append({"input_ids": ids, "labels": labels, "task_id": i % num_tasks})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def frame_config(dropout: float = 0.0) -> fp.FrameConfig:
    return fp.FrameConfig(
        target_modules=["q_proj", "v_proj", "down_proj"], num_experts=4, top_k=2, rank=2,
        dropout=dropout,
    )  # fmt: skip


def lora_config() -> fp.LoRAConfig:
    return fp.LoRAConfig(target_modules=["q_proj", "v_proj", "down_proj"], rank=4, dropout=0.0)


def randomise_lora_b(model: torch.nn.Module, seed: int = 5) -> None:
    """Give every zero-initialised B factor random values so that A gets gradients at step 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and name.endswith(".B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
