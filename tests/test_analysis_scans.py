"""`frame-peft analyze` of a FRAME run with the order scan: the scans in the JSON, the report and
the trajectory figure (plus the scan log reader on its own)."""

from __future__ import annotations

import json

import pytest

from _runs import tiny_recipe, train_tiny_run
from frame_peft.analysis import read_scan_log
from frame_peft.analysis.run import analyze_run

SCAN = {"num_experts": 3, "top_k": 1, "rank": 2, "order_search": "scan", "scan_at": [0.25, 0.5],
        "scan_batches": 2, "scan_tokens": 32}  # fmt: skip


def test_analysis_shows_the_scans_of_a_run(tmp_path):
    recipe = tiny_recipe(tmp_path, max_steps=4, extra_adapters={"frame": SCAN})
    run_dir = train_tiny_run(recipe, "frame", tmp_path / "runs" / "frame")
    assert (run_dir / "scans.jsonl").is_file()
    report = analyze_run([run_dir], tmp_path / "out", progress=False)
    data = json.loads((tmp_path / "out" / "analysis.json").read_text())
    scans = data["runs"][0]["orders"]["scans"]
    assert [s["step"] for s in scans] == [1, 2] and [s["first"] for s in scans] == [True, False]
    # the first scan moves every expert that recorded tokens; this rescan comes one step after
    # the experts were reset, before they contribute: it makes no decision and says why
    assert scans[0]["num_jumps"] == scans[0]["experts"] > 0
    assert scans[1]["num_jumps"] == 0 and "no decision" in scans[1]["note"]
    html = report.read_text()
    assert "Order scans" in html and "experts moved" in html
    assert any("trajectories" in p.name for p in (tmp_path / "out").glob("*.png"))


def test_scan_log_reader_tolerates_a_torn_last_line_only(tmp_path):
    record = {"step": 3, "first": True, "modules": [{"experts": [
        {"jumped": True, "order_after": 0.0}, {"jumped": True, "order_after": 0.4}]}]}  # fmt: skip
    path = tmp_path / "scans.jsonl"
    path.write_text(json.dumps(record) + "\n" + '{"step": 5, "fi')
    assert read_scan_log(path) == [
        {"step": 3, "first": True, "num_jumps": 2, "experts": 2, "at_zero": 1, "note": ""}
    ]
    path.write_text('{"step": 5, "fi\n' + json.dumps(record) + "\n")
    with pytest.raises(ValueError, match="line 1"):
        read_scan_log(path)
