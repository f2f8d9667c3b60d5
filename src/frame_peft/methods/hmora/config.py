"""HMoRA config: hierarchical (token + task) routing over a packed mixture of low-rank experts.

Defaults follow the authors' released code and run script (github.com/LiaoMengqi/HMoRA,
``hmora/model.py``, ``hmora/config.py``, ``train.py``, ``run_train.sh`` at commit 5215d21);
:data:`SIMPLIFIED` holds the options that give this library's earlier, simplified HMoRA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...core.config import RoutingConfig, check_number, check_positive_int, is_number

#: The earlier simplified HMoRA of this library (before the parity work), as config values:
#: dense routing renormalised by top-k, bias-free routers without dropout, a per-module causal
#: prefix-mean task encoder, the entropy loss averaged over modules, one A per expert, no router
#: sharing, no plain-LoRA modules, every layer mixing token and task routing, α = 2r.
SIMPLIFIED: dict[str, Any] = {
    "rank": 4,
    "alpha": None,
    "top_k": None,
    "top_k_gates": "renormalise",
    "router_bias": False,
    "router_dropout": 0.0,
    "task_encoder": "prefix_mean",
    "aux_loss": "entropy",
    "aux_loss_coef": 0.005,
    "aux_reduction": "mean",
    "shared_a": False,
    "share_router_qkv": False,
    "share_router_gate_up": False,
    "lora_modules": [],
    "token_only_below": 0.0,
    "task_only_above": 1.0,
}

#: Module-name groups whose routers are shared within one block (the authors' Llama/Qwen2 names).
QKV_NAMES = ("q_proj", "k_proj", "v_proj")
GATE_UP_NAMES = ("gate_proj", "up_proj")


@dataclass
class HMoRAConfig(RoutingConfig):
    """HMoRA (docs/methods.md §4.5). Defaults = the authors' run script: E = 8, top-2, r = 8,
    α = 8 (scale α/√r), dropout 0.1, shared A, routers shared by q/k/v and by gate/up, plain LoRA
    on o_proj/down_proj, GJS loss (λ = 0.005, summed over routers), a one-layer Transformer task
    encoder. Per routed module at depth l (of L), for token t of sequence b::

        p_t = softmax(W_l drop(h_t) + c_l)                    token router, (E,)
        z_b = Enc(prompt embeddings of b)[task token]          task representation, (D,)
        q_b = softmax(V_l drop(z_b) + d_l)                     task router, (E,)
        w_t = (1 − σ(β_l)) p_t + σ(β_l) q_b                    hierarchical mix, (E,)
        g_t = softmax over the top-k entries of w_t (others −∞)   gates, (E,)
        Δy_t = s · B((A x_t) ⊙ expand(g_t)),  s = α/√r

    ``β_l`` starts at ``beta_min + (beta_max − beta_min) · l/(L − 1)``. Layers with
    ``σ(β_l) < token_only_below`` keep only the token router (``w = p``, no β); layers with
    ``σ(β_l) > task_only_above`` only the task router (``w = q``, no token router).

    Args:
        num_experts, rank, alpha, dropout: as for every method (authors: 8, 8, 8, 0.1).
        top_k: ``None`` (dense: ``g = w``) or k in [1, E] (authors: 2).
        top_k_gates: ``"softmax"`` (authors: softmax over the k kept entries of the mixed
            probabilities w, the others masked) or ``"renormalise"`` (kept w divided by their sum).
        router_bias, router_dropout: the token and task routers are ``Linear`` with bias after a
            dropout of ``router_dropout`` (authors: True, 0.1).
        task_routing: ``False`` drops the task router, encoder and β (``w = p``).
        task_encoder: ``"transformer"`` (authors: one model-level encoder over the prompt
            embeddings, read at an appended task token) or ``"prefix_mean"`` (per-router causal
            prefix mean of the layer input, ``z_t = tanh(W c_t + b)``, width ``task_dim``).
        task_encoder_layers, task_encoder_heads, task_encoder_dropout: of the Transformer encoder
            (authors: 1, 16, 0.1; its width is the model's embedding width D, FFN 2·D).
        task_token_id: token whose input embedding initialises the task token (authors: the id of
            ``"?"``); None: N(0, σ²) with σ the embedding matrix's standard deviation.
        task_dim: width of z for ``task_encoder="prefix_mean"`` and for task-id embeddings.
        num_tasks: ``None`` or the number of task ids ``fp.routing_context(task_ids=...)`` may pass;
            with ids given, z is a learned embedding of the id instead of the encoder's output.
        beta_min, beta_max: initial β of the first and last layer (authors: −ε, +ε with ε = 2).
        token_only_below, task_only_above: σ(β_l) bounds for token-only / task-only layers
            (authors' run: 0.2, 0.8; 0 and 1 give every layer both routers).
        aux_loss: ``"gjs"`` (authors' generalised Jensen–Shannon loss on each token router and
            each task router), ``"entropy"`` (``−H(mean w) + mean H(w)`` of the mix) or ``"none"``.
        aux_loss_coef: λ of the aux loss (authors: 0.005).
        aux_reduction: ``"sum"`` (authors: summed over routers) or ``"mean"`` over modules.
        gamma_balance_token, gamma_certain_token, gamma_balance_task, gamma_certain_task: the GJS
            loss's γ_b, γ_c of token and task routers (authors' run: 0.98, 0.5, 0.98, 0.5).
        shared_a: one A (r, d_in) shared by the E experts (authors' ``use_hydra_lora``).
        share_router_qkv, share_router_gate_up: q/k/v (gate/up) projections of one block share
            the router of the first of them (authors: both on).
        lora_modules: module-name suffixes that get a plain LoRA (``s·B A x``, scale α/√r)
            instead of a routed mixture (authors: o_proj, down_proj).
        z_loss_coef: must stay 0: HMoRA's gates mix two softmaxes, so there are no logits for a
            z-loss (refused rather than silently ignored).
        router_jitter: multiplicative input noise of the token router in training (0 = off).
    """

    method: ClassVar[str] = "hmora"
    aux_kinds: ClassVar[tuple[str, ...]] = ("gjs", "entropy", "none")
    dense_top_k: ClassVar[bool] = True

    rank: int = 8
    alpha: float | None = 8.0
    dropout: float = 0.1
    num_experts: int = 8
    top_k: int | None = 2
    top_k_gates: str = "softmax"
    router_bias: bool = True
    router_dropout: float = 0.1
    aux_loss: str | None = "gjs"
    aux_loss_coef: float = 0.005
    aux_reduction: str = "sum"
    gamma_balance_token: float = 0.98
    gamma_certain_token: float = 0.5
    gamma_balance_task: float = 0.98
    gamma_certain_task: float = 0.5
    task_routing: bool = True
    task_encoder: str = "transformer"
    task_encoder_layers: int = 1
    task_encoder_heads: int = 16
    task_encoder_dropout: float = 0.1
    task_token_id: int | None = None
    task_dim: int = 32
    num_tasks: int | None = None
    beta_min: float = -2.0
    beta_max: float = 2.0
    token_only_below: float = 0.2
    task_only_above: float = 0.8
    shared_a: bool = True
    share_router_qkv: bool = True
    share_router_gate_up: bool = True
    lora_modules: list[str] = field(default_factory=lambda: ["o_proj", "down_proj"])

    @classmethod
    def simplified(cls, **kwargs: Any) -> HMoRAConfig:
        """The earlier simplified HMoRA of this library (:data:`SIMPLIFIED`), ``kwargs`` on top."""
        return cls(**{**SIMPLIFIED, **kwargs})

    def validate(self) -> None:
        super().validate()
        if self.router_init != "normal":
            raise ValueError(
                f"router_init cannot be set for hmora (got {self.router_init!r}): its routers are "
                "initialised by router_bias (True: nn.Linear's default, as the authors; False: "
                "N(0, 0.02))"
            )
        if self.z_loss_coef != 0:
            raise ValueError(
                f"z_loss_coef must be 0 for hmora (got {self.z_loss_coef!r}): its gates mix the "
                "token and task routers' probabilities, so there are no logits to penalise"
            )
        for key in ("task_routing", "router_bias", "shared_a", "share_router_qkv",
                    "share_router_gate_up"):  # fmt: skip
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be True or False, got {getattr(self, key)!r}")
        choices = {
            "top_k_gates": ("softmax", "renormalise"),
            "task_encoder": ("transformer", "prefix_mean"),
            "aux_reduction": ("sum", "mean"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(
                    f"{key} must be one of {list(allowed)}, got {getattr(self, key)!r}"
                )
        check_number("router_dropout", self.router_dropout, 0.0, 1.0)
        check_number("task_encoder_dropout", self.task_encoder_dropout, 0.0, 1.0)
        for key in ("task_dim", "task_encoder_layers", "task_encoder_heads"):
            check_positive_int(key, getattr(self, key))
        if self.task_token_id is not None and (
            isinstance(self.task_token_id, bool)
            or not isinstance(self.task_token_id, int)
            or self.task_token_id < 0
        ):
            raise ValueError(
                f"task_token_id must be None or a token id >= 0, got {self.task_token_id!r}"
            )
        for key in ("gamma_balance_token", "gamma_certain_token", "gamma_balance_task",
                    "gamma_certain_task", "token_only_below", "task_only_above"):  # fmt: skip
            check_number(key, getattr(self, key), 0.0, 1.0, closed_high=True)
        if self.token_only_below > self.task_only_above:
            raise ValueError(
                f"token_only_below ({self.token_only_below}) must not exceed task_only_above "
                f"({self.task_only_above})"
            )
        if not isinstance(self.lora_modules, list) or not all(
            isinstance(m, str) and m for m in self.lora_modules
        ):
            raise ValueError(
                f"lora_modules must be a list of module names, got {self.lora_modules!r}"
            )
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

    def __post_init__(self) -> None:
        if isinstance(self.lora_modules, tuple):
            self.lora_modules = list(self.lora_modules)
        super().__post_init__()

    def is_lora_module(self, name: str) -> bool:
        """Module ``name`` gets a plain LoRA (its last component is in ``lora_modules``)."""
        return name.rsplit(".", 1)[-1] in self.lora_modules


def initial_beta(config: HMoRAConfig, layer_index: int | None, num_layers: int) -> float:
    """β_l at init: linear in ``layer_index / (num_layers − 1)`` from beta_min to beta_max.

    ``layer_index`` None (no integer in the module name) or ``num_layers`` <= 1 -> the midpoint.
    """
    frac = 0.5 if layer_index is None or num_layers <= 1 else layer_index / (num_layers - 1)
    frac = min(max(frac, 0.0), 1.0)
    return float(config.beta_min) + (float(config.beta_max) - float(config.beta_min)) * frac
