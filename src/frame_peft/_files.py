"""Small file helpers shared by the adapter format, the asset cache and run directories.

Every JSON file the library writes goes through :func:`write_json` (one atomic writer, its
formatting chosen per file format by its arguments) and every JSON-lines log that must survive a
crash mid-write through :func:`append_json_line`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "append_json_line",
    "atomic_write_bytes",
    "file_sha256",
    "readable_directory",
    "recover_directories",
    "recover_directory",
    "replace_directory",
    "temp_directory",
    "write_json",
]


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    A temp file in the same folder is written, flushed to disk, then renamed over ``path``. The
    file gets the usual permissions (0666 minus the umask), not ``mkstemp``'s private 0600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write_bytes`); return the
    path. A crash or a failed encode leaves the old file whole."""
    path = Path(path)
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def write_json(
    path: str | os.PathLike,
    obj: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = False,
    default: Callable[[Any], Any] | None = None,
    allow_nan: bool = True,
    newline: bool = True,
) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (:func:`atomic_write_bytes`); return the path.

    The text is ``json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default,
    allow_nan=allow_nan)``, plus ``"\n"`` when ``newline``: each file format keeps its own
    formatting through these arguments, so its bytes do not depend on who writes it.
    """
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default, allow_nan=allow_nan)
    path = Path(path)
    atomic_write_bytes(path, (text + "\n" if newline else text).encode())
    return path


def write_json_lines(path: str | os.PathLike, records: Iterable[Any]) -> Path:
    """Write a whole JSON-lines file atomically: one ``json.dumps(record, ensure_ascii=False)``
    per line (non-ASCII text kept readable); return the path."""
    lines = [json.dumps(record, ensure_ascii=False) + "\n" for record in records]
    return write_text(path, "".join(lines))


def append_json_line(path: str | os.PathLike, record: Any) -> None:
    """Append ``json.dumps(record)`` and a newline to the JSON-lines file ``path``, atomically:
    the file is rewritten whole (:func:`atomic_write_bytes`), so a crash leaves the old lines or
    the old lines plus the new one, never half a line. Meant for short logs (a line per event)."""
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    atomic_write_bytes(path, old + (json.dumps(record) + "\n").encode())


# -- directories replaced as a whole -------------------------------------------------------------
#
# rename(2) cannot replace a non-empty directory, so a directory swap takes two renames:
#
#   1. write everything into ``X.tmp/``, then the marker ``X.tmp/.complete`` last; fsync all
#   2. rename ``X`` -> ``X.old``                  (skipped when there is no ``X``)
#   3. rename ``X.tmp`` -> ``X``
#   4. delete ``X.old``
#
# A process killed anywhere in between leaves at least one complete version on disk, which
# :func:`recover_directory` puts back in place (the writer calls it on its next start) and
# :func:`readable_directory` finds without changing anything (for readers).

COMPLETE_MARKER = ".complete"


def temp_directory(final: str | os.PathLike) -> Path:
    """The folder a new version of ``final`` is written into before :func:`replace_directory`
    (``<final>.tmp``, beside it: a rename within one filesystem)."""
    final = Path(final)
    return final.with_name(final.name + ".tmp")


def old_directory(final: str | os.PathLike) -> Path:
    """Where the previous version of ``final`` waits during a swap (``<final>.old``)."""
    final = Path(final)
    return final.with_name(final.name + ".old")


def fsync_directory(path: str | os.PathLike) -> None:
    """fsync a directory entry list (after a rename), where the filesystem allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems refuse to open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder under ``root`` (so a rename afterwards publishes whole data)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_directory(dirpath)


def _is_complete(tmp: Path) -> bool:
    return (tmp / COMPLETE_MARKER).is_file()


def replace_directory(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Make the fully written folder ``tmp`` the new ``final``, replacing any old ``final``.

    ``tmp`` must be :func:`temp_directory` of ``final`` (so a later :func:`recover_directory`
    finds it). The marker ``.complete`` is written into ``tmp`` last and everything is fsynced
    before the first rename; a kill at any point leaves the old or the new version recoverable
    (never neither): see :func:`recover_directory`. Returns ``final``.
    """
    tmp, final = Path(tmp), Path(final)
    if tmp != temp_directory(final):
        raise ValueError(f"replace_directory: {tmp} must be {temp_directory(final)}")
    if not tmp.is_dir():
        raise FileNotFoundError(f"replace_directory: {tmp} does not exist")
    atomic_write_bytes(tmp / COMPLETE_MARKER, b"")
    fsync_tree(tmp)
    old = old_directory(final)
    if final.exists():
        if old.exists():  # a leftover of an earlier swap whose final is in place: stale
            _remove(old)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_directory(final.parent)
    (final / COMPLETE_MARKER).unlink(missing_ok=True)
    if old.exists():
        _remove(old)
    return final


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def recover_directory(final: str | os.PathLike) -> str | None:
    """Finish or undo a :func:`replace_directory` of ``final`` that a killed process left half
    done; return what was done (None when there was nothing to do). Only the writer of
    ``final`` may call it (on its next start), never while another process writes it.

    * ``final`` missing, complete ``final.tmp`` there: the swap is finished (tmp -> final).
    * ``final`` missing, ``final.old`` there: the old version is put back.
    * ``final`` there: a leftover ``final.old`` and any ``final.tmp`` are deleted (the swap
      had not started, or had finished but for the clean-up).
    * an incomplete ``final.tmp`` (no marker) is always deleted: it was still being written.
    """
    final = Path(final)
    tmp, old = temp_directory(final), old_directory(final)
    done = None
    if tmp.exists() and not (tmp.is_dir() and _is_complete(tmp)):
        _remove(tmp)
        done = f"removed the incomplete {tmp.name}"
    if not final.exists():
        if tmp.exists():
            os.replace(tmp, final)
            (final / COMPLETE_MARKER).unlink(missing_ok=True)
            done = f"finished replacing {final.name} with the complete {tmp.name}"
        elif old.exists():
            os.replace(old, final)
            done = f"restored {final.name} from {old.name} (an interrupted replacement)"
        fsync_directory(final.parent)
    for leftover in (tmp, old):
        if leftover.exists() and final.exists():
            _remove(leftover)
            done = done or f"removed the leftover {leftover.name}"
    return done


def readable_directory(final: str | os.PathLike) -> Path:
    """The complete version of ``final`` to read, without changing anything on disk: ``final``
    itself, or, while a swap is interrupted, the complete ``final.tmp`` or ``final.old``.
    ``final`` (which may not exist) when there is none, so the caller's error names it."""
    final = Path(final)
    if final.exists():
        return final
    tmp, old = temp_directory(final), old_directory(final)
    if tmp.is_dir() and _is_complete(tmp):
        return tmp
    if old.is_dir():
        return old
    return final


def recover_directories(root: str | os.PathLike, owned: Callable[[str], bool]) -> list[str]:
    """:func:`recover_directory` for every folder of ``root`` whose name ``owned(name)`` accepts
    and which has a ``.tmp``/``.old`` sibling left over from an interrupted swap; return what
    was done (the writer's start-up step). ``owned`` keeps the user's own ``*.old`` folders
    out of it."""
    root = Path(root)
    if not root.is_dir():
        return []
    finals = {
        p.name[: -len(suffix)]
        for p in root.iterdir()
        for suffix in (".tmp", ".old")
        if p.name.endswith(suffix) and p.is_dir() and owned(p.name[: -len(suffix)])
    }
    return [msg for name in sorted(finals) if (msg := recover_directory(root / name))]
