"""HMoRA config: hierarchical (token + task) routing over a packed mixture of low-rank experts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...core.config import RoutingConfig, check_positive_int, is_number


@dataclass
class HMoRAConfig(RoutingConfig):
    """HMoRA (METHODS.md §4). Defaults: E = 8, dense (``top_k=None``), r = 4, α = 2r, s = α/√r.

    Per module at depth l (of L), for token t of a sequence::

        p_t = softmax(W_l h_t)                          token router, (E,)
        z_t = tanh(W_enc · mean_{s≤t, valid} h_s + b)   causal task encoder, (task_dim,)
              or  z = Emb[task_id]                      when task ids are given
        q_t = softmax(W_s z_t)                          task router, (E,)
        w_t = (1 − σ(β_l)) p_t + σ(β_l) q_t              hierarchical mix, (E,)
        Δy_t = s · B((A x_t) ⊙ expand(w_t)),  s = α/√r

    ``β_l`` starts at ``beta_min + (beta_max − beta_min) · l/(L − 1)`` (token routing in shallow
    layers, task routing in deep ones; a module without a layer index, or L = 1, starts at the
    midpoint).

    Args:
        num_experts: E experts per module (overridable per module).
        top_k: ``None`` (dense, default) or k in [1, E]: keep the k largest ``w_t`` and
            renormalise them to sum to 1 (overridable per module).
        task_routing: ``False`` drops the task router, encoder and β: ``w_t = p_t`` (a dense
            token-routed MoE-LoRA with scale α/√r).
        task_dim: width of the task representation z.
        num_tasks: ``None`` (task from the encoder only) or the number of task ids that
            ``fp.routing_context(task_ids=...)`` may pass; with ids given, z is a learned
            embedding of the id, without them the encoder is used.
        beta_min, beta_max: initial β of the first and last layer (σ(−2) ≈ 0.12, σ(2) ≈ 0.88).
        aux_loss: ``"entropy"`` (default) or ``"none"``.
        aux_loss_coef: coefficient of the entropy loss ``−H(mean_t w_t) + mean_t H(w_t)``
            (0.005; 0 = off).
        z_loss_coef, router_jitter: of the token router, as for every routed method (0 = off).
    """

    method: ClassVar[str] = "hmora"
    aux_kinds: ClassVar[tuple[str, ...]] = ("entropy", "none")
    dense_top_k: ClassVar[bool] = True

    rank: int = 4
    top_k: int | None = None
    aux_loss: str | None = "entropy"
    aux_loss_coef: float = 0.005
    task_routing: bool = True
    task_dim: int = 32
    num_tasks: int | None = None
    beta_min: float = -2.0
    beta_max: float = 2.0

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.task_routing, bool):
            raise ValueError(f"task_routing must be True or False, got {self.task_routing!r}")
        check_positive_int("task_dim", self.task_dim)
        if self.num_tasks is not None:
            check_positive_int("num_tasks", self.num_tasks)
            if not self.task_routing:
                raise ValueError(
                    "num_tasks needs task_routing=True (task ids feed the task router); set "
                    "num_tasks=None or enable task routing"
                )
        for key in ("beta_min", "beta_max"):
            if not is_number(getattr(self, key)):
                raise ValueError(f"{key} must be a finite number, got {getattr(self, key)!r}")
        if self.beta_min > self.beta_max:
            raise ValueError(
                f"beta_min ({self.beta_min}) must not exceed beta_max ({self.beta_max}): task "
                "routing is meant to rise with depth"
            )


def initial_beta(config: HMoRAConfig, layer_index: int | None, num_layers: int) -> float:
    """β_l at init: linear in ``layer_index / (num_layers − 1)`` from beta_min to beta_max.

    ``layer_index`` None (no integer in the module name) or ``num_layers`` <= 1 -> the midpoint.
    """
    frac = 0.5 if layer_index is None or num_layers <= 1 else layer_index / (num_layers - 1)
    frac = min(max(frac, 0.0), 1.0)
    return float(config.beta_min) + (float(config.beta_max) - float(config.beta_min)) * frac
