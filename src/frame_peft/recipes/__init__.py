"""YAML recipes: the model, each method's adapter, data, training and evaluation of a run."""

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
