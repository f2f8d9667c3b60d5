"""Code sandbox under attack: a program that tries to forge a pass, escape or exhaust the machine
scores as not passed and leaves no process behind (issue 16 §1).

Every attack is a small local program (no network, bounded sizes, < 1 s each). The programs are
module-level constants so the same programs can be replayed against an older sandbox.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
import warnings

import pytest

from _tokenizer import char_tokenizer, tiny_text_llama
from frame_peft.evaluation import (
    code_sandbox,
    evaluate,
    namespace_available,
    run_code_tests,
    run_many,
)
from frame_peft.recipes.schema import EvalSpec, RecipeError
from test_code_sandbox import NETWORK_MODES, _processes_with, run
from test_eval_results import CODE

warnings.filterwarnings("ignore", category=UserWarning)


# A wrong solution: its test fails. Every attack below is appended to it or wraps it.
WRONG = "def add(a, b):\n    return a - b\n"
FAILING_TEST = "assert add(1, 2) == 3, 'wrong answer'\n"

FORGE_STATUS_FILE = (
    WRONG
    + """
import os
try:
    assert add(1, 2) == 3
except AssertionError:
    for folder in (os.getcwd(), os.path.dirname(os.getcwd())):
        try:
            with open(os.path.join(folder, "status"), "w") as f:
                f.write("passed")
        except OSError:
            pass
    os._exit(0)
"""
)

SWALLOW_THEN_EXIT_0 = (
    WRONG + "import os\ntry:\n    assert add(1, 2) == 3\nexcept AssertionError:\n    os._exit(0)\n"
)

SWALLOW_THEN_SYSTEMEXIT_0 = (
    WRONG + "try:\n    assert add(1, 2) == 3\nexcept AssertionError:\n    raise SystemExit(0)\n"
)

# Walk the stack to the launcher's frame (the one with no caller) and replace what reports the
# verdict there: its reporting function, its helpers, its `sys`.
REPLACE_REPORTER = (
    WRONG
    + """
import sys
class FakeSys:
    def __getattr__(self, name):
        return getattr(sys, name)
    def audit(self, *args):
        return sys.audit("frame_peft.verdict")
f = sys._getframe(1)
while f.f_back is not None:
    f = f.f_back
g = f.f_globals
if "_report" in g:
    g["_report"] = lambda word, report=g["_report"]: report("passed")
for name, value in list(g.items()):
    if callable(value) and not isinstance(value, type) and name != "_report":
        g[name] = lambda *a, **k: None
g["sys"] = FakeSys()
"""
    + FAILING_TEST
)

# Raise the verdict event directly, through a partial (no Python frame of its own), and run the
# launcher's own code again from an atexit handler (a frame with no caller, in the main thread).
CALL_THE_HOOK = (
    WRONG
    + """
import atexit, functools, sys
for attempt in (
    lambda: sys.audit("frame_peft.verdict"),
    lambda: sys.audit("frame_peft.verdict", "passed"),
):
    try:
        attempt()
    except RuntimeError:
        pass
sys.audit = functools.partial(sys.audit, "frame_peft.verdict", "passed")
top = sys._getframe(1)
atexit.register(exec, top.f_code, top.f_globals)
"""
    + FAILING_TEST
)

# Look for the nonce everywhere Python can look, then write every candidate as a pass to every
# descriptor and exit with 0.
STEAL_THE_NONCE = (
    WRONG
    + r"""
import gc, os, re, sys
found = set()
hexes = re.compile(r"\b[0-9a-f]{32}\b")
def scan(value):
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        found.update(hexes.findall(value))
def scan_code(code, depth=0):
    for const in code.co_consts:
        scan(const)
        if hasattr(const, "co_consts") and depth < 5:
            scan_code(const, depth + 1)
def scan_frame(frame):
    while frame is not None:
        for mapping in (frame.f_locals, frame.f_globals):
            for value in list(mapping.values()):
                scan(value)
                code = getattr(value, "__code__", None)
                if code is not None:
                    scan_code(code)
                for cell in getattr(value, "__closure__", None) or ():
                    try:
                        scan(cell.cell_contents)
                    except ValueError:
                        pass
        scan_code(frame.f_code)
        frame = frame.f_back
attempts = [
    lambda: [scan(o) for o in gc.get_objects()],
    lambda: [scan(o) for o in gc.get_referrers(sys)],
    lambda: scan_frame(sys._getframe()),
    lambda: [scan_frame(f) for f in sys._current_frames().values()],
    lambda: scan(open("/proc/self/mem", "rb").read(1)),
    lambda: scan(" ".join(sys.argv) + open("/proc/self/cmdline", "rb").read().decode()),
    lambda: scan(str(dict(os.environ))),
]
def from_a_refused_call():
    try:
        gc.get_objects()
    except RuntimeError as err:
        tb = err.__traceback__
        while tb is not None:
            scan_frame(tb.tb_frame)
            tb = tb.tb_next
attempts.append(from_a_refused_call)
for fd in range(3, 64):
    attempts.append(lambda fd=fd: scan(os.read(fd, 4096)))
for attempt in attempts:
    try:
        os.set_blocking
        attempt()
    except BaseException:
        pass
for fd in range(3, 64):
    for nonce in found:
        try:
            os.write(fd, f"{nonce} passed\n".encode())
        except OSError:
            pass
sys.stderr.write(f"candidates: {len(found)}\n")
os._exit(0)
"""
)

# A signal handler receives the current frame (unaudited), a thread could run beside the hook:
# try every route to either, and count the ones that worked.
HANDLERS_AND_THREADS = r"""
import importlib.machinery, importlib.util, signal, sys
worked = []
def fresh(name):
    spec = importlib.machinery.BuiltinImporter.find_spec(name)
    return importlib.util.module_from_spec(spec)
routes = {
    "signal.signal": lambda: signal.signal(signal.SIGALRM, lambda *a: None),
    "__wrapped__": lambda: signal.signal.__wrapped__(signal.SIGALRM, lambda *a: None),
    "fresh _signal": lambda: fresh("_signal").signal(signal.SIGALRM, lambda *a: None),
    "threading": lambda: __import__("threading").Thread(target=print).start(),
    "fresh _thread": lambda: fresh("_thread").start_new_thread(print, ()),
    "reimport _thread": lambda: (sys.modules.pop("_thread"), __import__("_thread"))[1]
    .start_new_thread(print, ()),
}
for name, route in routes.items():
    try:
        route()
        worked.append(name)
    except BaseException:
        pass
sys.stderr.write(f"worked: {worked}\n")
"""

# Code the hook might call: patched builtins, an exception class, path helpers. Any of them
# running inside the hook could walk up to its frames; record whether one ever saw "<hook>".
PATCH_WHAT_THE_HOOK_CALLS = r"""
import builtins, gc, os, posixpath, sys
seen = []
def spy(real):
    def wrapper(*args, **kwargs):
        try:
            f = sys._getframe(1)
            while f is not None:
                if f.f_code.co_filename == "<hook>":
                    seen.append(f.f_locals)
                f = f.f_back
        except BaseException:
            pass
        return real(*args, **kwargs)
    return wrapper
for name in ("type", "len", "any", "getattr", "str", "bytes", "isinstance"):
    setattr(builtins, name, spy(getattr(builtins, name)))
class Refusal(Exception):
    def __init__(self, *args):
        spy(lambda: None)()
        super().__init__(*args)
builtins.RuntimeError = Refusal
for name in ("realpath", "islink", "join", "split"):
    setattr(posixpath, name, spy(getattr(posixpath, name)))
opened = []
for route in (
    lambda: open("probe.txt", "w").close(),
    lambda: sys._getframe(),
    lambda: gc.get_objects(),
    lambda: (os.symlink("/proc/self/mem", "m"), open("m", "rb"))[1],
    lambda: os.open("mem", os.O_RDONLY, dir_fd=os.open("/proc/self", os.O_RDONLY)),
    lambda: open("/proc/self/task/" + str(os.getpid()) + "/mem", "rb"),
):
    try:
        opened.append(route())
    except BaseException:
        pass
mem = sum(hasattr(o, "read") or type(o) is int for o in opened)
sys.stderr.write(f"seen: {len(seen)} mem: {mem}\n")
"""

KILL_THE_PARENT = (
    WRONG + "import os\nppid = os.getppid()\nos.kill(ppid if ppid > 1 else 1, 9)\n" + FAILING_TEST
)


def setsid_daemon(token: str) -> str:
    return (
        "import subprocess, sys\n"
        f"cmd = [sys.executable, '-c', 'import time; time.sleep(60)  # {token}']\n"
        "subprocess.Popen(cmd, start_new_session=True)\n"
        "assert True\n"
    )


READ_PARENT_ENVIRONMENT = r"""
import os, sys
leaked = []
for pid in [str(os.getppid())] + sorted(p for p in os.listdir("/proc") if p.isdigit()):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            leaked.append(f.read().decode("latin-1"))
    except OSError:
        pass
sys.stderr.write("LEAK:" + "|".join(leaked) + "\n")
"""


def connect_to(port: int) -> str:
    return (
        "import _socket, socket\n"
        "for make in (lambda: socket.create_connection(('127.0.0.1', PORT), timeout=1),\n"
        "             lambda: _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)):\n"
        "    s = make()\n"
        "    s.connect(('127.0.0.1', PORT))\n"
        "    s.sendall(b'leak')\n"
    ).replace("PORT", str(port))


def many_children(children: int, child_mb: int) -> str:
    return (
        "import subprocess, sys\n"
        f"code = 'import time; x = bytearray({child_mb} * 2**20); time.sleep(0.3)'\n"
        f"procs = [subprocess.Popen([sys.executable, '-c', code]) for _ in range({children})]\n"
        "codes = [p.wait() for p in procs]\n"
        "assert codes == [0] * len(codes), codes\n"
    )


ONE_BIG_FILE = "open('big.bin', 'wb').write(b'x' * (2 * 2**20))\n"
MANY_SMALL_FILES = (
    "for i in range(4):\n    with open(f'part{i}.bin', 'wb') as f:\n"
    "        f.write(b'x' * (600 * 2**10))\n"
)


@pytest.mark.parametrize("network", NETWORK_MODES)
@pytest.mark.parametrize(
    "program",
    [
        FORGE_STATUS_FILE,
        SWALLOW_THEN_EXIT_0,
        SWALLOW_THEN_SYSTEMEXIT_0,
        REPLACE_REPORTER,
        CALL_THE_HOOK,
        STEAL_THE_NONCE,
    ],
    ids=["status-file", "exit-0", "systemexit-0", "replace-reporter", "call-hook", "steal-nonce"],
)
def test_a_forged_pass_scores_as_not_passed(program, network):
    r = run(program, network, timeout=5)
    assert not r.passed and r.status != "passed", r.stderr
    if program is STEAL_THE_NONCE:
        assert "candidates: 0" in r.stderr, r.stderr  # nothing that looks like the nonce


@pytest.mark.parametrize("network", NETWORK_MODES)
def test_no_signal_handler_or_thread_can_be_started(network):
    r = run(HANDLERS_AND_THREADS, network, timeout=5)
    assert r.status == "passed" and "worked: []" in r.stderr, r.stderr


@pytest.mark.parametrize("network", NETWORK_MODES)
def test_nothing_the_hook_calls_can_be_patched_and_memory_cannot_be_opened(network):
    r = run(PATCH_WHAT_THE_HOOK_CALLS, network, timeout=5)
    assert r.status == "passed" and "seen: 0 mem: 0" in r.stderr, r.stderr


@pytest.mark.parametrize("network", NETWORK_MODES)
def test_a_correct_solution_still_passes_next_to_the_attacks(network):
    right = "def add(a, b):\n    return a + b\n" + FAILING_TEST
    results = [run(p, network, timeout=5) for p in (right, WRONG + FAILING_TEST)]
    assert [r.status for r in results] == ["passed", "failed"]


def evaluate_elsewhere(program: str, network: str, env: dict[str, str] | None = None):
    """Run the sandbox from a separate evaluator process (so that an attack on the evaluator, or
    a secret in its *initial* environment, can be observed): its exit code, stdout, stderr."""
    script = (
        "import sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "from frame_peft.evaluation import run_code_tests\n"
        "net = sys.argv[1]\n"
        "r = run_code_tests(sys.stdin.read(), network=net, timeout=5,\n"
        "                   allow_unsafe_code_execution=net == 'guard')\n"
        "print(r.status)\n"
        "sys.stderr.write(r.stderr)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script, network],
        input=program,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        timeout=120,
    )


@pytest.mark.parametrize("network", NETWORK_MODES)
def test_killing_the_parent_fails_and_the_evaluator_survives(network):
    done = evaluate_elsewhere(KILL_THE_PARENT, network)
    assert done.returncode == 0, (done.returncode, done.stderr)  # the evaluator was not killed
    if network == "guard":
        assert done.stdout.split() == ["error"] and "os.kill of another process" in done.stderr
    else:  # the namespace's init ignores it; the wrong answer is then scored as such
        assert done.stdout.split() == ["failed"], done.stdout


@pytest.mark.parametrize("network", NETWORK_MODES)
def test_no_setsid_daemon_survives(network):
    token = uuid.uuid4().hex
    r = run(setsid_daemon(token), network, timeout=5, max_processes=4, memory_mb=512)
    if network == "guard":
        assert r.status == "error" and "starting a process" in r.stderr
    else:
        assert r.status == "passed", r.stderr
    time.sleep(0.1)
    assert _processes_with(token) == []
    r = run(setsid_daemon(token), network, timeout=5)  # default max_processes=1: refused
    assert r.status == "error" and "starting a process" in r.stderr
    assert _processes_with(token) == []


@pytest.mark.parametrize("network", NETWORK_MODES)
def test_the_evaluators_environment_is_out_of_reach(network):
    secret = f"secret-{uuid.uuid4().hex}"
    done = evaluate_elsewhere(READ_PARENT_ENVIRONMENT, network, {"FRAME_PEFT_EVAL_SECRET": secret})
    assert done.returncode == 0, done.stderr
    assert secret not in done.stderr and secret not in done.stdout
    if network == "guard":
        assert done.stdout.split() == ["error"] and "opening /proc" in done.stderr
    else:
        # it ran, and /proc showed only the namespace's own processes
        assert done.stdout.split() == ["passed"] and "LEAK:" in done.stderr, done.stderr


@pytest.mark.parametrize("network", NETWORK_MODES)
def test_loopback_listener_is_unreachable(network):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.3)
    try:
        r = run(connect_to(server.getsockname()[1]), network, timeout=5)
        assert r.status == "error" and not r.passed
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()


@pytest.mark.parametrize("network", NETWORK_MODES)
def test_memory_is_limited_for_the_whole_process_tree(network):
    # 3 children x 100 MiB against 256 MiB in all (the 3 x 400 MiB vs 512, scaled down)
    program = many_children(3, 100)
    r = run(program, network, timeout=10, memory_mb=256, max_processes=4)
    assert not r.passed
    r = run(program, network, timeout=10, memory_mb=256)  # one process: no children at all
    assert r.status == "error" and "starting a process" in r.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="the kernel does not apply RLIMIT_NPROC to root")
@pytest.mark.skipif(not namespace_available(), reason="needs `unshare -rnpfm`")
def test_process_count_is_limited_in_namespace_mode():
    r = run_code_tests(many_children(6, 1), network="namespace", timeout=10, max_processes=3)
    assert r.status == "error" and "BlockingIOError" in r.stderr


@pytest.mark.parametrize("network", NETWORK_MODES)
def test_bytes_written_are_limited(network):
    r = run(ONE_BIG_FILE, network, timeout=5, file_mb=1)
    assert r.status == "error" and not r.passed
    r = run(MANY_SMALL_FILES, network, timeout=5, file_mb=1)  # each file is under the limit
    assert r.status == "error" and not r.passed


def test_guard_mode_is_refused_unless_opted_in():
    with pytest.raises(RuntimeError, match="allow_unsafe_code_execution"):
        run_code_tests("assert True\n", network="guard")
    with pytest.raises(RuntimeError, match="allow_unsafe_code_execution"):
        run_many(["assert True\n"], network="guard")
    with pytest.warns(UserWarning, match="NOT isolated"):
        r = run_code_tests("assert True\n", network="guard", allow_unsafe_code_execution=True)
    assert r.passed


def test_evaluate_refuses_code_tasks_without_namespaces_unless_opted_in(monkeypatch):
    code = CODE  # two toy code items: one passes, one fails
    model, tok = tiny_text_llama(seed=4), char_tokenizer()
    kwargs = {"max_new_tokens": 4, "code_timeout": 5, "progress": False}
    monkeypatch.setattr(code_sandbox, "namespace_available", lambda: False)  # a machine without
    with pytest.raises(RuntimeError, match="allow_unsafe_code_execution=True"):
        evaluate(model, tok, {"toy_code": code}, **kwargs)
    with pytest.warns(UserWarning, match="NOT isolated"):
        res = evaluate(model, tok, {"toy_code": code}, allow_unsafe_code_execution=True, **kwargs)
    assert [p["status"] for p in res.predictions["toy_code"]] == ["passed", "failed"]
    assert res.metadata["settings"]["allow_unsafe_code_execution"] is True
    assert EvalSpec(allow_unsafe_code_execution=True).allow_unsafe_code_execution
    with pytest.raises(RecipeError, match=r"eval\.allow_unsafe_code_execution"):
        EvalSpec(allow_unsafe_code_execution="yes")
