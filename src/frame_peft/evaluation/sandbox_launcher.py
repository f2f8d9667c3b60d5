"""The sandbox's launcher and verdict hook: the code that runs *inside* the sandboxed interpreter.

:mod:`frame_peft.evaluation.code_sandbox` starts ``python -I -c LAUNCHER nonce_fd verdict_fd mem
cpu fsize nproc guard program_path``. The launcher, before any code of the program exists in the
process:

1. reads a 32-character random nonce from ``nonce_fd`` (a pipe only the parent wrote to) and
   closes it; the nonce is never in ``argv``, the environment or a file;
2. sets its resource limits and its ``SIGXCPU`` handler;
3. compiles :data:`_HOOK_SOURCE` with the nonce as a string constant of the ``_verdict`` code
   object and installs the resulting function with ``sys.addaudithook`` (Python cannot remove
   an audit hook), then drops every other reference to the nonce;
4. refuses new Python signal handlers (a handler receives the current frame, unaudited) and new
   threads (one could run while the hook inspects itself): ``_signal.signal`` and
   ``_thread.start_new_thread`` are replaced, and a second copy of either module is refused;
5. compiles the program and ``exec``\\ s it in a fresh ``__main__`` dict.

Then, at one line per outcome, it raises ``sys.audit("frame_peft.verdict")``. The hook writes
``"<nonce> <status>\\n"`` to ``verdict_fd`` and ``os._exit``\\ s at once (no candidate code
runs after a verdict) only when that event comes from the launcher's own top-level frame (its
code object and globals, no caller, the main thread), for the first time; the status is taken
from the *line* the event was raised at, never from an argument. Everything the program could
use to reach the nonce or to run as the launcher is refused by the hook (``RuntimeError``):

- frames or code objects of the hook itself (``sys._getframe``, ``tb_frame``, ``gi_frame``,
  ``f_code``, ``__code__``, ... whose result is, or is called from, a hook frame), and
  ``sys._current_frames``, ``gc.get_objects``/``get_referrers``/``get_referents``;
- ``sys.settrace``/``setprofile`` (a trace function could change the launcher's line),
  ``sys.addaudithook``, ``code.__new__``/``replace``, ``exec`` of the launcher's code object;
- native code: importing ``ctypes``, ``cffi``, ``_testcapi`` & co., every ``ctypes.*`` event,
  opening (or symlinking to) a path whose last component is ``mem``;
- new processes, unless ``nproc`` > 0 (namespace mode with ``max_processes`` > 1);
- in guard mode (no namespaces) also sockets, signals to other processes, and any path with a
  ``proc`` component (open, symlink, chdir).

No code of the program runs inside the hook: the garbage collector is off while it runs (no
finalizers), it calls only C functions captured before the program existed, and its builtins are
a private copy (``builtins.type = spy`` does not reach it); path checks are lexical.
"""

from __future__ import annotations

import re

__all__ = ["LAUNCHER", "NONCE_CHARS", "VERDICT_SITES"]

NONCE_CHARS = 32

_HOOK_SOURCE = r"""
def make_hook(verdict_fd, launcher_code, launcher_globals, sites, guard, spawn):
    import _thread, gc, os, sys, types
    write, exit_now, getframe, ident = os.write, os._exit, sys._getframe, _thread.get_ident
    gc_off, gc_on, gc_enabled = gc.disable, gc.enable, gc.isenabled
    own_pid, main = os.getpid(), ident()
    frame_type, code_type = types.FrameType, types.CodeType
    introspectable = (
        types.FrameType, types.TracebackType, types.GeneratorType, types.CoroutineType,
        types.AsyncGeneratorType, types.FunctionType, types.MethodType,
    )
    refused = {
        "sys._current_frames", "sys.settrace", "sys.setprofile", "sys.addaudithook",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "code.__new__",
        "function.__new__", "sys.monitoring.register_callback",  # 3.12+: gets code objects
    }
    refused_prefixes = ("ctypes.", "_ctypes.", "cpython.remote")
    native = (
        "ctypes", "_ctypes", "cffi", "_cffi_backend", "_testcapi", "_testinternalcapi",
        "_testmultiphase", "_testbuffer", "_xxsubinterpreters", "_xxinterpchannels", "_lsprof",
    )
    process_events = {
        "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
        "subprocess.Popen", "pty.spawn", "os.startfile",
    }
    state = [False, False]  # [the hook itself is introspecting, a verdict was given]
    codes = []

    def hooky(obj):
        if type(obj) is code_type:
            return any(obj is c for c in codes)
        if type(obj) is frame_type:
            f = obj
            while f is not None:
                if any(f.f_code is c for c in codes):
                    return True
                f = f.f_back
        return False

    def deny(what, error=RuntimeError):
        raise error(f"{what} is not allowed in the frame-peft code sandbox")

    def verdict():
        f = getframe(3)  # verdict <- check <- hook <- (sys.audit, C) <- the caller
        if (
            state[1]
            or f.f_code is not launcher_code
            or f.f_globals is not launcher_globals
            or f.f_back is not None
            or ident() != main
            or f.f_lineno not in sites
        ):
            deny("raising frame_peft.verdict outside the launcher")
        state[1] = True
        status = sites[f.f_lineno]
        write(verdict_fd, ("NONCE_PLACEHOLDER " + status + "\n").encode("ascii"))
        exit_now(0 if status == "passed" else 1)

    def check(event, args):
        if event == "frame_peft.verdict":
            state[0] = True
            try:
                verdict()
            finally:
                state[0] = False
        if event in refused or event.startswith(refused_prefixes):
            deny(event)
        if event == "object.__getattr__" and len(args) == 2:
            obj, name = args
            if type(obj) in introspectable and type(name) is str:
                state[0] = True
                try:
                    bad = hooky(getattr(obj, name, None))
                finally:
                    state[0] = False
                if bad:
                    deny("reaching the verdict hook")
        elif event == "sys._getframe" and len(args) == 1:
            state[0] = True
            try:
                bad = hooky(args[0])
            finally:
                state[0] = False
            if bad:
                deny("reaching the verdict hook")
        elif event == "exec" and len(args) == 1 and args[0] is launcher_code:
            deny("running the launcher again")
        elif event == "import" and len(args) >= 1 and type(args[0]) is str:
            if args[0].split(".")[0] in native:
                deny(f"importing {args[0]}", ImportError)  # what `try: import` expects
        elif event in ("open", "os.symlink", "os.chdir") and len(args) >= 1:
            # Lexical checks only (str methods, no Python-level path code the program could
            # patch): the kernel names the file "mem", so a path or a symlink target ending in
            # a "mem" component is refused; in guard mode any "proc" component is.
            path = args[0]
            if type(path) is bytes:
                path = path.decode("utf-8", "replace")
            if type(path) is str:
                parts = path.rstrip("/").split("/")
                if parts[-1] in ("mem", "kmem", "port") and event != "os.chdir":
                    deny(f"opening {path}")
                if guard and "proc" in parts:
                    deny(f"opening {path} (guard mode)")
        elif event in process_events and not spawn:
            deny(f"starting a process ({event}; max_processes=1, or guard mode)")
        elif guard:
            if event.startswith("socket."):
                deny("network access (guard mode)")
            if event in ("os.kill", "os.killpg") and len(args) >= 1:
                if not (event == "os.kill" and type(args[0]) is int and args[0] == own_pid):
                    deny(f"{event} of another process (guard mode)")

    def hook(event, args):
        if state[0] or type(event) is not str:
            return
        was = gc_enabled()
        gc_off()
        try:
            check(event, args)
        finally:
            if was:
                gc_on()

    codes.extend([hook.__code__, check.__code__, verdict.__code__, hooky.__code__,
                  deny.__code__, getframe(0).f_code])
    return hook
"""

# The launcher. Lines carrying "# site:<status>" raise the verdict event; their numbers are
# given to the hook (VERDICT_SITES), so the status is fixed by where the event was raised.
LAUNCHER = r"""
import sys
def _setup(hook_source):
    import _imp, _signal, _thread, builtins, os, resource, types
    nonce_fd, verdict_fd, mem, cpu, fsize, nproc, guard = (int(a) for a in sys.argv[1:8])
    program_path = sys.argv[8]
    nonce = b""
    while len(nonce) < NONCE_CHARS_VALUE:
        chunk = os.read(nonce_fd, NONCE_CHARS_VALUE - len(nonce))
        if not chunk:
            raise SystemExit("frame-peft sandbox: the nonce pipe closed early")
        nonce += chunk
    os.close(nonce_fd)
    with open(program_path, encoding="utf-8") as f:
        source = f.read()
    with open("program.py", "w", encoding="utf-8") as f:
        f.write(source)
    def limit(name, soft, hard):
        kind = getattr(resource, name, None)
        if kind is None:
            return
        inherited = resource.getrlimit(kind)[1]
        if inherited != resource.RLIM_INFINITY:
            soft, hard = min(soft, inherited), min(hard, inherited)
        resource.setrlimit(kind, (soft, hard))
    limit("RLIMIT_AS", mem, mem)
    limit("RLIMIT_CPU", cpu, cpu + 1)
    limit("RLIMIT_FSIZE", fsize, fsize)
    limit("RLIMIT_CORE", 0, 0)
    if nproc > 0:
        limit("RLIMIT_NPROC", nproc, nproc)
    def on_cpu_limit(signum, frame):
        raise TimeoutError("CPU time limit reached")
    _signal.signal(_signal.SIGXCPU, on_cpu_limit)
    top = sys._getframe(1)
    namespace = {"__builtins__": dict(builtins.__dict__)}  # a copy the program cannot patch
    hook_source = hook_source.replace("NONCE_PLACEHOLDER", nonce.decode("ascii"))
    exec(compile(hook_source, "<hook>", "exec"), namespace)
    make_hook = namespace.pop("make_hook")
    hook = make_hook(verdict_fd, top.f_code, top.f_globals, SITES_VALUE, bool(guard), nproc > 0)
    del nonce, namespace, hook_source, make_hook
    sys.addaudithook(hook)
    del hook
    def no_handlers(*args, **kwargs):
        raise RuntimeError("signal handlers are not allowed in the frame-peft code sandbox")
    def no_threads(*args, **kwargs):
        raise RuntimeError("threads are not allowed in the frame-peft code sandbox")
    # Modules imported before this point (here on purpose, or by a .pth file) keep their own
    # references (threading._start_new_thread, signal.signal.__wrapped__): replace them all.
    import signal, threading
    stand_ins = {id(_signal.signal): no_handlers}
    for name in ("start_new_thread", "start_new", "start_joinable_thread"):
        if hasattr(_thread, name):
            stand_ins[id(getattr(_thread, name))] = no_threads
    for module in list(sys.modules.values()):
        names = getattr(module, "__dict__", None)
        if type(names) is not dict:
            continue
        for name, value in list(names.items()):
            if id(value) in stand_ins:
                names[name] = stand_ins[id(value)]
            elif type(value) is types.FunctionType:
                wrapped = value.__dict__.get("__wrapped__")
                if id(wrapped) in stand_ins:
                    names[name] = stand_ins[id(wrapped)]
    create_builtin = _imp.create_builtin
    def guarded_create_builtin(spec):
        name = spec.name
        if type(name) is not str or name in ("_signal", "_thread"):
            raise ImportError(f"a second {name} module is not allowed in the frame-peft sandbox")
        return create_builtin(types.SimpleNamespace(name=name))
    _imp.create_builtin = guarded_create_builtin
    if guard:
        import socket, _socket
        class _NoSocket(socket.socket):
            def __init__(self, *args, **kwargs):
                raise OSError("network access is disabled in the frame-peft sandbox")
        def _blocked(*args, **kwargs):
            raise OSError("network access is disabled in the frame-peft sandbox")
        socket.socket = _socket.socket = socket.SocketType = _NoSocket
        socket.socketpair = socket.fromfd = socket.create_connection = _blocked
    sys.argv = ["program.py"]
    return source
_source = _setup(HOOK_SOURCE_VALUE)
del _setup
import builtins, traceback
def _show():
    err = sys.exc_info()[1]
    try:
        traceback.print_exc()
    except BaseException:  # a frame of the hook is in the traceback: print what can be seen
        lines, tb = ["Traceback (most recent call last):\n"], err.__traceback__
        while tb is not None:
            try:
                code = tb.tb_frame.f_code
                where = f"line {tb.tb_lineno}, in {code.co_name}"
                lines.append(f'  File "{code.co_filename}", {where}\n')
            except RuntimeError:
                lines.append("  File <the sandbox's verdict hook>\n")
            tb = tb.tb_next
        lines.append(f"{type(err).__name__}: {err}\n")
        sys.stderr.write("".join(lines))
    sys.stderr.flush()
try:
    _code = compile(_source, "program.py", "exec")
    del _source
    exec(_code, {"__name__": "__main__", "__builtins__": builtins})
except AssertionError:
    _show()
    sys.audit("frame_peft.verdict")  # site:failed
except MemoryError:
    sys.stderr.write("MemoryError\n")
    sys.stderr.flush()
    sys.audit("frame_peft.verdict")  # site:memory
except TimeoutError as _err:
    _show()
    if str(_err) == "CPU time limit reached":
        sys.audit("frame_peft.verdict")  # site:timeout
    sys.audit("frame_peft.verdict")  # site:error
except SystemExit as _err:
    sys.stderr.write(f"program called exit({_err.code!r})\n")
    sys.stderr.flush()
    sys.audit("frame_peft.verdict")  # site:error
except BaseException:
    _show()
    sys.audit("frame_peft.verdict")  # site:error
else:
    sys.stderr.flush()
    sys.audit("frame_peft.verdict")  # site:passed
"""

VERDICT_SITES: dict[int, str] = {
    number: match.group(1)
    for number, line in enumerate(LAUNCHER.splitlines(), start=1)
    if (match := re.search(r"# site:(\w+)$", line))
}

LAUNCHER = (
    LAUNCHER.replace("NONCE_CHARS_VALUE", str(NONCE_CHARS))
    .replace("SITES_VALUE", repr(VERDICT_SITES))
    .replace("HOOK_SOURCE_VALUE", repr(_HOOK_SOURCE))
)
