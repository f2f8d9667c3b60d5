"""Deterministic, resumable data order shared by every process, and a minimal padding collator.

One optimizer step consumes a *global batch* of ``G = per_device_batch_size (B) ×
gradient_accumulation_steps (A) × world_size (W)`` dataset indices: the ``step``-th slice of the
epoch's permutation (``torch.randperm(N)`` seeded with ``seed + epoch``; identity when not
shuffling). The slice is cut into ``A·W`` chunks of ``B``; process ``r`` takes chunks
``r·A … r·A + A - 1`` as its ``A`` micro-batches, in order. Hence

* the data of a step depends only on ``(seed, epoch, step, G)``, not on how ``G`` is split: one
  process with ``B = 4`` sees the same sequences as two processes with ``B = 2``, and its
  micro-batches of an ``A = 2, B = 2`` run are exactly the per-rank batches of a ``W = 2, B = 2``
  run;
* resuming needs only ``(epoch, step_in_epoch)``; the last ``N mod G`` indices of each epoch are
  dropped (every step has a full global batch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch


def epoch_permutation(num_items: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The order of dataset indices in ``epoch`` (a seeded permutation, or ``range`` in order)."""
    if not shuffle:
        return list(range(num_items))
    g = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(num_items, generator=g).tolist()


class StepBatchSampler:
    """Yields this process's micro-batches (lists of indices) of one epoch, from a given step.

    Args:
        num_items: ``len(dataset)``.
        batch_size: per-device micro-batch size ``B``.
        accumulation: micro-batches per step ``A``.
        world_size: number of processes ``W``.
        rank: this process's rank.
        seed: data seed; epoch ``e`` uses ``seed + e``.
        epoch: the epoch to iterate.
        start_step: first step of the epoch to yield (resume); earlier steps are skipped
            without touching the dataset.
        shuffle: permute the data each epoch.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        accumulation: int,
        world_size: int,
        rank: int,
        seed: int,
        epoch: int,
        start_step: int = 0,
        shuffle: bool = True,
    ) -> None:
        self.num_items = num_items
        self.batch_size = batch_size
        self.accumulation = accumulation
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.epoch = epoch
        self.start_step = start_step
        self.shuffle = shuffle
        self.global_batch = batch_size * accumulation * world_size
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if num_items < self.global_batch:
            raise ValueError(
                f"the dataset has {num_items} items, fewer than one global batch of "
                f"{self.global_batch} (per_device_batch_size {batch_size} x "
                f"gradient_accumulation_steps {accumulation} x world size {world_size})"
            )

    @property
    def steps_per_epoch(self) -> int:
        return self.num_items // self.global_batch

    def __len__(self) -> int:
        return max(0, self.steps_per_epoch - self.start_step) * self.accumulation

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_permutation(self.num_items, self.seed, self.epoch, self.shuffle)
        b, a = self.batch_size, self.accumulation
        for step in range(self.start_step, self.steps_per_epoch):
            base = step * self.global_batch + self.rank * a * b
            for micro in range(a):
                start = base + micro * b
                yield order[start : start + b]


def pad_collate(items: Sequence[dict[str, Any]], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad ``{"input_ids", "labels", "task_id"}`` items into LongTensors.

    Returns ``input_ids`` (B, S) padded with ``pad_token_id``, ``attention_mask`` (B, S),
    ``labels`` (B, S) with -100 on padding (``labels`` defaults to ``input_ids`` when an item has
    none) and ``task_ids`` (B,) (0 when an item has no ``task_id``). The data package's
    ``PadCollator`` does the same with more options; this is the Trainer's fallback.
    """
    if not items:
        raise ValueError("pad_collate got an empty batch")
    length = max(len(item["input_ids"]) for item in items)
    n = len(items)
    input_ids = torch.full((n, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    labels = torch.full((n, length), -100, dtype=torch.long)
    task_ids = torch.zeros(n, dtype=torch.long)
    for i, item in enumerate(items):
        ids = list(item["input_ids"])
        lab = list(item.get("labels", ids))
        if len(lab) != len(ids):
            raise ValueError(
                f"item {i}: labels has {len(lab)} entries but input_ids has {len(ids)}"
            )
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, : len(ids)] = 1
        labels[i, : len(ids)] = torch.tensor(lab, dtype=torch.long)
        task_ids[i] = int(item.get("task_id", 0))
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "task_ids": task_ids,
    }
