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
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["append_json_line", "atomic_write_bytes", "file_sha256", "write_json"]


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


def append_json_line(path: str | os.PathLike, record: Any) -> None:
    """Append ``json.dumps(record)`` and a newline to the JSON-lines file ``path``, atomically:
    the file is rewritten whole (:func:`atomic_write_bytes`), so a crash leaves the old lines or
    the old lines plus the new one, never half a line. Meant for short logs (a line per event)."""
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    atomic_write_bytes(path, old + (json.dumps(record) + "\n").encode())
