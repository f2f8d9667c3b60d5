"""Run generated code against its tests in a separate, resource-limited process (pass@1).

**The verdict cannot be forged by the program** (threat model and argument: docs/evaluation.md,
"Code execution: threat model"). ``passed`` needs all three of: exactly one line
``"<nonce> passed"`` on a pipe the parent created, where the nonce is 128 random bits that reach
the child only on a second pipe, read and closed by the launcher before the program exists in the
process, and thereafter held only inside an audit hook that refuses every introspection route to
it (:mod:`frame_peft.evaluation.sandbox_launcher`); that line raised from the launcher's own frame
at the line after the program's ``exec`` returned normally (the hook checks frame, code, globals
and line; the program cannot run as, or re-route, the launcher: trace functions, new audit
hooks, threads and signal handlers are refused); and exit code 0. A status file, ``os._exit(0)``,
``SystemExit(0)``, replaced launcher functions or a killed launcher give no such line: ``error``.

What :func:`run_code_tests` enforces, exactly:

- **Modes**: *namespace* (the default where it works): ``unshare -rnpfm --kill-child
  --mount-proc`` (new user, network, PID and mount namespaces): no network but a down loopback,
  a ``/proc`` that shows only the sandbox's processes, and every process dies with it (even after
  ``setsid``). *guard* (no namespaces): refused unless ``allow_unsafe_code_execution=True``, with
  a warning, because it cannot isolate a hostile program from this machine; it then also refuses
  sockets, new processes, signals to other processes and ``/proc``.
- **Process**: ``sys.executable -I`` (no ``PYTHON*`` variables, no user site-packages; the
  interpreter's site-packages stay importable, as in the reference HumanEval harness), in a new
  session, stdin closed, stdout/stderr to files, an environment built from scratch (``PATH``,
  ``LANG``, ``HOME`` = ``TMPDIR`` = the sandbox, one BLAS/OpenMP thread); only the two pipes are
  inherited.
- **Processes and memory**: ``max_processes`` (default 1: the launcher refuses to start any
  process or thread). Above 1 (namespace mode only) ``RLIMIT_NPROC`` bounds the count (the kernel
  does not apply it to root) and each process gets ``RLIMIT_AS`` = ``memory_mb //
  max_processes``, so the tree stays within ``memory_mb``. cgroup v2 is not used (see docs).
- **Files**: a fresh temporary folder is the working directory and is deleted afterwards. In
  namespace mode it is a tmpfs of ``file_mb``: all bytes written there are bounded; every file
  is bounded by ``RLIMIT_FSIZE`` = ``file_mb`` in both modes (in guard mode the folder's total is
  checked afterwards: more is an ``error``). Absolute paths are not blocked.
- **Time**: ``RLIMIT_CPU`` = ``ceil(timeout) + 1`` s (soft: ``timeout`` status) and a wall-clock
  ``timeout``, after which the process group is killed (always killed after a run, too).

Limits are set by the child on itself before the program runs (not through ``preexec_fn``,
which Python documents as unsafe in threaded programs, and sandboxes run from a thread pool).

Statuses: ``passed`` (see above), ``failed`` (an ``AssertionError``: a test failed), ``timeout``
(wall clock or CPU limit), ``memory`` (``MemoryError``, or killed by ``SIGKILL`` before the
deadline: the OOM killer), ``error`` (anything else: syntax error, other exception, ``exit()``,
``os._exit``, a refused operation, a crash, a missing or malformed verdict).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from ..data.types import Example
from .sandbox_launcher import LAUNCHER, NONCE_CHARS

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
_NAMESPACE_CMD = ("unshare", "-rnpfm", "--kill-child", "--mount-proc")
# Runs as pid 1 of the new PID namespace (which nothing inside can signal): a size-limited
# tmpfs becomes the working folder, then the launcher runs as its child (not exec'd, so that a
# signal that kills the launcher shows as exit code 128 + signal).
_NAMESPACE_SCRIPT = (
    'mount -t tmpfs -o "size=$2,mode=0700" tmpfs "$1" || exit 97\n'
    'cd "$1" || exit 97\n'
    "shift 2\n"
    '"$@"\n'
    "rc=$?\n"
    "exit $rc\n"
)
# Processes of the namespace's user besides the program's own: `unshare` and the shell.
_NAMESPACE_OVERHEAD = 2
_MIN_PROCESS_MB = 32
UNSAFE_OPTION = "allow_unsafe_code_execution"


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
    """Whether namespace mode works here: ``unshare -rnpfm --kill-child --mount-proc`` (new
    user, network, PID and mount namespaces, for an unprivileged user) and a tmpfs mount in it."""
    if any(shutil.which(tool) is None for tool in ("unshare", "mount", "sh")):
        return False
    with tempfile.TemporaryDirectory(prefix="frame_peft_probe_") as folder:
        cmd = [*_NAMESPACE_CMD, "sh", "-c", _NAMESPACE_SCRIPT, "sh", folder, "1m"]
        try:
            done = subprocess.run(
                [*cmd, sys.executable, "-I", "-c", "pass"], capture_output=True, timeout=20
            )
        except (OSError, subprocess.SubprocessError):
            return False
    return done.returncode == 0


def _use_namespace(network: str, allow_unsafe: bool) -> bool:
    """True for namespace mode; for guard mode, refuse unless the caller opted in."""
    if network not in ("auto", "namespace", "guard"):
        raise ValueError(f"network must be 'auto', 'namespace' or 'guard', got {network!r}")
    if network != "guard" and namespace_available():
        return True
    if network == "namespace":
        raise RuntimeError(
            "network='namespace' but `unshare -rnpfm --kill-child --mount-proc` (unprivileged "
            "user namespaces) does not work here; enable them, or run elsewhere"
        )
    why = (
        "network='guard' was asked for"
        if network == "guard"
        else "unprivileged user namespaces (`unshare -rnpfm`) are not available here"
    )
    if not allow_unsafe:
        raise RuntimeError(
            f"refusing to run generated code: {why}, and guard mode cannot keep a hostile "
            f"program from the network, the machine's files or this process's memory. Enable "
            f"user namespaces, or pass {UNSAFE_OPTION}=True (eval.{UNSAFE_OPTION}: true in a "
            f"recipe) on a disposable machine"
        )
    warnings.warn(
        f"{UNSAFE_OPTION}=True: running generated code in guard mode ({why}); it is NOT "
        "isolated from this machine. Use a disposable machine or container.",
        UserWarning,
        stacklevel=3,
    )
    return False


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


def _read_verdict(fd: int) -> bytes:
    """What is waiting on the verdict pipe (at most 4 KiB), without blocking."""
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while len(data) <= 4096:
            chunk = os.read(fd, 4097 - len(data))
            if not chunk:
                break
            data += chunk
    return data


def _status(verdict: bytes, nonce: str, returncode: int, namespace: bool, timed_out: bool) -> str:
    """The status, from facts the program cannot forge: exactly one ``"<nonce> <status>"`` line
    on the verdict pipe, and for ``passed`` also exit code 0."""
    if timed_out:
        return "timeout"
    reported = None
    for status in STATUSES:
        if verdict == f"{nonce} {status}\n".encode("ascii"):
            reported = status
    if reported == "passed":
        return "passed" if returncode == 0 else "error"
    if reported is not None:
        return reported
    # No (valid) verdict: the launcher died, or the program wrote to the pipe. Killed by
    # SIGKILL before the deadline: the kernel's OOM killer (through the namespace's shell, a
    # signal shows as 128 + signal; `unshare` itself killed is not the program's doing).
    killed = returncode == (128 + signal.SIGKILL if namespace else -signal.SIGKILL)
    return "memory" if killed and not verdict else "error"


def _folder_bytes(path: str) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _remove_tree(path: str) -> None:
    """Delete the sandbox folder, making read-only folders writable first if needed."""
    for folder, dirs, _ in os.walk(path):
        for d in dirs:
            full = os.path.join(folder, d)
            if not os.path.islink(full):
                os.chmod(full, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def _check_limits(timeout: float, memory_mb: int, file_mb: int, max_processes: int) -> None:
    if not math.isfinite(timeout) or timeout <= 0 or memory_mb < 16 or file_mb < 1:
        raise ValueError(
            f"need a finite timeout > 0, memory_mb >= 16, file_mb >= 1; got {timeout}, "
            f"{memory_mb}, {file_mb}"
        )
    if not isinstance(max_processes, int) or max_processes < 1:
        raise ValueError(f"max_processes must be an integer >= 1, got {max_processes!r}")
    if memory_mb // max_processes < _MIN_PROCESS_MB:
        raise ValueError(
            f"memory_mb={memory_mb} split over max_processes={max_processes} leaves "
            f"{memory_mb // max_processes} MiB per process (< {_MIN_PROCESS_MB}); raise "
            "memory_mb or lower max_processes"
        )


def run_code_tests(
    program: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    file_mb: int = 64,
    max_processes: int = 1,
    network: str = "auto",
    allow_unsafe_code_execution: bool = False,
) -> SandboxResult:
    """Run ``program`` (a complete Python file: code + tests) in the sandbox described above.

    ``memory_mb`` bounds the whole process tree (``max_processes`` processes of
    ``memory_mb // max_processes`` each); ``file_mb`` bounds every file and, in namespace mode,
    all the bytes in the working folder. Guard mode runs only with
    ``allow_unsafe_code_execution=True`` (a warning says so)."""
    _check_limits(timeout, memory_mb, file_mb, max_processes)
    namespace = _use_namespace(network, allow_unsafe_code_execution)
    return _run(program, timeout, memory_mb, file_mb, max_processes, namespace)


def _run(
    program: str, timeout: float, memory_mb: int, file_mb: int, max_processes: int, namespace: bool
) -> SandboxResult:
    nonce = secrets.token_hex(NONCE_CHARS // 2)
    root = tempfile.mkdtemp(prefix="frame_peft_sandbox_")
    nonce_r, nonce_w = os.pipe()
    verdict_r, verdict_w = os.pipe()
    try:
        work = os.path.join(root, "work")
        os.mkdir(work)
        program_path = os.path.join(root, "program.py")
        with open(program_path, "w", encoding="utf-8") as f:
            f.write(program)
        # 0: the launcher refuses to start processes (max_processes=1, and always in guard mode)
        nproc = max_processes + _NAMESPACE_OVERHEAD if namespace and max_processes > 1 else 0
        args = [
            nonce_r,
            verdict_w,
            memory_mb * 2**20 // max_processes,
            math.ceil(timeout) + 1,
            file_mb * 2**20,
            nproc,
            int(not namespace),
            program_path,
        ]
        cmd = [sys.executable, "-I", "-c", LAUNCHER, *map(str, args)]
        if namespace:
            script = [*_NAMESPACE_CMD, "sh", "-c", _NAMESPACE_SCRIPT, "sh", work, f"{file_mb}m"]
            cmd = [*script, *cmd]
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
                pass_fds=(nonce_r, verdict_w),
            )
            os.close(nonce_r)
            os.close(verdict_w)
            nonce_r = verdict_w = -1
            with contextlib.suppress(BrokenPipeError):
                os.write(nonce_w, nonce.encode("ascii"))  # 32 bytes: fits the pipe buffer
            os.close(nonce_w)
            nonce_w = -1
            try:
                finished = _wait_unreaped(proc.pid, start + timeout)
            finally:
                _kill_group(proc.pid)  # pid not reaped yet: the group id cannot be reused
                proc.wait()
            seconds = time.monotonic() - start
        with open(err_path, "rb") as f:
            f.seek(max(0, os.path.getsize(err_path) - 4 * _STDERR_TAIL))
            stderr = f.read().decode("utf-8", "replace")[-_STDERR_TAIL:]
        verdict = _read_verdict(verdict_r)
        status = _status(verdict, nonce, proc.returncode, namespace, not finished)
        if not namespace and _folder_bytes(work) > file_mb * 2**20:
            status = "error"  # guard mode has no size-limited folder: checked afterwards
            stderr = (stderr + f"\nwrote more than file_mb={file_mb} MiB\n")[-_STDERR_TAIL:]
        return SandboxResult(status == "passed", status, stderr, round(seconds, 4))
    finally:
        for fd in (nonce_r, nonce_w, verdict_r, verdict_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        _remove_tree(root)


def run_many(
    programs: Sequence[str],
    *,
    workers: int = 4,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    file_mb: int = 64,
    max_processes: int = 1,
    network: str = "auto",
    allow_unsafe_code_execution: bool = False,
    progress: bool = False,
    desc: str = "code tests",
) -> list[SandboxResult]:
    """:func:`run_code_tests` for each program, ``workers`` at a time, results in input order.
    Bad limits and a refused guard mode raise before any program runs."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    _check_limits(timeout, memory_mb, file_mb, max_processes)
    namespace = _use_namespace(network, allow_unsafe_code_execution)
    from tqdm.auto import tqdm

    def one(program: str) -> SandboxResult:
        return _run(program, timeout, memory_mb, file_mb, max_processes, namespace)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(one, programs)
        return list(tqdm(jobs, total=len(programs), disable=not progress, desc=desc, leave=False))
