"""frame-peft as a PEFT method: every adapter of the library through PEFT's own API.

After ``import frame_peft`` (with ``peft`` installed), PEFT knows one more method, ``FRAME_PEFT``,
whose config carries any frame-peft :class:`~frame_peft.AdapterConfig`::

    cfg = fp.to_peft_config(fp.FrameConfig(target_modules=["q_proj", "v_proj"]))
    model = peft.get_peft_model(base, cfg)       # PeftModelForCausalLM
    model.save_pretrained(d); peft.PeftModel.from_pretrained(base2, d)
    base3.load_adapter(d)                        # transformers' PEFT integration

The tuner (:class:`FramePeftTuner`) does not re-implement adapters: it calls
:func:`frame_peft.inject` on the wrapped model for the first adapter and
:func:`~frame_peft.core.named.add_named_adapter` for the others, so the grouped transforms of
FRAME, the routing losses in ``outputs.loss``, ``fp.aux_loss``, ``fp.orders``,
``fp.build_optimizer`` and the analysis tools all work on a PEFT model unchanged. Files are the
one format of :mod:`frame_peft.core.adapter_format` (``fp.load_adapter`` reads what PEFT writes
and the reverse).

What it relies on in PEFT (tested with PEFT 0.21.2; see docs/integrations.md):

- ``PeftType`` is a closed ``str`` enum: :func:`register` adds the member ``FRAME_PEFT`` to it
  (the only extension; the enum's own lookup tables, nothing else) and then calls PEFT's public
  ``register_peft_method``.
- ``BaseTuner``'s state-dict hooks ``_get_adapter_state_dict``, ``_remove_adapter_name_from_key``
  and ``_remap_adapter_state_dict_for_load`` (PEFT >= 0.21), which decide what a tuner saves
  and how a checkpoint maps onto the model.

Semantics: one adapter runs at a time (``set_adapter``); ``merge_and_unload`` is exact where
``fp.merge_and_unload`` is (LoRA-like methods; FRAME/FourierMoE/MoE raise ``NotMergeableError``);
``disable_adapter()`` runs the base model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from .core.adapter import AdaptedLinear
from .core.adapter_format import (
    ADAPTERS_ATTR,
    FORMAT_VERSION,
    KEY_PREFIX,
    canonical_key,
    check_tensor_values,
    namespaced_block,
    verify,
)
from .core.blocks import AdaptedBlock
from .core.config import AdapterConfig, config_from_dict
from .core.inject import find_injection, inject, set_adapters_enabled, unload
from .core.merge import merge_and_unload
from .core.named import (
    adapter_modules,
    add_named_adapter,
    delete_named_adapter,
    set_active_adapter,
)
from .core.serialization import load_tensors, module_shapes

PEFT_NAME = "frame_peft"
PREFIX = "frame_peft_"
ALLOW_EDITED_ENV = "FRAME_PEFT_ALLOW_EDITED_ADAPTERS"
_DROPOUT_ATTR = "frame_peft_dropout"

try:  # PEFT is optional: without it the native API is the whole story
    from peft import PeftConfig
    from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
    from peft.utils.peft_types import PeftType
except ImportError:  # pragma: no cover - exercised only without peft
    PeftConfig = BaseTuner = BaseTunerLayer = PeftType = None  # type: ignore[assignment,misc]

_SUPPORTED = BaseTuner is not None and hasattr(BaseTuner, "_remap_adapter_state_dict_for_load")


def _peft_type():
    """``PeftType.FRAME_PEFT``, added to PEFT's closed enum on first use."""
    name = PEFT_NAME.upper()
    if name not in PeftType._member_map_:
        member = str.__new__(PeftType, name)
        member._name_ = member._value_ = name
        member._sort_order_ = len(PeftType._member_names_)
        PeftType._member_map_[name] = member
        PeftType._value2member_map_[name] = member
        PeftType._member_names_.append(name)
        type.__setattr__(PeftType, name, member)
    return PeftType[name]


if _SUPPORTED:

    @dataclass
    class FramePeftConfig(PeftConfig):
        """PEFT's config for any frame-peft adapter: ``frame_peft`` holds our namespaced block
        (``{"format_version": 2, "config": AdapterConfig.to_dict(), hashes...}``).

        Build it with :func:`to_peft_config` (or ``FramePeftConfig(frame_peft={"config":
        cfg.to_dict()})``); PEFT's ``task_type`` (e.g. ``"CAUSAL_LM"``) and the other PEFT fields
        keep their PEFT meanings.
        """

        frame_peft: dict = field(default_factory=dict)

        def __post_init__(self) -> None:
            super().__post_init__()
            self.peft_type = _peft_type()
            if not isinstance(self.frame_peft, dict) or not isinstance(
                self.frame_peft.get("config"), dict
            ):
                raise ValueError(
                    "FramePeftConfig needs frame_peft={'config': <AdapterConfig.to_dict()>}; "
                    "build it with frame_peft.to_peft_config(FrameConfig(...))"
                )
            version = self.frame_peft.setdefault("format_version", FORMAT_VERSION)
            if version != FORMAT_VERSION:
                raise ValueError(
                    f"this frame-peft adapter has format_version {version!r}; this version "
                    f"reads {FORMAT_VERSION}. Upgrade frame-peft to load it"
                )
            self.adapter_config()  # validate now: a bad config fails here, not in the tuner

        def adapter_config(self) -> AdapterConfig:
            """The frame-peft config this PEFT config carries (validated)."""
            return config_from_dict(dict(self.frame_peft["config"]))

    class _TunerLayer(BaseTunerLayer):
        """A frame-peft wrapper as PEFT sees a tuner layer (on the PEFT path each wrapper is
        re-created as :class:`PeftAdaptedLinear` / :class:`PeftAdaptedBlock`, same state and
        submodules). Adapters live in ``frame_peft_adapters[name]`` (dropouts in
        ``frame_peft_dropout[name]``), so parameters are named PEFT's way
        (``<module>.frame_peft_adapters.<adapter name>.<tensor>``) and transformers'
        ``load_adapter`` finds them; ``adapter`` / ``dropout`` are the active ones, so the
        wrapper's forward, merge and every frame-peft tool work unchanged."""

        adapter_layer_names = (ADAPTERS_ATTR,)

        @property
        def adapter(self) -> nn.Module:
            return self._modules[ADAPTERS_ATTR][self._active_adapter]

        @property
        def dropout(self) -> nn.Module:
            return self._modules[_DROPOUT_ATTR][self._active_adapter]

        def park(self, name: str, adapter: nn.Module, dropout: nn.Module) -> None:
            self._modules[ADAPTERS_ATTR][name] = adapter
            self._modules[_DROPOUT_ATTR][name] = dropout

        def parked_adapter(self, name: str) -> nn.Module:
            return self._modules[ADAPTERS_ATTR][name]

        def activate(self, name: str, current: str) -> None:
            self._active_adapter = name

        def drop(self, name: str) -> None:
            del self._modules[ADAPTERS_ATTR][name]
            del self._modules[_DROPOUT_ATTR][name]

        @property
        def disable_adapters(self) -> bool:
            return not self.enabled

        def enable_adapters(self, enabled: bool) -> None:
            self.enabled = bool(enabled)

        def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False):
            raise NotImplementedError(
                "switch frame-peft adapters on the whole model (PeftModel.set_adapter or "
                "fp.set_active_adapter), not per layer"
            )

    class PeftAdaptedLinear(_TunerLayer, AdaptedLinear):
        """An :class:`~frame_peft.core.adapter.AdaptedLinear` on the PEFT path."""

    class PeftAdaptedBlock(_TunerLayer, AdaptedBlock):
        """An :class:`~frame_peft.core.blocks.AdaptedBlock` (MixLoRA) on the PEFT path."""

    def _as_tuner_layers(model: nn.Module) -> None:
        """Turn the injection's wrappers into PEFT tuner layers (once, after ``inject``)."""
        inj = find_injection(model)
        for name, layer in list(inj.layers.items()):
            if isinstance(layer, _TunerLayer):
                continue
            cls = PeftAdaptedLinear if isinstance(layer, AdaptedLinear) else PeftAdaptedBlock
            new = cls.__new__(cls)  # same state, PEFT's view (the layouts differ: no __class__ =)
            new.__dict__.update(layer.__dict__)
            new._modules = dict(layer._modules)
            adapter = new._modules.pop("adapter")
            dropout = new._modules.pop("dropout", None) or nn.Identity()
            new._active_adapter = inj.name
            new.add_module(ADAPTERS_ATTR, nn.ModuleDict({inj.name: adapter}))
            new.add_module(_DROPOUT_ATTR, nn.ModuleDict({inj.name: dropout}))
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, new)
            inj.layers[name] = new

    class FramePeftTuner(BaseTuner):
        """PEFT's tuner for ``FRAME_PEFT``: frame-peft's injection, under PEFT's names."""

        prefix = PREFIX
        tuner_layer_cls = nn.Module  # unused: this tuner overrides everything that reads it
        target_module_mapping: ClassVar[dict[str, list[str]]] = {}

        def inject_adapter(
            self,
            model: nn.Module,
            adapter_name: str,
            autocast_adapter_dtype: bool = True,
            low_cpu_mem_usage: bool = False,
            state_dict: dict | None = None,
        ) -> None:
            peft_config = self.peft_config[adapter_name]
            config = peft_config.adapter_config()
            # A config read from a saved folder carries hashes: check the maths-defining part
            # here, since transformers' load_adapter then reads the weights by itself.
            verify(
                peft_config.frame_peft, dict(peft_config.frame_peft["config"]), None,
                f"adapter {adapter_name!r}", _allow_edited(),
            )  # fmt: skip
            inj = find_injection(model)
            if inj is None:
                inject(model, config)
                find_injection(model).name = adapter_name
            else:
                add_named_adapter(model, adapter_name, config)
            _as_tuner_layers(model)
            self.targeted_module_names = list(find_injection(model).layers)
            if peft_config.inference_mode:  # PEFT's loaders: frozen unless is_trainable=True
                for adapter in adapter_modules(model, adapter_name).values():
                    adapter.requires_grad_(False)

        def _prepare_adapter_config(self, peft_config, model_config):
            return peft_config

        def _create_and_replace(self, *args: Any, **kwargs: Any) -> None:  # inject_adapter does it
            raise NotImplementedError("FramePeftTuner injects through frame_peft.inject")

        @staticmethod
        def _check_target_module_exists(peft_config, key: str) -> bool:
            return False

        def _check_new_adapter_config(self, config) -> None:
            if not isinstance(config, FramePeftConfig):
                raise ValueError(
                    "a frame-peft model takes FramePeftConfig adapters, got "
                    f"{type(config).__name__}"
                )

        def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
            pass  # inject froze the base and made the active adapter trainable

        def disable_adapter_layers(self) -> None:
            set_adapters_enabled(self.model, False)

        def enable_adapter_layers(self) -> None:
            set_adapters_enabled(self.model, True)

        def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
            if isinstance(adapter_name, (list, tuple)):
                if len(adapter_name) != 1:
                    raise ValueError(
                        "frame-peft runs one adapter at a time; pass one adapter name "
                        f"(got {list(adapter_name)})"
                    )
                adapter_name = adapter_name[0]
            set_active_adapter(self.model, adapter_name, trainable=not inference_mode)
            self.active_adapter = adapter_name

        def delete_adapter(self, adapter_name: str) -> None:
            delete_named_adapter(self.model, adapter_name)
            del self.peft_config[adapter_name]

        def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                             adapter_names: list[str] | None = None) -> nn.Module:  # fmt: skip
            if adapter_names not in (
                None,
                [self.active_adapter],
                [find_injection(self.model).name],
            ):
                raise ValueError("frame-peft merges the active adapter only; set_adapter first")
            return merge_and_unload(self.model)

        def unload(self) -> nn.Module:
            return unload(self.model)

        def merge_adapter(self, *args: Any, **kwargs: Any) -> None:
            raise NotImplementedError(
                "frame-peft does not merge in place and keep the adapter; use merge_and_unload() "
                "(exact for LoRA-like methods)"
            )

        # -- what gets saved and how a checkpoint maps onto the model -----------------------

        @classmethod
        def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict,
                                    unwanted_adapter_names):  # fmt: skip
            """The named adapter's tensors under their model names (PEFT then drops the
            adapter name); records the hashes of the config and the tensors in the config,
            which PEFT writes after the weights."""
            from ._version import __version__

            adapters = adapter_modules(model, adapter_name)
            tensors = {
                f"{name}.{key}": value.detach().cpu().contiguous()
                for name, adapter in adapters.items()
                for key, value in adapter.state_dict().items()
            }
            config.frame_peft = namespaced_block(
                dict(config.frame_peft["config"]), tensors, module_shapes(adapters), __version__
            )
            out = {}
            for name, adapter in adapters.items():
                for key, value in adapter.state_dict().items():
                    model_key = f"{KEY_PREFIX}{name}.{ADAPTERS_ATTR}.{adapter_name}.{key}"
                    out[model_key] = state_dict.get(model_key, value)
            return out

        @classmethod
        def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
            """``...frame_peft_adapters.<name>.<tensor>`` -> ``...frame_peft_adapters.<tensor>``
            (the tensor name may hold dots: ``router.weight``)."""
            return key.replace(f".{ADAPTERS_ATTR}.{adapter_name}.", f".{ADAPTERS_ATTR}.", 1)

        @classmethod
        def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
            """Check the hashes, NaNs, shapes and dtypes, load with frame-peft's checks, and
            return the tensors under the model's names (PEFT loads them again, unchanged)."""
            tensors = {canonical_key(k): v for k, v in state_dict.items()}
            where = f"adapter {adapter_name!r} ({config.base_model_name_or_path or 'PEFT'})"
            verify(
                config.frame_peft, dict(config.frame_peft["config"]), tensors, where,
                _allow_edited(),
            )  # fmt: skip
            check_tensor_values(tensors, where)
            load_tensors(adapter_modules(model, adapter_name), tensors)
            return super()._remap_adapter_state_dict_for_load(
                model, config, adapter_name, state_dict
            )


def _allow_edited() -> bool:
    return os.environ.get(ALLOW_EDITED_ENV, "").strip().lower() in ("1", "true", "yes")


def available() -> bool:
    """Whether PEFT is installed and recent enough for frame-peft's PEFT method (>= 0.21)."""
    return _SUPPORTED


def to_peft_config(config: AdapterConfig, **peft_fields: Any):
    """The PEFT config (``FramePeftConfig``) for a frame-peft adapter config.

    ``peft_fields`` are PEFT's own fields, e.g. ``task_type="CAUSAL_LM"`` (the default, which
    gives a ``PeftModelForCausalLM`` with ``generate``), ``inference_mode``.
    """
    if not _SUPPORTED:
        raise ImportError(
            "frame-peft's PEFT method needs peft >= 0.21 (pip install -U peft); the native API "
            "(fp.inject, fp.save_adapter) works without it"
        )
    if not isinstance(config, AdapterConfig):
        raise TypeError(f"config must be an AdapterConfig, got {type(config).__name__}")
    config.validate()
    peft_fields.setdefault("task_type", "CAUSAL_LM")
    return FramePeftConfig(frame_peft={"config": config.to_dict()}, **peft_fields)


def register() -> bool:
    """Register ``FRAME_PEFT`` with PEFT (idempotent); False when PEFT is missing or too old."""
    if not _SUPPORTED:
        return False
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils.peft_types import register_peft_method

    if PEFT_TYPE_TO_TUNER_MAPPING.get(_peft_type()) is not FramePeftTuner:
        register_peft_method(
            name=PEFT_NAME, config_cls=FramePeftConfig, model_cls=FramePeftTuner, prefix=PREFIX
        )
    return True
