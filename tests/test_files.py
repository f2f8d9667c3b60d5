"""frame_peft._files: atomic writes keep the usual permissions."""

from __future__ import annotations

import os
import stat

from frame_peft._files import atomic_write_bytes


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
