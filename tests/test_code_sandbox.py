"""Code sandbox: statuses, time/memory limits, network block, temp folder, no leftover processes.

Attacks on the verdict and on the machine are in tests/test_sandbox_attacks.py."""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
import warnings

import pytest

from frame_peft.data.types import Example
from frame_peft.evaluation import (
    build_program,
    humaneval_program,
    mbpp_program,
    namespace_available,
    run_code_tests,
    run_many,
)

warnings.filterwarnings("ignore", category=UserWarning)

NETWORK_MODES = [
    "guard",
    pytest.param(
        "namespace",
        marks=pytest.mark.skipif(
            not namespace_available(),
            reason="`unshare -rnpfm` (user namespaces) is not permitted for this user here",
        ),
    ),
]

HE_PROMPT = 'def add(a, b):\n    """Add two numbers."""\n'
HE_TESTS = (
    "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"
)


def run(program: str, network: str, **kwargs):
    """run_code_tests, opting in to guard mode where the test asks for it."""
    return run_code_tests(
        program, network=network, allow_unsafe_code_execution=network == "guard", **kwargs
    )


def _processes_with(token: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if token.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("network", NETWORK_MODES)
def test_pass_fail_syntax_error_and_exit(network):
    ok = humaneval_program(HE_PROMPT, "    return a + b\n", HE_TESTS, "add")
    bad = humaneval_program(HE_PROMPT, "    return a - b\n", HE_TESTS, "add")
    r = run(ok, network, timeout=5)
    assert (r.passed, r.status) == (True, "passed") and r.seconds < 5
    r = run(bad, network, timeout=5)
    assert (r.passed, r.status) == (False, "failed") and "AssertionError" in r.stderr
    r = run("def f(:\n    pass\n", network, timeout=5)
    assert r.status == "error" and "SyntaxError" in r.stderr
    r = run("raise KeyError('k')\n", network, timeout=5)
    assert r.status == "error" and "KeyError" in r.stderr
    r = run("import sys\nsys.exit(0)\n", network, timeout=5)
    assert r.status == "error" and "exit(0)" in r.stderr  # exiting early is not passing
    r = run("import os\nos._exit(0)\n", network, timeout=5)
    assert r.status == "error"


@pytest.mark.parametrize("network", NETWORK_MODES)
def test_infinite_loop_is_killed_near_the_timeout_with_its_children(network):
    token = uuid.uuid4().hex
    spawn = (  # guard mode refuses new processes
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)  # {token}'])\n"
    )
    program = "import subprocess, sys\n" + (spawn if network == "namespace" else "")
    program += "while True:\n    pass\n"
    start = time.monotonic()
    r = run(program, network, timeout=1.0, max_processes=2)
    elapsed = time.monotonic() - start
    assert r.status == "timeout" and not r.passed
    assert 1.0 <= r.seconds < 2.5 and elapsed < 4.0
    time.sleep(0.05)
    assert _processes_with(token) == []


@pytest.mark.skipif(not namespace_available(), reason="`unshare -rnpf` is not permitted here")
def test_background_children_die_after_a_normal_exit():
    token = uuid.uuid4().hex
    program = (
        "import subprocess, sys\n"
        f"cmd = [sys.executable, '-c', 'import time; time.sleep(60)  # {token}']\n"
        "subprocess.Popen(cmd)\n"
        "subprocess.Popen(cmd, start_new_session=True)\n"
    )
    r = run_code_tests(program, network="namespace", timeout=5, max_processes=3)
    assert r.status == "passed", r.stderr
    time.sleep(0.05)
    assert _processes_with(token) == []  # with the namespace even a setsid() child is gone


@pytest.mark.parametrize("network", NETWORK_MODES)
def test_new_processes_and_threads_are_refused_by_default(network):
    program = "import subprocess\nsubprocess.run(['true'])\n"
    r = run(program, network, timeout=5)
    assert r.status == "error" and "starting a process (subprocess.Popen" in r.stderr
    r = run("import os\nos.system('true')\n", network, timeout=5)
    assert r.status == "error" and "os.system" in r.stderr
    r = run("import threading\nthreading.Thread(target=print).start()\n", network, timeout=5)
    assert r.status == "error" and "threads are not allowed" in r.stderr


@pytest.mark.parametrize("network", NETWORK_MODES)
def test_memory_hog_is_stopped(network):
    r = run("x = bytearray(2 * 1024**3)\n", network, timeout=5, memory_mb=256)
    assert r.status == "memory" and not r.passed and r.seconds < 4
    r = run("x = [0] * (10**9)\n", network, timeout=5, memory_mb=256)
    assert r.status == "memory"


@pytest.mark.parametrize("network", NETWORK_MODES)
def test_socket_attempt_fails_and_reaches_nobody(network):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.3)
    port = server.getsockname()[1]
    program = (
        "import socket\n"
        f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "s.sendall(b'leak')\n"
    )
    try:
        r = run(program, network, timeout=5)
        assert r.status == "error" and "OSError" in r.stderr
        with pytest.raises(TimeoutError):
            server.accept()  # nothing connected to the test's own listener
    finally:
        server.close()
    if network == "guard":
        assert "network access is disabled" in r.stderr
        r = run("import socket\nsocket.socket()\n", network, timeout=5)
        assert r.status == "error"


def test_files_land_in_a_fresh_temp_dir_that_is_deleted():
    program = (
        "import os, sys\n"
        "open('out.txt', 'w').write('hello')\n"
        "sys.stderr.write('PATH=' + os.path.abspath('out.txt') + '\\n')\n"
        "assert sorted(os.listdir('.')) == ['out.txt', 'program.py']\n"
    )
    r = run_code_tests(program, timeout=5)
    assert r.status == "passed", r.stderr
    path = r.stderr.split("PATH=", 1)[1].splitlines()[0]
    assert os.path.realpath(path).startswith(os.path.realpath(tempfile.gettempdir()))
    assert os.path.basename(os.path.dirname(os.path.dirname(path))).startswith("frame_peft_sandbox")
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(os.path.dirname(path)))


def test_environment_is_minimal_and_isolated(monkeypatch, tmp_path):
    (tmp_path / "sneaky.py").write_text("VALUE = 1\n")
    monkeypatch.setenv("FRAME_PEFT_SECRET", "do-not-leak")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    program = (
        "import os, sys\n"
        "assert 'FRAME_PEFT_SECRET' not in os.environ\n"
        "assert os.environ['HOME'] == os.getcwd()\n"
        "try:\n    import sneaky\nexcept ImportError:\n    pass\n"
        "else:\n    raise AssertionError('PYTHONPATH was honoured')\n"
    )
    r = run_code_tests(program, timeout=5)
    assert r.status == "passed", r.stderr


def test_run_many_keeps_order_and_runs_in_parallel():
    programs = ["import time\ntime.sleep(0.6)\nassert True\n"] * 3 + ["assert False\n"]
    start = time.monotonic()
    results = run_many(programs, workers=4, timeout=5)
    elapsed = time.monotonic() - start
    assert [r.status for r in results] == ["passed", "passed", "passed", "failed"]
    assert elapsed < 1.7  # serially it would be > 1.8 s


def test_programs_for_humaneval_and_mbpp_examples():
    he = Example(task="humaneval", uid="0", prompt=HE_PROMPT, tests=HE_TESTS, entry_point="add")
    mbpp = Example(
        task="mbpp",
        uid="1",
        prompt="def mul(a, b):\n",
        tests="assert mul(2, 3) == 6\nassert mul(0, 5) == 0\n",
        entry_point="mul",
    )
    assert build_program(he, "    return a + b\n").endswith("check(add)\n")
    assert build_program(mbpp, "    return a * b\n") == mbpp_program(
        mbpp.prompt, "    return a * b\n", mbpp.tests
    )
    results = run_many(
        [
            build_program(he, "    return a + b\n"),
            build_program(mbpp, "    return a * b\n"),
            build_program(mbpp, "    return a + b\n"),
        ],
        workers=3,
        timeout=5,
    )
    assert [r.status for r in results] == ["passed", "passed", "failed"]
    with pytest.raises(ValueError, match="no tests"):
        build_program(Example(task="t", uid="x", prompt="p"), "c")


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="timeout"):
        run_code_tests("pass\n", timeout=0)
    with pytest.raises(ValueError, match="network"):
        run_code_tests("pass\n", network="firewall")
    with pytest.raises(ValueError, match="workers"):
        run_many(["pass\n"], workers=0)
    with pytest.raises(ValueError, match="max_processes must be"):
        run_code_tests("pass\n", max_processes=0)
    with pytest.raises(ValueError, match="raise memory_mb or lower max_processes"):
        run_code_tests("pass\n", memory_mb=64, max_processes=4)


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 0.0, -1.0])
def test_timeout_must_be_finite_and_positive(timeout):
    with pytest.raises(ValueError, match="finite timeout > 0"):
        run_code_tests("pass", timeout=timeout)


COMMON_IMPORTS = """
import collections, dataclasses, enum, functools, hashlib, heapq, inspect, itertools, json, math
import logging, random, re, statistics, sys, traceback, typing
from collections import namedtuple
P = namedtuple("P", "x y")  # reads sys._getframe(1).f_globals
class E(enum.Enum):
    A = 1
@dataclasses.dataclass
class D:
    x: int = 1
logging.getLogger("sandbox").warning("logged")
try:
    1 / 0
except ZeroDivisionError:
    traceback.print_exc()  # walks frames and code objects
import numpy  # tries `import ctypes`, which the sandbox refuses with an ImportError
assert numpy.array([1, 2]).sum() == 3
assert P(1, 2).x == 1 and D().x == 1 and E.A.value == 1
"""


@pytest.mark.parametrize("network", NETWORK_MODES)
def test_common_imports_and_library_introspection_still_work(network):
    pytest.importorskip("numpy")
    r = run(COMMON_IMPORTS, network, timeout=20)
    assert r.status == "passed", r.stderr
    assert "logged" in r.stderr and "ZeroDivisionError" in r.stderr
