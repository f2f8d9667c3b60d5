"""Recipe-driven runs: train, evaluate and compare methods into run directories.

The data and model a recipe builds (:mod:`frame_peft.recipes.data_prep`,
:mod:`frame_peft.recipes.model_prep`) and the run-directory format (:mod:`frame_peft.run_dir`)
live one layer down and are re-exported here; the quick start is :mod:`frame_peft.quickstart`.
"""

from ..recipes.data_prep import PreparedData, prepare_data
from ..recipes.model_prep import attach_adapter, build_model, load_base, load_trained
from ..run_dir import load_run
from .run import compare_recipe, evaluate_target, train_recipe

__all__ = [
    "PreparedData",
    "attach_adapter",
    "build_model",
    "compare_recipe",
    "evaluate_target",
    "load_base",
    "load_run",
    "load_trained",
    "prepare_data",
    "train_recipe",
]
