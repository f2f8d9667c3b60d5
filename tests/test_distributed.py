"""torchrun with 2 CPU processes (gloo): DDP and FSDP2 train exactly like one process.

Each test launches ``tests/_ddp_worker.py`` under ``python -m torch.distributed.run
--nproc_per_node 2`` and compares what both ranks hold with a single-process run of the same
global batch and seed: LoRA (2 ranks x batch 2 vs one batch of 4) and FRAME with its aux loss
(2 ranks x batch 2 vs 2 accumulated micro-batches of 2: the same per-micro-batch balance losses).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import frame_peft as fp
from _ddp_worker import run_config
from _models import tiny_llama
from _training_data import RandomTokens, frame_config, lora_config, randomise_lora_b
from frame_peft.core.serialization import read_adapter
from frame_peft.training import Trainer

WORKER = Path(__file__).resolve().parent / "_ddp_worker.py"
# single-process equivalent of 2 ranks x per-device batch 2: (per_device_batch_size, accumulation)
SINGLE = {"lora": (lora_config, 4, 1), "frame": (frame_config, 2, 2)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(mode: str, out: Path) -> None:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(WORKER), mode,
        str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    if proc.returncode != 0:
        pytest.fail(f"torchrun {mode} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-6000:]}")  # fmt: skip


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """{method: (final adapter tensors, adapter directory)} of one-process reference runs."""
    root = tmp_path_factory.mktemp("single")
    out = {}
    for method, (make_config, batch, accum) in SINGLE.items():
        model = tiny_llama()
        fp.inject(model, make_config())
        randomise_lora_b(model)
        cfg = dataclasses.replace(
            run_config(root / method, "none"),
            per_device_batch_size=batch, gradient_accumulation_steps=accum,
        )  # fmt: skip
        result = Trainer(model, RandomTokens(16), cfg).train()
        out[method] = ({k: v.detach().clone() for k, v in fp.adapter_state_dict(model).items()},
                       result.adapter_path)  # fmt: skip
    return out


def check_against_single_process(out: Path, single) -> None:
    for method, (expected, single_dir) in single.items():
        rank0 = load_file(str(out / method / "rank0.safetensors"))
        rank1 = load_file(str(out / method / "rank1.safetensors"))
        assert rank0.keys() == rank1.keys() == expected.keys()
        for key in expected:
            assert torch.equal(rank0[key], rank1[key]), f"{method} {key}: ranks differ"
            torch.testing.assert_close(rank0[key], expected[key], rtol=1e-5, atol=1e-6)
        # The adapter written during the distributed run equals a single-process save.
        meta, saved = read_adapter(out / method / "run" / "adapter")
        single_meta, single_saved = read_adapter(single_dir)
        assert meta == single_meta  # the adapter configs (hashes of the weights checked inside)
        for key in single_saved:
            assert torch.equal(saved[key], rank0[key]), f"{method} {key}: file != memory"
            torch.testing.assert_close(saved[key], single_saved[key], rtol=1e-5, atol=1e-6)
        state = json.loads(
            (out / method / "run" / "checkpoint-3" / "trainer_state.json").read_text()
        )
        assert state["world_size"] == 2 and state["global_batch_size"] == 4
    # FRAME resumed from its step-2 checkpoint by a new model ends exactly where the run ended.
    resumed = load_file(str(out / "frame_resumed" / "rank0.safetensors"))
    uninterrupted = load_file(str(out / "frame" / "rank0.safetensors"))
    for key, value in uninterrupted.items():
        assert torch.equal(resumed[key], value), f"resumed {key}"


def test_ddp_two_processes_match_one(tmp_path, single_process):
    torchrun("ddp", tmp_path)
    check_against_single_process(tmp_path, single_process)
    # the order scan: both ranks gathered the same statistics and made the same jumps
    rank0 = load_file(str(tmp_path / "frame_scan" / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "frame_scan" / "rank1.safetensors"))
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), f"order scan {key}: ranks differ"
    scans = (tmp_path / "frame_scan" / "run" / "scans.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in scans] == [1, 2]
    assert json.loads(scans[0])["num_jumps"] == 6 * 4  # first scan: every expert of 6 modules
    assert sorted(p.name for p in (tmp_path / "frame" / "run" / "checkpoint-3").iterdir()) == [
        "adapter", "optimizer.pt", "rng-rank0.pt", "rng-rank1.pt", "scheduler.pt",
        "trainer_state.json",
    ]  # fmt: skip


def test_fsdp_two_processes_match_one(tmp_path, single_process):
    torchrun("fsdp", tmp_path)
    check_against_single_process(tmp_path, single_process)
    state = json.loads(
        (tmp_path / "frame" / "run" / "checkpoint-3" / "trainer_state.json").read_text()
    )
    assert state["distributed"] == "fsdp"


@pytest.mark.slow  # about 13 s; the same worker as the DDP test, started by accelerate
def test_accelerate_launch_runs_the_same_ddp_training(tmp_path, single_process):
    """``accelerate launch --cpu`` starts a single process; ``--multi_gpu`` on a machine without
    GPUs starts torchrun with 2 CPU processes, which the Trainer runs as DDP over gloo."""
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip("accelerate is not installed in this environment")
    cmd = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
        str(free_port()), str(WORKER), "ddp", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-6000:]
    check_against_single_process(tmp_path, single_process)
