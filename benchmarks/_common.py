"""Helpers shared by the benchmarks: machine info, robust statistics, Linux memory, argparse."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from frame_peft._files import write_json, write_text


def write_results(out: Path, page: str, res: dict) -> Path:
    """Write a results page to ``out`` and its data beside it (``.json``); return the JSON path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, page)
    return write_json(out.with_suffix(".json"), res, indent=1, newline=False)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, str]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cpu": cpu_model(),
        "logical cores": f"{os.cpu_count()} ({usable} usable by this process)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
        "platform": platform.platform(),
    }


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3); q1 = q3 = median for fewer than two values."""
    if len(values) < 2:
        v = values[0]
        return v, v, v
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_mb() -> float:
    """Current resident set size of this process (VmRSS), MiB."""
    return _status_kb("VmRSS") / 1024.0


def peak_rss_mb() -> float:
    """High-water mark of the resident set size (VmHWM), MiB."""
    return _status_kb("VmHWM") / 1024.0


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def vm_size_mb() -> float:
    """Virtual memory size of this process (VmSize), MiB: what RLIMIT_AS limits."""
    return _status_kb("VmSize") / 1024.0


@contextlib.contextmanager
def address_space_cap(extra_mb: float) -> Iterator[None]:
    """Let this process map at most ``extra_mb`` MiB more than now (``RLIMIT_AS``) inside the block.

    An allocation past the cap raises (torch: ``RuntimeError``, Python: ``MemoryError``) instead
    of pushing a shared machine into the OOM killer, which may pick another user's process. The
    previous soft limit is restored on exit (an unprivileged process may raise it back).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = int((vm_size_mb() + extra_mb) * 2**20)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def int_list(text: str) -> list[int]:
    """``"1024,4096"`` -> ``[1024, 4096]`` (argparse type; empty string: no values)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        msg = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from err
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"values must be >= 1, got {text!r}")
    return values


def shape_list(text: str) -> list[tuple[int, int]]:
    """``"4096x11008,512x1376"`` -> ``[(4096, 11008), (512, 1376)]`` (d_in x d_out)."""
    shapes = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        parts = item.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(f"shapes are D_INxD_OUT, got {item!r}")
        shapes.append((int(parts[0]), int(parts[1])))
    return shapes


def cli_args(argv: Sequence[str] | None) -> list[str]:
    """The arguments a script was given: ``argv``, or the command line's when None."""
    return list(sys.argv[1:] if argv is None else argv)


def wants_quick(argv: Sequence[str] | None) -> bool:
    """True when ``--quick`` is among the arguments (it sets presets; explicit flags still win)."""
    return "--quick" in cli_args(argv)


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces this run, as the results pages print it."""
    omp = os.environ.get("OMP_NUM_THREADS", "")
    return f"OMP_NUM_THREADS={omp} python benchmarks/{script} {shlex.join(cli_args(argv))}".rstrip()


def run_memory_worker(
    script: str | Path, job: dict, threads: int, log: Callable[[str], None]
) -> dict | None:
    """Run ``script --_memory-worker JOB`` in a fresh process; its last stdout line as JSON.

    ``MALLOC_MMAP_THRESHOLD_=65536`` makes freed blocks of 64 KiB or more go back to the OS, so
    RSS follows live memory. Returns None (and logs stderr's last line) when the worker fails.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, str(Path(script).resolve()), "--_memory-worker", json.dumps(job)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no stderr"]
        log(f"  memory worker failed: {tail[0]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])
