"""frame_peft._files and frame_peft._tables: atomic writes keep the usual permissions; the one
JSON writer keeps each format's bytes; the one markdown-table writer."""

from __future__ import annotations

import json
import os
import stat

import pytest

from frame_peft._files import (
    append_json_line,
    atomic_write_bytes,
    write_json,
    write_json_lines,
    write_text,
)
from frame_peft._tables import markdown_table


def test_atomic_write_replaces_whole_file_with_umask_permissions(tmp_path):
    path = tmp_path / "run.json"
    old = os.umask(0o022)
    try:
        atomic_write_bytes(path, b"first")
        atomic_write_bytes(path, b"second")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's private 0600
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temp file left behind


def test_write_json_formats_are_reachable_and_atomic(tmp_path):
    obj = {"b": 1, "a": [0.5, None], "p": tmp_path}
    path = write_json(tmp_path / "x.json", obj, default=str)
    assert path.read_text() == json.dumps(obj, indent=2, default=str) + "\n"
    write_json(path, {"b": 1, "a": 2}, indent=1, sort_keys=True, newline=False)
    assert path.read_bytes() == b'{\n "a": 2,\n "b": 1\n}'
    with pytest.raises(ValueError):
        write_json(path, {"x": float("nan")}, allow_nan=False)
    assert path.read_bytes() == b'{\n "a": 2,\n "b": 1\n}'  # a failed write leaves the old file
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


@pytest.fixture
def replace_fails(monkeypatch):
    """A crash between writing the temp file and renaming it over the old one."""

    def crash(src, dst):
        raise OSError("disk went away")

    monkeypatch.setattr(os, "replace", crash)


def test_write_text_is_utf8_and_a_failed_replace_keeps_the_old_file(tmp_path, request):
    path = write_text(tmp_path / "eval.md", "| tâche | acc |\n")
    assert path.read_bytes() == "| tâche | acc |\n".encode()
    request.getfixturevalue("replace_fails")
    with pytest.raises(OSError, match="disk went away"):
        write_text(path, "half")
    assert path.read_text() == "| tâche | acc |\n"
    assert [p.name for p in tmp_path.iterdir()] == ["eval.md"]  # the temp file was removed


def test_save_figure_writes_atomically(tmp_path, request):
    from frame_peft.analysis.plotting import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "plot.png")
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    request.getfixturevalue("replace_fails")
    with pytest.raises(OSError, match="disk went away"):
        save_figure(fig, path)
    assert path.read_bytes() == before  # the new figure never half-replaced the old one
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_write_json_lines_keeps_non_ascii(tmp_path):
    path = write_json_lines(tmp_path / "p.jsonl", ({"i": i, "t": "é"} for i in range(2)))
    assert path.read_text(encoding="utf-8") == '{"i": 0, "t": "é"}\n{"i": 1, "t": "é"}\n'


def test_append_json_line(tmp_path):
    path = tmp_path / "log.jsonl"
    append_json_line(path, {"step": 1})
    append_json_line(path, {"step": 2})
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_markdown_table_alignment_and_cells():
    table = markdown_table(["a", "b", "c"], [[1, 2.5, None]], align="lr", fmt=repr)
    assert table == "| a | b | c |\n|---|---:|---|\n| 1 | 2.5 | None |"
    assert markdown_table(["x"], []) == "| x |\n|---|"
    with pytest.raises(ValueError, match="align"):
        markdown_table(["x"], [], align="c")
