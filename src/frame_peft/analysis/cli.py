"""``frame-peft analyze RUN_DIR [RUN_DIR ...]``: the argparse side of :func:`.run.analyze_run`.

``frame_peft.cli`` calls :func:`add_analyze_parser` with its subparsers; the parsed arguments go to
:func:`run_analyze`, which returns the exit code (0, or 2 with one line on stderr for a refused
or missing run directory).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_analyze_parser", "run_analyze"]

_DESCRIPTION = """\
Analyse trained run directories (written by `frame-peft train`): what the experts learned.

For each run, the trained adapter is reloaded on its base model, the run's held-out items are
rebuilt (and checked against data.json), and up to --max-items items per task (prompt + reference
answer) go through the model once to record how tokens are routed, per layer and per task. Then:

  orders          FRAME's learned fractional orders per layer and expert, their change from the
                  initial orders, and their trajectory over training (orders.jsonl)
  routing         expert load, importance, routing entropy, top-1 probability, per-task load,
                  and collapse warnings (dead or dominant experts)
  decorrelation   per module, expert-vs-expert cosine of the updates ΔW_e, overlap of their
                  column and row spaces, and (FRAME) mutual coherence of their transforms

Written to the output directory: report.html (self-contained: figures inlined, opens offline),
analysis.json (all numbers, NaN as null) and the PNG figures. LoRA/FlyLoRA runs have no experts
(parameters only); peft:* and base runs are refused. See docs/analysis.md.
"""

_EPILOG = """\
examples:
  frame-peft analyze runs/quickstart/frame
      -> runs/quickstart/frame/analysis/report.html
  frame-peft analyze runs/quickstart/frame runs/quickstart/moe-lora \\
      --output runs/quickstart/analysis
      -> one report comparing both runs (decorrelation per layer side by side)
  frame-peft analyze runs/quickstart/frame --spectral
      -> the spectral analysis: band energies, nulls, compactness, routing by band
"""


def add_analyze_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``analyze`` subcommand to ``subparsers`` (``parser.add_subparsers()``); returns it.

    The parser's ``func`` default is :func:`run_analyze`.
    """
    p = subparsers.add_parser(
        "analyze",
        help="orders, routing and expert decorrelation of trained runs, as an HTML report",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="run directory written by `frame-peft train` (several: analysed together)",
    )
    p.add_argument(
        "--output",
        metavar="DIR",
        default=None,
        help="output directory (default: RUN_DIR/analysis; required for several runs)",
    )
    p.add_argument(
        "--max-items",
        type=int,
        default=32,
        metavar="N",
        help="held-out items per task run through the model for routing (default 32)",
    )
    p.add_argument(
        "--no-coherence",
        action="store_true",
        help="skip the mutual coherence of FRAME transforms (the slowest number)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--spectral",
        action="store_true",
        help="the spectral analysis instead: frequency energy of the updates by band (FourierMoE's "
        "rings) against random nulls, compactness vs fractional order, routing by band "
        "(docs/analysis.md, 'Spectral analysis')",
    )
    p.add_argument(
        "--bands",
        type=int,
        default=8,
        metavar="B",
        help="radial bands of the spectral analysis (default 8; with --spectral)",
    )
    p.set_defaults(func=run_analyze)
    return p


def run_analyze(args: argparse.Namespace) -> int:
    """Run :func:`frame_peft.analysis.run.analyze_run` on parsed arguments; exit code."""
    from .run import analyze_run

    try:
        if getattr(args, "spectral", False):
            from .spectral_run import analyze_spectral

            report = analyze_spectral(
                args.run_dirs,
                args.output,
                num_bands=args.bands,
                max_items_per_task=args.max_items,
                progress=not getattr(args, "no_progress", False),
            )
            print(f"report: {report}")
            return 0
        report = analyze_run(
            args.run_dirs,
            args.output,
            max_items_per_task=args.max_items,
            coherence=not args.no_coherence,
            progress=not getattr(args, "no_progress", False),
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"frame-peft analyze: {err}", file=sys.stderr)
        return 2
    print(f"report: {report}")
    return 0
