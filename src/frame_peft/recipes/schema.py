"""Recipes: one YAML file fixes the model, the adapter of every method, the data, training and eval.

A recipe is validated as a whole before anything runs, so a typo fails in a second with the key
and the allowed values rather than an hour into training. Layout (every section optional except
``name``; see ``docs/recipes.md`` and the files in ``recipes/builtin``)::

    name: quickstart
    model: {name: smollm2, dtype: float32, gradient_checkpointing: false, load_in_4bit: false}
    method: frame                  # what `frame-peft train` trains
    target_modules: [q_proj, v_proj]
    adapters:                      # per-method config fields (peft:* take PEFT config fields)
      frame: {num_experts: 4, top_k: 2, rank: 4}
      lora: {rank: 8}
    data:
      source: offline              # offline (shipped sets, seeded split) | hub (the papers' sets)
      train: {arc_easy: 300, boolq: 300, reasoning_gym_math: 300}   # task -> examples
      eval: {arc_easy: 100, gsm8k: 40}                              # task -> held-out items
      split_seed: 0
      mixture: proportional
      max_length: 256
      paths: {}                    # task -> local JSON/JSONL/Arrow file overriding the source
    train: {...}                   # fields of frame_peft.training.TrainConfig
    eval: {batch_size: 8, max_new_tokens: 256, code_timeout: 10.0, chat: false}
    compare: [base, lora, frame]   # what `frame-peft compare` runs
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import is_number

__all__ = [
    "BASELINE",
    "PEFT_METHODS",
    "RUNS_DIR",
    "Recipe",
    "RecipeError",
    "all_method_names",
    "apply_overrides",
    "builtin_recipes",
    "check_recipe_name",
    "load_recipe",
]

BASELINE = "base"  # the unadapted model, for eval/compare only
PEFT_METHODS = ("peft:fourierft", "peft:dora", "peft:adalora", "peft:lora")
DTYPES = ("auto", "float32", "bfloat16", "float16")
SOURCES = ("offline", "hub")
MIXTURES = ("proportional", "uniform")
BUILTIN_DIR = Path(__file__).parent / "builtin"
RUNS_DIR = Path("runs")  # default parent of every run directory: runs/<recipe name>/<method>
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


class RecipeError(ValueError):
    """A recipe key or value is wrong; the message names it and what is allowed."""


def all_method_names() -> list[str]:
    """Every name ``method:`` accepts: frame-peft's methods and the PEFT bridge's."""
    from ..core.config import method_names

    return [*method_names(), *PEFT_METHODS]


def _check_keys(where: str, given: Mapping[str, Any], allowed: Sequence[str]) -> None:
    if not isinstance(given, Mapping):
        raise RecipeError(f"{where} must be a mapping of keys to values, got {given!r}")
    bad = sorted(set(given) - set(allowed))
    if bad:
        raise RecipeError(f"unknown key(s) {bad} in {where}; allowed: {sorted(allowed)}")


def _check_choice(where: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise RecipeError(f"{where} = {value!r} is not allowed; choose one of {list(allowed)}")


def check_recipe_name(name: Any) -> str:
    """Return ``name`` if it is a safe single path component, else raise :class:`RecipeError`.

    The name becomes ``runs/<name>/``; a ``/``, ``..`` or absolute name would write outside the
    runs directory, so only letters, digits, ``-``, ``_`` and ``.`` are allowed (not ``.``/``..``).
    """
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or name in (".", ".."):
        raise RecipeError(
            f"name = {name!r} is not allowed: a recipe name becomes the folder runs/<name>/, so "
            "it must be one path component of letters, digits, '-', '_' or '.' (not '.' or "
            "'..'); to write elsewhere pass --output-dir"
        )
    return name


def _check_counts(where: str, counts: Any) -> dict[str, int]:
    if not isinstance(counts, Mapping):
        raise RecipeError(f"{where} must map task names to example counts, got {counts!r}")
    for task, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise RecipeError(f"{where}.{task} must be a non-negative integer, got {n!r}")
    return dict(counts)


@dataclass
class ModelSpec:
    """The base model: a hub id, a local folder, or ``smollm2`` (the offline asset)."""

    name: str = "smollm2"
    dtype: str = "auto"
    gradient_checkpointing: bool = False
    load_in_4bit: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise RecipeError(f"model.name must be a hub id or a path, got {self.name!r}")
        _check_choice("model.dtype", self.dtype, DTYPES)


@dataclass
class DataSpec:
    """Which tasks to train and evaluate on, how many items each, and how to split them."""

    source: str = "offline"
    train: dict[str, int] = field(default_factory=dict)
    eval: dict[str, int] = field(default_factory=dict)
    split_seed: int = 0
    mixture: str = "proportional"
    max_length: int = 256
    paths: dict[str, str] = field(default_factory=dict)
    chat_template: bool = False

    def __post_init__(self) -> None:
        _check_choice("data.source", self.source, SOURCES)
        _check_choice("data.mixture", self.mixture, MIXTURES)
        self.train = _check_counts("data.train", self.train)
        self.eval = _check_counts("data.eval", self.eval)
        if not isinstance(self.max_length, int) or self.max_length < 8:
            raise RecipeError(f"data.max_length must be an integer >= 8, got {self.max_length!r}")
        if not isinstance(self.paths, Mapping):
            raise RecipeError(f"data.paths must map task names to files, got {self.paths!r}")


@dataclass
class EvalSpec:
    """How evaluation runs (see ``frame_peft.evaluation.evaluate``)."""

    batch_size: int = 8
    max_new_tokens: int = 256
    code_timeout: float = 10.0
    chat: bool = False
    # Run generated code without namespaces (guard mode): not isolated from this machine.
    allow_unsafe_code_execution: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise RecipeError(
                f"eval.batch_size must be a positive integer, got {self.batch_size!r}"
            )
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise RecipeError(
                f"eval.max_new_tokens must be a positive integer, got {self.max_new_tokens!r}"
            )
        if not is_number(self.code_timeout) or self.code_timeout <= 0:
            raise RecipeError(
                f"eval.code_timeout must be a finite number of seconds > 0, got "
                f"{self.code_timeout!r}"
            )
        if not isinstance(self.allow_unsafe_code_execution, bool):
            raise RecipeError(
                "eval.allow_unsafe_code_execution must be true or false, got "
                f"{self.allow_unsafe_code_execution!r}"
            )


@dataclass
class Recipe:
    """A whole run: see the module docstring for the YAML layout."""

    name: str
    description: str = ""
    model: ModelSpec = field(default_factory=ModelSpec)
    method: str = "frame"
    target_modules: list[str] | str = "all-linear"
    adapters: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: DataSpec = field(default_factory=DataSpec)
    train: dict[str, Any] = field(default_factory=dict)
    eval: EvalSpec = field(default_factory=EvalSpec)
    compare: list[str] = field(default_factory=lambda: [BASELINE, "lora", "frame"])
    source_path: str | None = None

    def __post_init__(self) -> None:
        check_recipe_name(self.name)
        if not isinstance(self.description, str):
            raise RecipeError(f"description must be a string, got {self.description!r}")
        for key, cls in _SECTIONS.items():
            if not isinstance(getattr(self, key), cls):
                raise RecipeError(
                    f"{key} must be a mapping of keys to values, got {getattr(self, key)!r}"
                )
        if not isinstance(self.train, Mapping):
            raise RecipeError(
                f"train must be a mapping of TrainConfig fields to values, got {self.train!r}"
            )
        if "output_dir" in self.train:
            raise RecipeError(
                "train.output_dir is not a recipe key: the run directory is "
                "runs/<name>/<method>, or the --output-dir you pass to train/compare"
            )
        if not isinstance(self.compare, list) or not all(isinstance(m, str) for m in self.compare):
            raise RecipeError(f"compare must be a list of method names, got {self.compare!r}")
        methods = all_method_names()
        _check_choice("method", self.method, methods)
        _check_keys("adapters", self.adapters, methods)
        for name in self.compare:
            _check_choice("compare[]", name, [BASELINE, *methods])
        for method, fields in self.adapters.items():
            allowed = _adapter_fields(method)
            if allowed is not None:
                _check_keys(f"adapters.{method}", fields or {}, allowed)
        # Build every adapter config now so a bad value fails before the model loads.
        for method in {self.method, *self.compare} - {BASELINE}:
            self.adapter_kwargs(method, validate=True)
        self.train_config(output_dir="/tmp/frame-peft-validate")
        self._check_tasks()

    def _check_tasks(self) -> None:
        from ..data import get_task

        for section, counts in (("data.train", self.data.train), ("data.eval", self.data.eval)):
            for task in counts:
                if section == "data.train" and task in TRAIN_ONLY_SOURCES:
                    continue
                try:
                    get_task(task)
                except ValueError as err:
                    raise RecipeError(f"{section}.{task}: {err}") from None

    def adapter_kwargs(self, method: str, validate: bool = False) -> dict[str, Any]:
        """Config fields for ``method``: ``target_modules`` plus ``adapters[method]``."""
        kwargs = {"target_modules": self.target_modules, **(self.adapters.get(method) or {})}
        if validate and method not in PEFT_METHODS:
            from ..core.config import config_from_dict

            try:
                config_from_dict({"method": method, **kwargs})
            except (TypeError, ValueError) as err:
                raise RecipeError(f"adapters.{method}: {err}") from None
        return kwargs

    def run_root(self) -> Path:
        """``runs/<name>``: the default parent of this recipe's run directories (name re-checked,
        since a dataclass field can be reassigned after validation)."""
        return RUNS_DIR / check_recipe_name(self.name)

    def train_config(self, output_dir: str | None = None):
        """The :class:`frame_peft.training.TrainConfig` of ``train:`` (validated)."""
        from ..training import TrainConfig

        values = {**self.train, "output_dir": output_dir or str(self.run_root() / self.method)}
        try:
            return TrainConfig.from_dict(values)
        except (TypeError, ValueError) as err:
            raise RecipeError(f"train: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source_path")
        return out


def _train_only_sources() -> tuple[str, ...]:
    from ..data import TRAINING_SOURCES

    return ("reasoning_gym_math", *TRAINING_SOURCES)


# Training sources that are not evaluation tasks: generated math, and the papers' training sets
# (commonsense170k, metamathqa, math10k, codealpaca, mmlu_auxiliary_train).
TRAIN_ONLY_SOURCES = _train_only_sources()


def _adapter_fields(method: str) -> list[str] | None:
    """Config field names of ``method``; ``None`` when PEFT is not installed to ask."""
    if method in PEFT_METHODS:
        return _peft_fields(method)
    from ..core.config import config_class

    return [f.name for f in dataclasses.fields(config_class(method)) if f.init]


def _peft_fields(method: str) -> list[str] | None:
    from ..peft_bridge import peft_config_class

    try:
        cls = peft_config_class(method.split(":", 1)[1])
    except ImportError:  # peft missing: its own error comes when the baseline is built
        return None
    return [f.name for f in dataclasses.fields(cls) if f.init]


_SECTIONS = {"model": ModelSpec, "data": DataSpec, "eval": EvalSpec}


def recipe_from_dict(data: Mapping[str, Any], source_path: str | None = None) -> Recipe:
    """Validate and build a :class:`Recipe` from parsed YAML."""
    _check_keys("the recipe", data, [f.name for f in dataclasses.fields(Recipe) if f.init][:-1])
    if "name" not in data:
        raise RecipeError("a recipe needs a 'name'")
    kwargs = dict(copy.deepcopy(data))
    for key, cls in _SECTIONS.items():
        if key in kwargs:
            section = kwargs[key]
            if section is None:
                raise RecipeError(
                    f"{key} is null (an empty '{key}:' line, or --set {key}=null?); give its "
                    f"fields as a mapping, or remove the key to use the defaults"
                )
            if key == "model" and isinstance(section, str):
                section = {"name": section}
            _check_keys(key, section, [f.name for f in dataclasses.fields(cls)])
            try:
                kwargs[key] = cls(**section)
            except TypeError as err:
                raise RecipeError(f"{key}: {err}") from None
    return Recipe(**kwargs, source_path=source_path)


def builtin_recipes() -> dict[str, Path]:
    """Name -> path of the recipes shipped with the package."""
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.yaml"))}


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(data: dict[str, Any], assignments: Sequence[str]) -> dict[str, Any]:
    """Apply ``--set key.sub=value`` assignments (values parsed as YAML) to raw recipe data."""
    data = copy.deepcopy(data)
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set expects key=value (e.g. train.max_steps=20), got {item!r}")
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise RecipeError(f"--set {key}: {where} is {child!r}, not a section")
            node = child
        node[parts[-1]] = _parse_value(raw)
    return data


def load_recipe(name_or_path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Load a built-in recipe by name (``quickstart``) or a YAML file, apply ``--set`` overrides."""
    import yaml

    path = Path(name_or_path)
    builtin = builtin_recipes()
    if not path.is_file():
        if str(name_or_path) not in builtin:
            raise RecipeError(
                f"no recipe file {str(name_or_path)!r} and no built-in recipe of that name; "
                f"expected a YAML file or one of the built-in recipes: {sorted(builtin)}"
            )
        path = builtin[str(name_or_path)]
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    return recipe_from_dict(apply_overrides(data, overrides), source_path=str(path))
