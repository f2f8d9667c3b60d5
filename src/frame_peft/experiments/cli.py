"""``frame-peft experiment NAME [--output DIR] [--quick] [--seed N] [--seeds N] [--methods a,b]
[--set key=value ...]`` (and ``--list``).

The main CLI adds this with :func:`add_experiment_parser` and dispatches to
:func:`run_experiment`; ``python -m frame_peft.experiments.cli NAME ...`` runs it standalone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import EXPERIMENTS
from . import run_experiment as _run

DEFAULT_OUTPUT = Path("runs/experiments")


def _describe() -> str:
    width = max(len(n) for n in EXPERIMENTS)
    return "\n".join(f"  {n:<{width}}  {e.description}" for n, e in EXPERIMENTS.items())


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "name",
        nargs="?",
        choices=sorted(EXPERIMENTS),
        metavar="NAME",
        help="experiment to run (omit, or pass --list, to list them)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"output folder (default: {DEFAULT_OUTPUT}/NAME); receives results.json, "
        "results.md and PNG plots",
    )
    parser.add_argument(
        "--quick", action="store_true", help="the reduced size the test suite runs (seconds)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (0)")
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="run the synthetic experiments for this many consecutive seeds from --seed; tables "
        "give mean ± std, results.json every seed (1)",
    )
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated methods to compare (synthetic experiments), e.g. "
        "frame-scan,moe-lora,moe-lora-2r",
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field of the synthetic experiments (repeatable), e.g. "
        "tasks.dim=256, tasks.task_orders=[0,0.37], tasks.teacher_transform=exact, "
        "train.steps=500",
    )
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def add_experiment_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``experiment`` sub-command to ``subparsers`` and return its parser."""
    parser = subparsers.add_parser(
        "experiment",
        help="run a controlled synthetic experiment (domain-recovery, interference, coherence)",
        description="Run a controlled experiment that tests FRAME's claims on synthetic tasks.\n\n"
        "experiments:\n" + _describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=run_experiment)
    return _configure(parser)


def run_experiment(args: argparse.Namespace) -> int:
    """Run the parsed ``experiment`` command; returns the exit status."""
    if args.list or args.name is None:
        print("experiments:\n" + _describe())
        return 0
    from ._multi import parse_sets

    output = args.output if args.output is not None else DEFAULT_OUTPUT / args.name
    size = "quick" if args.quick else "full"
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    start = time.perf_counter()
    try:
        _run(
            args.name, output, size=size, seed=args.seed, progress=not args.quiet,
            seeds=args.seeds, methods=methods, sets=parse_sets(args.sets),
        )  # fmt: skip
    except ValueError as err:
        print(f"frame-peft experiment: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.name} ({size}, seed {args.seed}): wrote {output} in "
          f"{time.perf_counter() - start:.1f} s")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="frame-peft experiment")
    sub = parser.add_subparsers(dest="command", required=True)
    add_experiment_parser(sub)
    return run_experiment(parser.parse_args(["experiment", *(argv or sys.argv[1:])]))


if __name__ == "__main__":
    raise SystemExit(main())
