"""benchmarks/spectral.py at --quick (tiny random Llama): the cells, the page and its verdicts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import spectral as bench_spectral


def test_spectral_benchmark_quick_writes_page_json_and_figures(tmp_path):
    out, work = tmp_path / "spectral", tmp_path / "work"
    argv = ["--quick", "--seeds", "2", "--steps", "2", "--out", str(out), "--work-dir", str(work)]
    assert bench_spectral.main(argv) == 0
    page = out.with_suffix(".md").read_text()
    data = json.loads(out.with_suffix(".json").read_text())
    assert "## Claims and verdicts" in page and "tasks have distinct frequency" in page
    assert len(data["cells"]) == 2 * 2 * 2  # methods × tasks × seeds
    for method in ("lora", "fouriermoe"):
        assert data["tests"][method]["tasks"]["labelings"] == 6  # C(4, 2)
    assert set(data["routing"]) == {"arc_easy", "reasoning_gym_math"}
    for name in data["figures"].values():
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
    # resumable: a second run trains nothing and gives the same numbers
    before = {p: p.stat().st_mtime for p in work.glob("cells/*/cell.json")}
    assert bench_spectral.main(argv) == 0
    assert before == {p: p.stat().st_mtime for p in work.glob("cells/*/cell.json")}
    again = json.loads(out.with_suffix(".json").read_text())
    assert again["tests"] == data["tests"]
