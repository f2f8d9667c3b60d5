"""Nothing a run wrote is lost by a kill: directory swaps, the final adapter, log.jsonl (#16 §5).

A SIGKILL is simulated by running the step in a subprocess whose ``os.replace`` (or the first
write of a log rewrite) calls ``os._exit(137)`` at the exact point; the next start must recover.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import frame_peft as fp
from _models import tiny_llama
from _training_data import RandomTokens, frame_config
from frame_peft._files import (
    readable_directory,
    recover_directory,
    replace_directory,
    temp_directory,
)
from frame_peft.training import TrainConfig, Trainer

TESTS = Path(__file__).parent
FILES_PY = TESTS.parent / "src" / "frame_peft" / "_files.py"

# Prepended to every subprocess: dies (exit 137, as after SIGKILL) when something is renamed
# to a path whose last component is $KILL_RENAMING_TO.
KILLER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    _real_replace = os.replace
    def _replace(src, dst, *a, **k):
        if os.path.basename(os.fspath(dst)) == os.environ.get("KILL_RENAMING_TO"):
            os._exit(137)
        return _real_replace(src, dst, *a, **k)
    os.replace = _replace
""").format(tests=str(TESTS))


def run_killed(code: str, kill_renaming_to: str | None = None) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if kill_renaming_to is not None:
        env["KILL_RENAMING_TO"] = kill_renaming_to
    done = subprocess.run(
        [sys.executable, "-c", KILLER + textwrap.dedent(code)], env=env, timeout=300,
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode in (0, 137), done.stderr[-3000:]
    return done.returncode


SWAP = """
    import importlib.util
    spec = importlib.util.spec_from_file_location("files", {files!r})
    files = importlib.util.module_from_spec(spec); spec.loader.exec_module(files)
    from pathlib import Path
    final = Path({final!r})
    tmp = files.temp_directory(final)
    tmp.mkdir()
    (tmp / "weights").write_text("new")
    (tmp / "meta").write_text("new")
    files.replace_directory(tmp, final)
"""


def contents(folder: Path) -> dict[str, str]:
    """A folder's files (the swap's ``.complete`` marker aside)."""
    return {p.name: p.read_text() for p in sorted(folder.iterdir()) if p.name != ".complete"}


@pytest.mark.parametrize("kill_at", ["v.old", "v", None])
def test_a_killed_directory_swap_leaves_one_whole_version_and_recovers(tmp_path, kill_at):
    final = tmp_path / "v"
    final.mkdir()
    (final / "weights").write_text("old")
    (final / "meta").write_text("old")
    rc = run_killed(SWAP.format(files=str(FILES_PY), final=str(final)), kill_at)
    assert rc == (0 if kill_at is None else 137)
    # a reader finds a whole version without changing anything
    seen = contents(readable_directory(final))
    assert seen in ({"weights": "old", "meta": "old"}, {"weights": "new", "meta": "new"})
    recover_directory(final)  # the writer's next start
    assert contents(final) == seen  # the version a reader saw is the one that stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]  # no .tmp / .old left


def test_recover_deletes_an_incomplete_temp_and_restores_the_old(tmp_path):
    final = tmp_path / "adapter"
    (tmp_path / "adapter.old").mkdir()
    (tmp_path / "adapter.old" / "w").write_text("old")
    tmp = temp_directory(final)
    tmp.mkdir()
    (tmp / "w").write_text("half")  # no .complete marker: it was still being written
    assert readable_directory(final) == tmp_path / "adapter.old"
    assert "restored adapter" in recover_directory(final)
    assert contents(final) == {"w": "old"} and not tmp.exists()
    with pytest.raises(ValueError, match="must be"):
        replace_directory(tmp_path / "elsewhere", final)


def run_config(out, **kw) -> TrainConfig:
    base = dict(
        output_dir=str(out), max_steps=2, per_device_batch_size=2, lr=1e-2, order_lr=1e-2,
        save_every=1, keep_checkpoints=2, progress=False, report_to="none", log_every=1, seed=7,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def build():
    model = tiny_llama()
    torch.manual_seed(0)
    return fp.inject(model, frame_config())


TRAIN = """
    import torch, frame_peft as fp
    from _models import tiny_llama
    from _training_data import RandomTokens, frame_config
    from frame_peft.training import TrainConfig, Trainer
    model = tiny_llama(); torch.manual_seed(0); fp.inject(model, frame_config())
    cfg = TrainConfig(output_dir={out!r}, max_steps={steps}, per_device_batch_size=2, lr=1e-2,
                      order_lr=1e-2, save_every=1, keep_checkpoints=2, progress=False,
                      report_to="none", log_every=1, seed=7)
    Trainer(model, RandomTokens(16), cfg).train()
"""


def test_killed_final_adapter_export_is_restored_by_the_next_train(tmp_path):
    out = tmp_path / "run"
    Trainer(build(), RandomTokens(16), run_config(out)).train()
    # continue to step 3; killed after adapter -> adapter.old, before the new one is in place
    rc = run_killed(TRAIN.format(out=str(out), steps=3), kill_renaming_to="adapter")
    assert rc == 137 and not (out / "adapter").exists() and (out / "checkpoint-3").is_dir()
    with pytest.warns(UserWarning, match="adapter"):
        result = Trainer(build(), RandomTokens(16), run_config(out, max_steps=3)).train()
    assert result.global_step == 3 and result.adapter_path == out / "adapter"
    # the final adapter is the one of the last checkpoint, and it loads
    got = fp.adapter_state_dict(fp.load_adapter(tiny_llama(), out / "adapter"))
    want = fp.adapter_state_dict(fp.load_adapter(tiny_llama(), out / "checkpoint-3" / "adapter"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert not any(p.name.endswith((".tmp", ".old")) for p in out.iterdir())


def test_killed_checkpoint_swap_is_recovered_on_resume(tmp_path):
    out = tmp_path / "run"
    Trainer(build(), RandomTokens(16), run_config(out)).train()
    # a swap of checkpoint-2 killed between its two renames: only checkpoint-2.old is left
    os.replace(out / "checkpoint-2", out / "checkpoint-2.old")
    result = Trainer(build(), RandomTokens(16), run_config(out, max_steps=3)).train()
    assert result.resumed_from == out / "checkpoint-2" and result.global_step == 3


LOG_REWRITE = """
    import os, pathlib
    def die_after_truncating(self, *a, **k):  # the old code rewrote the log with write_text
        open(self, "w").close(); os._exit(137)
    pathlib.Path.write_text = die_after_truncating
    def die(fd): os._exit(137)  # the new code cuts the file, then fsyncs: die right there
    os.fsync = die
    from frame_peft.training.logging import RunLogger
    RunLogger({out!r}, 10, initial_step=3, progress=False, report_to=[])
"""


def test_a_kill_while_resuming_keeps_the_earlier_log_records(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 7)]
    (out / "log.jsonl").write_text("\n".join(lines) + '\n{"step": 7, "lo')  # a torn last line
    assert run_killed(LOG_REWRITE.format(out=str(out))) == 137
    kept = (out / "log.jsonl").read_text().splitlines()
    assert kept[:3] == lines[:3]  # the steps up to the resumed one survive the kill
    # the next start finishes the cut: steps 1..3, whole lines, ready to append to
    from frame_peft.training.logging import RunLogger

    RunLogger(out, 10, initial_step=3, progress=False, report_to=[]).close()
    assert (out / "log.jsonl").read_text() == "\n".join(lines[:3]) + "\n"


PRUNE_KILLED = """
    import os, shutil
    from pathlib import Path
    _rmtree = shutil.rmtree
    def rmtree_killed(path, *a, **k):  # killed half way through deleting checkpoint-1
        if Path(path).name in ("checkpoint-1", "checkpoint-1.deleted"):
            (Path(path) / "optimizer.pt").unlink()
            os._exit(137)
        return _rmtree(path, *a, **k)
    shutil.rmtree = rmtree_killed
"""


def test_a_kill_while_pruning_leaves_no_half_deleted_checkpoint(tmp_path):
    from frame_peft.training import list_checkpoints

    out = tmp_path / "run"
    assert run_killed(PRUNE_KILLED + TRAIN.format(out=str(out), steps=3)) == 137
    # checkpoint-1 was being pruned after checkpoint-3 was written: it is not listed as complete
    assert [step for step, _ in list_checkpoints(out)] == [2, 3]
    with pytest.warns(UserWarning, match="pruned checkpoint"):
        result = Trainer(build(), RandomTokens(16), run_config(out, max_steps=3)).train()
    assert result.resumed_from == out / "checkpoint-3"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint-2", "checkpoint-3",
    ]  # fmt: skip
