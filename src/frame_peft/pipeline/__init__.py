"""Recipe-driven runs: prepare data, build a model per method, train, evaluate, compare."""

from .data_prep import PreparedData, prepare_data
from .model_prep import attach_adapter, build_model, load_base, load_trained
from .run import compare_recipe, evaluate_target, load_run, run_quickstart, train_recipe

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
    "run_quickstart",
    "train_recipe",
]
