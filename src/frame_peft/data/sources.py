"""Read dataset rows from local files, or (online users only) from the Hugging Face hub.

Every task and training source turns rows (plain ``dict`` s with the dataset's own field names)
into :class:`~frame_peft.data.types.Example` s. This module only produces the rows:

* :func:`read_records` reads what is on disk: a ``datasets.save_to_disk`` folder (its ``.arrow``
  stream files, in the order ``state.json`` lists them), a single ``.arrow`` file, ``.json``
  (a list, or ``{"data": [...]}``), ``.jsonl``, ``.jsonl.gz`` and ``.parquet``. It needs
  ``pyarrow`` only for the Arrow and Parquet formats and never imports ``datasets``.
* :func:`load_hub` calls ``datasets.load_dataset`` (imported lazily); nothing in the offline path
  or the tests uses it.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

__all__ = ["SUPPORTED_SUFFIXES", "load_hub", "read_records"]

SUPPORTED_SUFFIXES = (".arrow", ".json", ".jsonl", ".jsonl.gz", ".json.gz", ".parquet")


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError as err:  # pragma: no cover - pyarrow is installed with the data extra
        raise ImportError(
            "reading .arrow / .parquet files needs pyarrow: pip install pyarrow"
        ) from err
    return pyarrow


def _read_arrow(path: Path) -> list[dict[str, Any]]:
    pa = _pyarrow()
    # `datasets` writes the IPC *stream* format; plain Arrow files use the *file* format.
    with pa.memory_map(str(path)) as source:
        try:
            table = pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            table = pa.ipc.open_file(source).read_all()
    return table.to_pylist()


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    pa = _pyarrow()
    return pa.parquet.read_table(str(path)).to_pylist()


def _read_json(path: Path, text: str) -> list[dict[str, Any]]:
    data = json.loads(text)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: a .json file must hold a list of records or {{'data': [...]}}, "
            f"got {type(data).__name__}"
        )
    return data


def _read_jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _saved_dataset_files(folder: Path) -> list[Path]:
    """The ``.arrow`` files of a ``save_to_disk`` folder, in the order its state lists them."""
    state = folder / "state.json"
    if state.is_file():
        names = [entry["filename"] for entry in json.loads(state.read_text())["_data_files"]]
        return [folder / name for name in names]
    if (folder / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in folder.iterdir() if p.is_dir())
        raise ValueError(
            f"{folder} is a DatasetDict folder; pass one of its split folders: {splits}"
        )
    files = sorted(folder.glob("*.arrow"))
    if not files:
        raise ValueError(
            f"{folder} is neither a datasets save_to_disk folder (no state.json) nor a folder of "
            ".arrow files"
        )
    return files


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Read every row of a local dataset file or ``save_to_disk`` folder.

    Args:
        path: a folder written by ``datasets.Dataset.save_to_disk`` (or holding ``.arrow``
            files), or a file ending in one of :data:`SUPPORTED_SUFFIXES`.

    Returns:
        The rows, in file order, as plain dicts keyed by the dataset's own column names.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the format is not one of the supported ones.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no dataset file or folder at {path}")
    if path.is_dir():
        rows: list[dict[str, Any]] = []
        for file in _saved_dataset_files(path):
            rows.extend(_read_arrow(file))
        return rows
    name = path.name.lower()
    if name.endswith(".arrow"):
        return _read_arrow(path)
    if name.endswith(".parquet"):
        return _read_parquet(path)
    if name.endswith((".jsonl.gz", ".json.gz")):
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
        return _read_jsonl(text) if name.endswith(".jsonl.gz") else _read_json(path, text)
    if name.endswith(".jsonl"):
        return _read_jsonl(path.read_text(encoding="utf-8"))
    if name.endswith(".json"):
        return _read_json(path, path.read_text(encoding="utf-8"))
    raise ValueError(
        f"{path}: unsupported dataset format; expected a save_to_disk folder or a file ending in "
        f"one of {', '.join(SUPPORTED_SUFFIXES)}"
    )


def load_hub(dataset_id: str, config: str | None, split: str) -> list[dict[str, Any]]:
    """Download ``dataset_id`` / ``config`` / ``split`` from the hub with ``datasets``.

    For online users only: the offline path reads the shipped assets through
    :func:`read_records`. ``datasets`` is imported here, not at module import.

    Raises:
        ImportError: ``datasets`` is not installed (the message says what to pip install).
        ConnectionError: the hub could not be reached or the dataset could not be built; the
            message names the dataset and the offline alternatives.
    """
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"loading {dataset_id!r} from the hub needs the `datasets` package: pip install "
            "datasets (offline, use source='offline' for the shipped data or a local file path)"
        ) from err
    where = f"{dataset_id!r}" + (f" (config {config!r})" if config else "") + f" split {split!r}"
    try:
        dataset = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as err:  # datasets raises many types for "offline" and "not found"
        raise ConnectionError(
            f"could not load {where} from the hub: {type(err).__name__}: {err}. Without network "
            "access, use source='offline' (shipped assets) or pass a local file path."
        ) from err
    return [dict(row) for row in dataset]
