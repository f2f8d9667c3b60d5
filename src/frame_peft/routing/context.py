"""Per-forward routing inputs (attention mask, task ids) and the explicit collection of aux losses.

``inject`` registers a forward pre-hook on the model it adapts. At the start of every forward of
that model the hook opens a fresh :class:`ForwardRecord` and fills in the token mask from the
call's own ``attention_mask`` (or from :func:`routing_context`, which overrides it). Each mixture
layer returns its losses explicitly to :meth:`RoutingState.record`; :func:`frame_peft.aux_loss`
reads the record of the latest forward. Nothing needs clearing by hand.

Analysis tools watch routing through :meth:`RoutingState.add_observer`: every mixture layer hands
each forward's :class:`~frame_peft.routing.Routing` to :meth:`RoutingState.observe`, which is free
when nobody is watching.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .router import Routing

#: ``observer(module_name, routing, token_mask, token_task_ids)``; masks and task ids are (T,)
#: tensors aligned with ``routing.probs`` rows, or None.
RoutingObserver = Callable[[str, "Routing", torch.Tensor | None, torch.Tensor | None], None]

_OVERRIDE: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "frame_peft_routing_override", default=None
)


@contextlib.contextmanager
def routing_context(
    attention_mask: torch.Tensor | None = None, task_ids: torch.Tensor | None = None
) -> Iterator[None]:
    """Give mixture layers the token mask (B, S) and/or task ids (B,) for forwards in this block.

    Overrides the ``attention_mask`` the model is called with (for the routing statistics only;
    the model's attention is untouched).
    """
    token = _OVERRIDE.set({"attention_mask": attention_mask, "task_ids": task_ids})
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


@dataclass
class AuxTerm:
    """One module's auxiliary losses for one forward (already multiplied by their coefficients)."""

    module: str
    losses: dict[str, torch.Tensor]
    num_tokens: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return sum(self.losses.values())


@dataclass
class ForwardRecord:
    """One forward of the model: its routing inputs, its aux losses and ``scratch``, where
    :meth:`Adapter.prepare_forward` leaves work the layers of this forward share."""

    attention_mask: torch.Tensor | None = None
    task_ids: torch.Tensor | None = None
    terms: list[AuxTerm] = field(default_factory=list)
    scratch: dict = field(default_factory=dict)


class RoutingState:
    """Shared by the mixture layers of one adapted model (a plain object: never saved)."""

    def __init__(self) -> None:
        self.current = ForwardRecord()
        self.observers: list[RoutingObserver] = []

    def add_observer(self, observer: RoutingObserver) -> Callable[[], None]:
        """Call ``observer`` on every routing decision from now on; returns its remover."""
        self.observers.append(observer)
        return lambda: self.observers.remove(observer)

    def token_task_ids(self, lead_shape: torch.Size) -> torch.Tensor | None:
        """The (T,) task id of each token of a (B, S) layer input, from the (B,) task ids."""
        ids = self.current.task_ids
        if ids is None or len(lead_shape) != 2 or ids.reshape(-1).shape[0] != lead_shape[0]:
            return None
        return ids.reshape(-1, 1).expand(*lead_shape).reshape(-1)

    def observe(self, module: str, routing: Routing, lead_shape: torch.Size) -> None:
        """Hand ``module``'s routing of an input with leading shape ``lead_shape`` to observers."""
        if not self.observers:
            return
        mask, task_ids = self.token_mask(lead_shape), self.token_task_ids(lead_shape)
        for observer in list(self.observers):
            observer(module, routing, mask, task_ids)

    def begin_forward(self, attention_mask: torch.Tensor | None) -> None:
        override = _OVERRIDE.get()
        task_ids = None
        if override is not None:
            if override["attention_mask"] is not None:
                attention_mask = override["attention_mask"]
            task_ids = override["task_ids"]
        if attention_mask is not None and attention_mask.dim() != 2:
            attention_mask = None  # 4-D custom masks carry no per-token padding information
        self.current = ForwardRecord(attention_mask=attention_mask, task_ids=task_ids)

    def token_mask(self, lead_shape: torch.Size) -> torch.Tensor | None:
        """The (T,) 0/1 mask for a layer input of leading shape ``lead_shape``, or None.

        A (B, S) input uses the (B, S) mask; during cached generation the input holds only the
        newest S positions of a longer mask, so its last S columns are used.
        """
        mask = self.current.attention_mask
        if mask is None:
            return None
        if tuple(lead_shape) == tuple(mask.shape):
            return mask.reshape(-1)
        if (
            len(lead_shape) == 2
            and lead_shape[0] == mask.shape[0]
            and lead_shape[1] < mask.shape[1]
        ):
            return mask[:, -lead_shape[1] :].reshape(-1)
        return None

    def record(self, term: AuxTerm) -> None:
        self.current.terms.append(term)

    def record_losses(
        self,
        module: str,
        losses: dict[str, torch.Tensor],
        mask: torch.Tensor | None,
        num_tokens: int,
    ) -> None:
        """Record ``losses`` of ``module`` for this forward (nothing if empty); ``num_tokens`` is
        the token count when there is no mask."""
        if losses:
            n = mask.sum() if mask is not None else torch.tensor(float(num_tokens))
            self.record(AuxTerm(module, losses, n))

    def aux_loss(self) -> torch.Tensor | None:
        """Mean over mixture modules of each module's weighted aux losses (None if none)."""
        terms = self.current.terms
        if not terms:
            return None
        return torch.stack([t.total.float() for t in terms]).mean()

    def aux_stats(self) -> dict[str, float]:
        """Per-kind means of the latest forward's aux losses, as floats (for logging)."""
        out: dict[str, list[float]] = {}
        for t in self.current.terms:
            for k, v in t.losses.items():
                out.setdefault(k, []).append(float(v.detach()))
        return {k: sum(v) / len(v) for k, v in out.items()}
