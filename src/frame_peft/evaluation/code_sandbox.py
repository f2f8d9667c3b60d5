"""Run generated code against its tests in a separate, resource-limited process (pass@1).

What :func:`run_code_tests` enforces, exactly:

- **Process**: ``sys.executable -I`` (isolated mode: no ``PYTHON*`` variables, no user
  site-packages, the script's folder not on ``sys.path``; the interpreter's own site-packages
  stay importable, as in the reference HumanEval harness), in a new session/process group, stdin
  closed, stdout/stderr to files, a minimal environment (``PATH``, ``LANG``, ``HOME`` and
  ``TMPDIR`` = the sandbox, one BLAS/OpenMP thread).
- **Files**: a fresh temporary folder is the working directory and is deleted afterwards
  (relative writes land there; absolute paths are not blocked).
- **Limits**, set by the child on itself before the program runs (not through ``preexec_fn``,
  which Python documents as unsafe in threaded programs, and sandboxes run from a thread pool):
  ``RLIMIT_AS`` = ``memory_mb``, ``RLIMIT_CPU`` = ``ceil(timeout) + 1`` s (soft; ``SIGXCPU``
  is turned into a ``timeout`` status, the hard limit one second later kills), ``RLIMIT_FSIZE``
  = ``file_mb``, ``RLIMIT_CORE`` = 0; soft = hard otherwise, never above the inherited hard
  limit (inside the user namespace the program cannot raise them again, even as "root").
  ``RLIMIT_NPROC`` is *not* set: it counts every process of the user, not just the sandbox's.
- **Time**: a wall-clock ``timeout``; on expiry the whole process group gets ``SIGKILL``. The
  group is also killed after a normal exit (background children die with the program).
- **Network**: with ``network="auto"`` the program runs under ``unshare -rnpf --kill-child``
  when that works for this user (new user + network + PID namespace: no interface but a down
  loopback, and every process of the program dies with it, even one that left the process
  group); otherwise a prelude replaces ``socket.socket``/``socketpair``/``fromfd`` with
  stand-ins that raise ``OSError`` (best effort: ``ctypes`` or ``os.system`` get around it).
  ``network="namespace"`` requires the namespace, ``"guard"`` always uses the prelude.

This contains mistakes and runaway loops, not a determined attacker: there is no filesystem or
syscall isolation. Run untrusted code on a disposable machine or in a container.

Statuses, reported by the launcher through a file outside the working folder (exit codes are not
trusted): ``passed`` (the program ran to its end), ``failed`` (an ``AssertionError``: a test
failed), ``timeout`` (wall clock or CPU limit), ``memory`` (``MemoryError``, or a direct child
killed by ``SIGKILL`` before the deadline: the OOM killer), ``error`` (anything else: syntax
error, other exception, ``exit()`` called, ``os._exit``, a crash).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from ..data.types import Example

__all__ = [
    "STATUSES",
    "SandboxResult",
    "build_program",
    "humaneval_program",
    "is_humaneval_style",
    "mbpp_program",
    "namespace_available",
    "run_code_tests",
    "run_many",
]

STATUSES = ("passed", "failed", "timeout", "error", "memory")
_STDERR_TAIL = 2000
_NAMESPACE_CMD = ("unshare", "-rnpf", "--kill-child")

# argv: memory bytes, cpu seconds, file bytes, guard (0/1), status file. Runs program.py as
# __main__ and writes one word to the status file (exit codes are not trusted: `unshare` turns a
# child's SIGKILL into exit code 0).
_LAUNCHER = r"""
import resource, signal, sys
def _limit(name, soft, hard):
    kind = getattr(resource, name, None)
    if kind is None:
        return
    inherited = resource.getrlimit(kind)[1]
    if inherited != resource.RLIM_INFINITY:
        soft, hard = min(soft, inherited), min(hard, inherited)
    resource.setrlimit(kind, (soft, hard))
_mem, _cpu, _fsize, _guard = (int(a) for a in sys.argv[1:5])
_status_path = sys.argv[5]
def _report(word):
    with open(_status_path, "w") as f:
        f.write(word)
def _on_cpu_limit(signum, frame):
    raise TimeoutError("CPU time limit reached")
signal.signal(signal.SIGXCPU, _on_cpu_limit)
_limit("RLIMIT_AS", _mem, _mem)
_limit("RLIMIT_CPU", _cpu, _cpu + 1)
_limit("RLIMIT_FSIZE", _fsize, _fsize)
_limit("RLIMIT_CORE", 0, 0)
if _guard:
    import socket, _socket
    class _NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            raise OSError("network access is disabled in the frame-peft sandbox")
    def _blocked(*args, **kwargs):
        raise OSError("network access is disabled in the frame-peft sandbox")
    socket.socket = _socket.socket = socket.SocketType = _NoSocket
    socket.socketpair = socket.fromfd = socket.create_connection = _blocked
    _socket.socketpair = getattr(_socket, "socketpair", _blocked)
del _limit, _mem, _cpu, _fsize, _guard
sys.argv = ["program.py"]
import runpy, traceback
try:
    runpy.run_path("program.py", run_name="__main__")
except AssertionError:
    traceback.print_exc()
    _report("failed")
except MemoryError:
    sys.stderr.write("MemoryError\n")
    _report("memory")
except TimeoutError as err:
    traceback.print_exc()
    _report("timeout" if str(err) == "CPU time limit reached" else "error")
except SystemExit as err:
    sys.stderr.write(f"program called exit({err.code!r})\n")
    _report("error")
except BaseException:
    traceback.print_exc()
    _report("error")
else:
    _report("passed")
"""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program: ``status`` is one of :data:`STATUSES`; ``stderr`` is its last
    2000 characters; ``seconds`` the wall-clock time of the child process."""

    passed: bool
    status: str
    stderr: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def humaneval_program(prompt: str, completion: str, tests: str, entry_point: str) -> str:
    """HumanEval style: ``prompt + completion``, the test code defining ``check``, the call."""
    return f"{prompt}{completion}\n\n{tests}\n\ncheck({entry_point})\n"


def mbpp_program(prompt: str, completion: str, tests: str) -> str:
    """MBPP style: ``prompt + completion`` followed by the ``assert`` lines."""
    return f"{prompt}{completion}\n\n{tests}\n"


def is_humaneval_style(example: Example) -> bool:
    """True when the tests define ``check(candidate)`` and the example names an entry point."""
    return bool(example.entry_point) and "def check(" in (example.tests or "")


def build_program(example: Example, completion: str) -> str:
    """The program for a code :class:`Example`: HumanEval style (:func:`is_humaneval_style`),
    else MBPP style."""
    if example.tests is None:
        raise ValueError(f"{example.task}/{example.uid} has no tests")
    if is_humaneval_style(example):
        return humaneval_program(example.prompt, completion, example.tests, example.entry_point)
    return mbpp_program(example.prompt, completion, example.tests)


@functools.cache
def namespace_available() -> bool:
    """Whether ``unshare -rnpf --kill-child`` works here (unprivileged user namespaces)."""
    if shutil.which("unshare") is None:
        return False
    try:
        done = subprocess.run(
            [*_NAMESPACE_CMD, sys.executable, "-I", "-c", "pass"],
            capture_output=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _use_namespace(network: str) -> bool:
    if network == "auto":
        return namespace_available()
    if network == "namespace":
        if not namespace_available():
            raise RuntimeError("network='namespace' but `unshare -rnpf` does not work here")
        return True
    if network == "guard":
        return False
    raise ValueError(f"network must be 'auto', 'namespace' or 'guard', got {network!r}")


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Wait until ``pid`` exits without reaping it (its pid and group stay reserved so the group
    can be killed safely afterwards). False if ``deadline`` passed first."""
    delay = 0.001
    while True:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None and info.si_pid == pid:
            return True
        now = time.monotonic()
        if now >= deadline:
            return False
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 0.02)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _status(reported: str | None, returncode: int, timed_out: bool) -> str:
    if timed_out:
        return "timeout"
    if reported in STATUSES:
        return reported
    # Died without reporting: killed by a signal (or os._exit). Only a direct child's code is
    # meaningful; SIGKILL before the deadline comes from the kernel's OOM killer.
    return "memory" if returncode == -signal.SIGKILL else "error"


def _remove_tree(path: str) -> None:
    """Delete the sandbox folder, making read-only folders writable first if needed."""
    for folder, dirs, _ in os.walk(path):
        for d in dirs:
            full = os.path.join(folder, d)
            if not os.path.islink(full):
                os.chmod(full, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def run_code_tests(
    program: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    file_mb: int = 64,
    network: str = "auto",
) -> SandboxResult:
    """Run ``program`` (a complete Python file: code + tests) in the sandbox described above."""
    if not math.isfinite(timeout) or timeout <= 0 or memory_mb < 16 or file_mb < 1:
        raise ValueError(
            f"need a finite timeout > 0, memory_mb >= 16, file_mb >= 1; got {timeout}, "
            f"{memory_mb}, {file_mb}"
        )
    namespace = _use_namespace(network)
    root = tempfile.mkdtemp(prefix="frame_peft_sandbox_")
    try:
        work = os.path.join(root, "work")
        os.mkdir(work)
        with open(os.path.join(work, "program.py"), "w", encoding="utf-8") as f:
            f.write(program)
        status_path = os.path.join(root, "status")
        limits = [memory_mb * 2**20, math.ceil(timeout) + 1, file_mb * 2**20, int(not namespace)]
        cmd = [sys.executable, "-I", "-c", _LAUNCHER, *map(str, limits), status_path]
        if namespace:
            cmd = [*_NAMESPACE_CMD, *cmd]
        env = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": work,
            "TMPDIR": work,
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        err_path = os.path.join(root, "stderr.txt")
        with open(os.path.join(root, "stdout.txt"), "wb") as out, open(err_path, "wb") as err:
            start = time.monotonic()
            proc = subprocess.Popen(
                cmd,
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            try:
                finished = _wait_unreaped(proc.pid, start + timeout)
            finally:
                _kill_group(proc.pid)  # pid not reaped yet: the group id cannot be reused
                proc.wait()
            seconds = time.monotonic() - start
        with open(err_path, "rb") as f:
            f.seek(max(0, os.path.getsize(err_path) - 4 * _STDERR_TAIL))
            stderr = f.read().decode("utf-8", "replace")[-_STDERR_TAIL:]
        reported = None
        if os.path.exists(status_path):
            with open(status_path, encoding="utf-8") as f:
                reported = f.read().strip()
        status = _status(reported, proc.returncode, not finished)
        return SandboxResult(status == "passed", status, stderr, round(seconds, 4))
    finally:
        _remove_tree(root)


def run_many(
    programs: Sequence[str],
    *,
    workers: int = 4,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    network: str = "auto",
    progress: bool = False,
    desc: str = "code tests",
) -> list[SandboxResult]:
    """:func:`run_code_tests` for each program, ``workers`` at a time, results in input order."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    from tqdm.auto import tqdm

    def one(program: str) -> SandboxResult:
        return run_code_tests(program, timeout=timeout, memory_mb=memory_mb, network=network)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(one, programs)
        return list(tqdm(jobs, total=len(programs), disable=not progress, desc=desc, leave=False))
