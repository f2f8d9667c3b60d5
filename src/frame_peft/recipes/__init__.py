"""YAML recipes: the model, each method's adapter, data, training and evaluation of a run.

What a recipe builds is in two submodules (not imported here, so reading a recipe stays light):
:mod:`~frame_peft.recipes.data_prep` (``prepare_data``: its train and held-out items) and
:mod:`~frame_peft.recipes.model_prep` (``load_base``, ``build_model``, ``attach_adapter``,
``load_trained``: its model, with or without an adapter).
"""

from .schema import (
    BASELINE,
    PEFT_METHODS,
    Recipe,
    RecipeError,
    all_method_names,
    apply_overrides,
    builtin_recipes,
    load_recipe,
    recipe_from_dict,
)

__all__ = [
    "BASELINE",
    "PEFT_METHODS",
    "Recipe",
    "RecipeError",
    "all_method_names",
    "apply_overrides",
    "builtin_recipes",
    "load_recipe",
    "recipe_from_dict",
]
