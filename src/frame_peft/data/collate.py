"""Right-padding collator for the items of :class:`~frame_peft.data.MultiTaskMixture`.

Batch layout (all ``torch.long``)::

    input_ids       (B, S)  padded with pad_token_id
    attention_mask  (B, S)  1 on real tokens, 0 on padding
    labels          (B, S)  -100 on prompt tokens and on padding
    task_ids        (B,)    the item's task id

``S`` is the longest item, rounded up to ``pad_to_multiple_of`` when given. Padding positions are
never labelled, even when the pad id equals the EOS id (the EOS that ends a target stays
labelled because it is a real token).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .mixture import IGNORE_INDEX

__all__ = ["PadCollator"]


class PadCollator:
    """Collate ``{"input_ids", "labels", "task_id"}`` items into a right-padded batch.

    Args:
        pad_token_id: id written into padded ``input_ids`` positions (>= 0).
        pad_to_multiple_of: round the padded length up to a multiple of this (``None``: no).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int) or pad_token_id < 0:
            raise ValueError(f"pad_token_id must be an int >= 0, got {pad_token_id!r}")
        if pad_to_multiple_of is not None and (
            isinstance(pad_to_multiple_of, bool)
            or not isinstance(pad_to_multiple_of, int)
            or pad_to_multiple_of < 1
        ):
            raise ValueError(
                f"pad_to_multiple_of must be None or an int >= 1, got {pad_to_multiple_of!r}"
            )
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("cannot collate an empty batch")
        for item in items:
            if len(item["input_ids"]) != len(item["labels"]):
                raise ValueError(
                    f"item has {len(item['input_ids'])} input_ids but {len(item['labels'])} labels"
                )
        length = max(len(item["input_ids"]) for item in items)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(items)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[row, :n] = torch.as_tensor(item["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.as_tensor(item["labels"], dtype=torch.long)
            attention_mask[row, :n] = 1
        task_ids = torch.as_tensor([int(item["task_id"]) for item in items], dtype=torch.long)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "task_ids": task_ids,
        }
