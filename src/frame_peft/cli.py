"""The ``frame-peft`` command line.

Subcommands grow with the library; ``frame-peft --help`` lists what exists now.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_transform_demo

    run_transform_demo(n=args.n)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="frame-peft",
        description="Mixture-of-experts adapters in a learnable fractional-Fourier domain.",
    )
    parser.add_argument("--version", action="version", version=f"frame-peft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="the main job on the embedded default (for now: what the transforms do)",
        description="Show the fractional Fourier transforms at work: the spatial-to-Fourier "
        "continuum, unitarity, the surrogate against the exact transform, coherence, speed.",
    )
    demo.add_argument("--n", type=int, default=256, help="signal length (even; default 256)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
