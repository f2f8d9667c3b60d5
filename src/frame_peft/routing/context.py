"""Per-forward routing inputs (attention mask, task ids) and the explicit collection of aux losses.

``inject`` registers a forward pre-hook on the model it adapts. At the start of every forward of
that model the hook opens a fresh :class:`ForwardRecord` and fills in the token mask from the
call's own ``attention_mask`` (or from :func:`routing_context`, which overrides it). Each mixture
layer returns its losses explicitly to :meth:`RoutingState.record`; :func:`frame_peft.aux_loss`
reads the record of the latest forward. Nothing needs clearing by hand.

Model-level inputs for methods that need more than the layer input (HMoRA's task encoder): the
hook also keeps the call's ``input_ids`` / ``inputs_embeds`` / ``labels``
(:meth:`ForwardRecord`), and :meth:`RoutingState.input_embeddings` embeds the ids with the model's
input embedding module (held by the state, see :func:`input_embedding_of`). ``RoutingState.shared``
holds model-level objects that the adapters of one injection share (e.g. one module owned by the
first adapter and used by all); ``RoutingState.aux_reduction`` says whether :func:`aux_loss`
averages (default) or sums the modules' terms.

Analysis tools watch routing through :meth:`RoutingState.add_observer`: every mixture layer hands
each forward's :class:`~frame_peft.routing.Routing` to :meth:`RoutingState.observe`, which is free
when nobody is watching.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

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
    attention_mask: torch.Tensor | None = None,
    task_ids: torch.Tensor | None = None,
    prompt_mask: torch.Tensor | None = None,
) -> Iterator[None]:
    """Give mixture layers the token mask (B, S) and/or task ids (B,) for forwards in this block.

    Overrides the ``attention_mask`` the model is called with (for the routing statistics only;
    the model's attention is untouched). ``prompt_mask`` (B, S), 1 on the prompt tokens of each
    sequence, tells methods that read a sequence's prompt (HMoRA's task encoder) where it is.
    """
    token = _OVERRIDE.set(
        {"attention_mask": attention_mask, "task_ids": task_ids, "prompt_mask": prompt_mask}
    )
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
    :meth:`Adapter.prepare_forward` (or the first layer that needs it) leaves work the layers of
    this forward share.

    ``input_ids`` (B, S), ``inputs_embeds`` (B, S, D) and ``labels`` (B, S) are what the model was
    called with (None when absent); ``prompt_mask`` (B, S) comes from :func:`routing_context`.
    ``from_model`` is True when the model's forward pre-hook opened this record, i.e. ``scratch``
    belongs to one forward (a standalone adapter never gets a fresh record). ``aux_in_loss`` is
    True once the model's loss hook added this forward's aux to ``outputs.loss`` (at most once).
    """

    attention_mask: torch.Tensor | None = None
    task_ids: torch.Tensor | None = None
    terms: list[AuxTerm] = field(default_factory=list)
    scratch: dict = field(default_factory=dict)
    input_ids: torch.Tensor | None = None
    inputs_embeds: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    prompt_mask: torch.Tensor | None = None
    from_model: bool = False
    aux_in_loss: bool = False  # the model's loss hook already added this forward's aux


def model_inputs(args: tuple, kwargs: dict) -> dict[str, torch.Tensor | None]:
    """``{"input_ids", "inputs_embeds", "labels"}`` of a model call (positional ``input_ids``
    first, as Hugging Face models take it); None for what the call lacks or is not a tensor."""
    out = {}
    for i, key in enumerate(("input_ids", "inputs_embeds", "labels")):
        value = kwargs.get(key, args[0] if i == 0 and args else None)
        out[key] = value if isinstance(value, torch.Tensor) else None
    return out


def input_embedding_of(model: nn.Module) -> nn.Module | None:
    """The model's input embedding module (``get_input_embeddings()``), or None (plain models)."""
    get = getattr(model, "get_input_embeddings", None)
    if not callable(get):
        return None
    try:
        module = get()
    except (NotImplementedError, AttributeError):
        return None
    return module if isinstance(module, nn.Module) else None


class RoutingState:
    """Shared by the mixture layers of one adapted model (a plain object: never saved).

    Args:
        input_embedding: the model's input embedding module (``inject`` passes
            :func:`input_embedding_of` the model), for :meth:`input_embeddings`; None without one.

    Attributes:
        shared: model-level objects the adapters of one injection share, by key (a method
            prefixes its keys with its name). A module kept here is registered (saved, moved,
            trained) by exactly one adapter, its owner; the others only reference it.
        aux_reduction: ``"mean"`` (default) or ``"sum"``: how :meth:`aux_loss` combines the
            modules' terms. A method whose published loss sums over its routers sets ``"sum"``.
    """

    def __init__(self, input_embedding: nn.Module | None = None) -> None:
        self.current = ForwardRecord()
        self.observers: list[RoutingObserver] = []
        self.input_embedding = input_embedding
        self.shared: dict[str, Any] = {}
        self.aux_reduction = "mean"

    def __getstate__(self) -> dict[str, Any]:
        """For ``copy.deepcopy`` and pickling of an adapted model: everything but the latest
        forward's record (its tensors belong to that forward's graph, which cannot be copied)
        and the observers (callbacks of whoever watches the original). The copy starts with an
        empty record and no observers; its own next forward fills the record."""
        state = dict(self.__dict__)
        state["current"] = ForwardRecord()
        state["observers"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def embedding_dim(self) -> int | None:
        """Width D of the model's input embeddings, or None when the state has no embedding."""
        weight = getattr(self.input_embedding, "weight", None)
        return int(weight.shape[-1]) if isinstance(weight, torch.Tensor) else None

    def input_embeddings(self) -> torch.Tensor | None:
        """The (B, S, D) input embeddings of this forward: the ``inputs_embeds`` it was called with,
        else the input embedding module applied to its ``input_ids``; None when neither exists."""
        rec = self.current
        if rec.inputs_embeds is not None:
            return rec.inputs_embeds
        if rec.input_ids is None or self.input_embedding is None:
            return None
        return self.input_embedding(rec.input_ids)

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

    def begin_forward(
        self, attention_mask: torch.Tensor | None, inputs: dict[str, Any] | None = None
    ) -> None:
        """Open this forward's record; ``inputs`` is :func:`model_inputs` of the model call."""
        override = _OVERRIDE.get()
        task_ids = prompt_mask = None
        if override is not None:
            if override["attention_mask"] is not None:
                attention_mask = override["attention_mask"]
            task_ids = override["task_ids"]
            prompt_mask = override.get("prompt_mask")
        if attention_mask is not None and attention_mask.dim() != 2:
            attention_mask = None  # 4-D custom masks carry no per-token padding information
        self.current = ForwardRecord(
            attention_mask=attention_mask,
            task_ids=task_ids,
            prompt_mask=prompt_mask,
            from_model=inputs is not None,
            **(inputs or {}),
        )

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
        """Mean (or, with ``aux_reduction="sum"``, sum) over mixture modules of each module's
        weighted aux losses (None if none)."""
        terms = self.current.terms
        if not terms:
            return None
        stacked = torch.stack([t.total.float() for t in terms])
        return stacked.sum() if self.aux_reduction == "sum" else stacked.mean()

    def aux_stats(self) -> dict[str, float]:
        """Per-kind means of the latest forward's aux losses, as floats (for logging)."""
        out: dict[str, list[float]] = {}
        for t in self.current.terms:
            for k, v in t.losses.items():
                out.setdefault(k, []).append(float(v.detach()))
        return {k: sum(v) / len(v) for k, v in out.items()}
