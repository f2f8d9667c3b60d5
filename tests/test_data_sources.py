"""Tests for frame_peft.data.sources: local readers and the lazy hub loader."""

from __future__ import annotations

import gzip
import json
import sys
import types

import pytest

from fixtures.data_assets import write_jsonl_gz, write_saved_dataset
from frame_peft.data.sources import load_hub, read_records

ROWS = [{"q": f"question {i}", "label": i % 3, "choices": {"text": ["a", "b"]}} for i in range(7)]


def test_saved_dataset_follows_state_order(tmp_path):
    folder = write_saved_dataset(tmp_path / "ds" / "validation", ROWS, shards=3)
    # The shards' names sort the other way round from the state's order.
    assert sorted(p.name for p in folder.glob("*.arrow"))[0] == "data-00000-of-00003.arrow"
    assert read_records(folder) == ROWS


def test_single_arrow_stream_and_file_formats(tmp_path):
    import pyarrow as pa

    folder = write_saved_dataset(tmp_path / "ds", ROWS)
    stream = next(folder.glob("*.arrow"))
    assert read_records(stream) == ROWS
    table = pa.Table.from_pylist(ROWS)
    file_path = tmp_path / "file_format.arrow"
    with pa.OSFile(str(file_path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    assert read_records(file_path) == ROWS


def test_folder_of_arrow_files_without_state(tmp_path):
    folder = write_saved_dataset(tmp_path / "ds", ROWS)
    (folder / "state.json").unlink()
    assert read_records(folder) == ROWS


def test_json_jsonl_gz_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    (tmp_path / "b.json").write_text(json.dumps({"data": ROWS}))
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    write_jsonl_gz(tmp_path / "d.jsonl.gz", ROWS)
    (tmp_path / "e.json.gz").write_bytes(gzip.compress(json.dumps(ROWS).encode()))
    pq.write_table(pa.Table.from_pylist(ROWS), str(tmp_path / "f.parquet"))
    for name in ["a.json", "b.json", "c.jsonl", "d.jsonl.gz", "e.json.gz", "f.parquet"]:
        assert read_records(tmp_path / name) == ROWS, name


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dataset file"):
        read_records(tmp_path / "missing.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"unsupported dataset format.*\.jsonl"):
        read_records(tmp_path / "x.csv")
    (tmp_path / "obj.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="list of records"):
        read_records(tmp_path / "obj.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="neither a datasets save_to_disk folder"):
        read_records(empty)
    dsdict = tmp_path / "dict"
    write_saved_dataset(dsdict / "validation", ROWS)
    (dsdict / "dataset_dict.json").write_text(json.dumps({"splits": ["validation"]}))
    with pytest.raises(ValueError, match=r"DatasetDict folder.*\['validation'\]"):
        read_records(dsdict)


def test_load_hub_without_datasets_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"pip install datasets.*source='offline'"):
        load_hub("allenai/ai2_arc", "ARC-Easy", "validation")


def test_load_hub_offline_failure_names_dataset_and_alternatives(monkeypatch):
    def load_dataset(*args, **kwargs):
        raise OSError("Couldn't reach 'allenai/ai2_arc' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(ConnectionError, match=r"'allenai/ai2_arc' \(config 'ARC-Easy'\).*local"):
        load_hub("allenai/ai2_arc", "ARC-Easy", "validation")


def test_load_hub_returns_plain_rows(monkeypatch):
    calls = []

    def load_dataset(dataset_id, config, split):
        calls.append((dataset_id, config, split))
        return iter(ROWS)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert load_hub("x/y", None, "test") == ROWS
    assert calls == [("x/y", None, "test")]


# --- the papers' training sets (hub rows stand in through a fake load_hub) --------------------

TRAINING_ROWS = {
    "commonsense170k": {"instruction": "Please answer: is ice cold?\nAnswer format: true/false",
                        "input": "", "output": "the correct answer is true", "answer": "true"},
    "metamathqa": {"query": "What is 2 + 3?", "response": "2 + 3 = 5.\nThe answer is: 5",
                   "type": "GSM_Rephrased", "original_question": "What is 2 + 3?"},
    "math10k": {"instruction": "Tom has 2 and gets 3. How many?", "input": "",
                "output": "2 + 3 = 5", "answer": "5.0"},
    "codealpaca": {"instruction": "Write a function that adds.", "input": "a and b",
                   "output": "def add(a, b):\n    return a + b"},
    "mmlu_auxiliary_train": {"train": {"question": "Sky colour?", "subject": "",
                                       "choices": ["red", "blue", "green", "black"], "answer": 1}},
}  # fmt: skip


def test_training_sources_render_rows(monkeypatch, tmp_path):
    import frame_peft.data.training_sources as ts

    hub_of = {s.hub.dataset_id: name for name, s in ts.TRAINING_SOURCES.items() if s.hub}
    monkeypatch.setattr(
        ts, "load_hub", lambda dataset_id, config, split: [TRAINING_ROWS[hub_of[dataset_id]]]
    )
    (cs,) = ts.load_training_source("commonsense170k")
    assert cs.prompt.startswith("Below is an instruction") and cs.prompt.endswith("### Response:\n")
    assert "### Input" not in cs.prompt and cs.target == "the correct answer is true"
    (mm,) = ts.load_training_source("metamathqa")
    assert mm.prompt == "Question: What is 2 + 3?\nAnswer:" and mm.answer == "5"
    assert mm.target.endswith("The answer is: 5\n#### 5")
    (code,) = ts.load_training_source("codealpaca")
    assert "### Input:\na and b\n\n### Response:\n" in code.prompt
    (aux,) = ts.load_training_source("mmlu_auxiliary_train")
    assert aux.prompt.startswith("The following is a multiple choice question.\n\nSky colour?")
    assert aux.choices == (" A", " B", " C", " D") and aux.target == " B"
    with pytest.raises(ValueError, match="no hub copy; pass its local file path"):
        ts.load_training_source("math10k")
    (tmp_path / "math_10k.json").write_text(json.dumps([TRAINING_ROWS["math10k"]] * 3))
    math10k = ts.load_training_source("math10k", source=tmp_path / "math_10k.json", limit=2)
    assert len(math10k) == 2 and math10k[0].target == " 2 + 3 = 5\n#### 5"
    with pytest.raises(ValueError, match="unknown training source 'alpaca'"):
        ts.load_training_source("alpaca")
