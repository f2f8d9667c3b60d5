"""Analysis numbers: module names, FRAME's orders and the decorrelation of experts.

Known answers: identical experts (cosine 1, overlap 1), disjoint coordinate blocks (0, 0), the
dense ΔW of FRAME (cosines and subspaces from explicit matrices), coherence 1/√n for orders 0 and
1, and the per-pair :func:`frame_peft.transforms.coherence`. Routing statistics are in
test_analysis_routing.py.
"""

from __future__ import annotations

import json
import statistics

import pytest
import torch

import frame_peft as fp
from _models import mlp, tiny_gpt2, tiny_llama
from _training_data import RandomTokens, frame_config
from frame_peft.analysis.decorrelation import decorrelation
from frame_peft.analysis.modules import ModuleInfo, group_by_kind, module_info
from frame_peft.analysis.orders import order_statistics, read_order_log
from frame_peft.training import TrainConfig, Trainer
from frame_peft.transforms import coherence

QV = ["q_proj", "v_proj"]


def adapters(model) -> dict:
    return {name: layer.adapter for name, layer in fp.adapted_layers(model).items()}


def mat(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def randomise(model, seed: int = 0) -> None:
    """Non-zero B factors / spectral coefficients, so every expert has an update."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and (name.endswith(".B") or ".coef_" in name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


# -- module names -------------------------------------------------------------------------------


def test_module_info_and_group_by_kind():
    assert module_info("model.layers.12.self_attn.q_proj") == ModuleInfo(
        "model.layers.12.self_attn.q_proj", 12, "q_proj"
    )
    assert module_info("lm_head") == ModuleInfo("lm_head", None, "lm_head")
    names = [n for n in fp.adapted_layers(fp.inject(tiny_gpt2(), fp.LoRAConfig()))]
    groups = group_by_kind(reversed(names))
    assert list(groups) == ["c_attn", "c_fc", "c_proj"]
    assert [i.layer for i in groups["c_attn"]] == [0, 1]
    # GPT-2 has attn.c_proj and mlp.c_proj in every layer: same kind, told apart by name.
    assert [(i.layer, i.name.split(".")[-2]) for i in groups["c_proj"]] == [
        (0, "attn"), (0, "mlp"), (1, "attn"), (1, "mlp"),
    ]  # fmt: skip
    assert [i.layer for i in group_by_kind(["x.proj", "a.3.proj", "a.1.proj"])["proj"]] == [
        1, 3, None,
    ]  # fmt: skip


# -- orders -------------------------------------------------------------------------------------


def test_order_statistics_of_hand_set_orders():
    model = fp.inject(tiny_llama(), fp.FrameConfig(target_modules=QV, num_experts=4, rank=2))
    chosen = {
        "model.layers.0.self_attn.q_proj": [0.1, 0.2, 0.3, 0.4],
        "model.layers.0.self_attn.v_proj": [0.5, 0.6, 0.7, 0.8],
        "model.layers.1.self_attn.q_proj": [0.2, 0.2, 0.2, 0.2],
        "model.layers.1.self_attn.v_proj": [0.9, 0.1, 0.9, 0.1],
    }
    with torch.no_grad():
        for name, adapter in adapters(model).items():
            adapter.order_logits.copy_(torch.logit(torch.tensor(chosen[name], dtype=torch.float64)))
    stats = order_statistics(model)
    spread = [0.125, 0.375, 0.625, 0.875]
    for name, values in chosen.items():
        m = stats["modules"][name]
        assert m["orders"] == pytest.approx(values, abs=1e-6)
        assert m["initial"] == spread and m["learned"] is True
        assert (m["layer"], m["kind"]) == (int(name.split(".")[2]), name.split(".")[-1])
    assert stats["by_kind"]["v_proj"]["layers"] == [0, 1]
    assert stats["by_kind"]["v_proj"]["orders"][1] == pytest.approx([0.9, 0.1, 0.9, 0.1], abs=1e-6)
    for row in stats["per_layer"]:
        pooled = [a for n, v in chosen.items() if f"layers.{row['layer']}." in n for a in v]
        assert row["mean"] == pytest.approx(statistics.fmean(pooled), abs=1e-6)
        assert row["std"] == pytest.approx(statistics.pstdev(pooled), abs=1e-6)
        assert (row["min"], row["max"]) == pytest.approx((min(pooled), max(pooled)), abs=1e-6)
    flat = [a for v in chosen.values() for a in v]
    change = statistics.fmean(
        abs(a - b) for v in chosen.values() for a, b in zip(v, spread, strict=True)
    )
    assert stats["summary"]["mean"] == pytest.approx(statistics.fmean(flat), abs=1e-6)
    assert stats["summary"]["mean_abs_change"] == pytest.approx(change, abs=1e-6)
    assert stats["trajectory"] is None


def test_order_statistics_fixed_orders_and_models_without_frame():
    cfg = fp.FrameConfig(target_modules=QV, num_experts=3, rank=2, order_mode="fixed",
                         init_orders=[0.0, 1.0, 1.5])  # fmt: skip
    stats = order_statistics(fp.inject(tiny_llama(), cfg))
    m = stats["modules"]["model.layers.1.self_attn.v_proj"]
    assert m["orders"] == m["initial"] == [0.0, 1.0, 1.5] and m["learned"] is False
    assert stats["summary"]["mean_abs_change"] == 0.0
    assert order_statistics(fp.inject(tiny_llama(), fp.LoRAConfig(target_modules=QV))) is None
    assert order_statistics(tiny_llama()) is None


def test_read_order_log_from_a_trainer_run_with_a_torn_last_line(tmp_path):
    model = fp.inject(tiny_llama(), frame_config())
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=3, per_device_batch_size=4,
                      lr=1e-2, order_lr=5e-2, progress=False, report_to="none", log_every=1,
                      resume=None, seed=3)  # fmt: skip
    Trainer(model, RandomTokens(16), cfg).train()
    path = tmp_path / "run" / "orders.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 4, "orders": {"model.layers.0.se')  # a crash mid-write
    log = read_order_log(path)
    assert log["steps"] == [1, 2, 3]
    assert len(log["modules"]) == 6
    final = fp.orders(model)
    for name, per_step in log["modules"].items():
        assert len(per_step) == 3 and all(len(v) == 4 for v in per_step)
        assert per_step[-1] == pytest.approx(final[name].tolist(), abs=1e-6)
    moved = log["modules"]["model.layers.0.self_attn.q_proj"]
    assert moved[0] != moved[-1]  # the orders train
    stats = order_statistics(model, order_log=path)
    assert stats["trajectory"] == log
    assert stats["summary"]["mean_abs_change"] > 0


def test_read_order_log_errors(tmp_path):
    records = [{"step": 1, "orders": {"a": [0.1], "b": [0.2]}}, {"step": 2, "orders": {"a": [0.3]}}]
    path = tmp_path / "orders.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match=r"missing at step 2: \['b'\]"):
        read_order_log(path)
    path.write_text('{"step": 1, "orders": {}}\n{torn\n{"step": 2, "orders": {}}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_order_log(path)


# -- decorrelation: known answers ---------------------------------------------------------------


def mlp_mixture(method: str = "moe-lora", **kw) -> torch.nn.Module:
    """MLP (16 -> 32) with E = 4 rank-2 experts on its first Linear."""
    cls = {"moe-lora": fp.MoELoRAConfig, "frame": fp.FrameConfig}[method]
    return fp.inject(mlp(), cls(target_modules=["0"], num_experts=4, top_k=2, rank=2, **kw))


def test_identical_experts_give_cosine_and_overlap_one():
    model = mlp_mixture()
    randomise(model)
    a = adapters(model)["0"]
    with torch.no_grad():
        a.A.copy_(a.A[:1].expand_as(a.A))
        a.B.copy_(a.B[:1].expand_as(a.B))
    m = decorrelation(model)["modules"]["0"]
    for key in ("delta_cosine", "col_overlap", "row_overlap", "coherence"):
        torch.testing.assert_close(mat(m[key]), torch.ones(4, 4, dtype=torch.float64))
    assert m["ranks"] == [2, 2, 2, 2] and m["orders"] is None and m["method"] == "moe-lora"


def test_disjoint_coordinate_blocks_give_cosine_and_overlap_zero():
    model = mlp_mixture()
    a = adapters(model)["0"]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        a.A.zero_()
        a.B.zero_()
        for e in range(4):  # expert e reads inputs 4e..4e+3 and writes outputs 8e..8e+7
            a.A[e, :, 4 * e : 4 * e + 4] = torch.randn(2, 4, generator=g)
            a.B[e, 8 * e : 8 * e + 8] = torch.randn(8, 2, generator=g)
    m = decorrelation(model)["modules"]["0"]
    eye = torch.eye(4, dtype=torch.float64)
    for key in ("delta_cosine", "col_overlap", "row_overlap"):
        torch.testing.assert_close(mat(m[key]), eye, atol=1e-12, rtol=0)


def test_cosine_is_scale_free_and_zero_experts_give_none():
    model = mlp_mixture()
    randomise(model)
    a = adapters(model)["0"]
    before = decorrelation(model)["modules"]["0"]
    with torch.no_grad():
        a.B[1] *= 7.0
        a.A[2] *= -0.5  # a negative scale flips the sign of the cosines, not the subspaces
        a.B[3].zero_()
    after = decorrelation(model)["modules"]["0"]
    sign = torch.tensor([1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    for e in range(3):
        for f in range(3):
            assert after["delta_cosine"][e][f] == pytest.approx(
                float(sign[e] * sign[f]) * before["delta_cosine"][e][f], abs=1e-7
            )
            assert after["col_overlap"][e][f] == pytest.approx(before["col_overlap"][e][f])
    for key in ("delta_cosine", "col_overlap", "row_overlap"):
        assert all(after[key][3][f] is None and after[key][f][3] is None for f in range(4))
    assert after["ranks"][3] == 0
    fresh = decorrelation(mlp_mixture())  # B = 0 at init: no expert has a direction
    assert fresh["summary"]["mean_offdiag_cosine"] is None
    assert fresh["modules"]["0"]["delta_cosine"] == [[None] * 4] * 4


def dense_reference(w: torch.Tensor, rtol: float = 1e-6):
    """Cosines and subspace overlaps from explicit (E, d_out, d_in) matrices."""
    w = w.detach()
    flat = w.reshape(len(w), -1)
    cos = torch.nn.functional.normalize(flat, dim=1) @ torch.nn.functional.normalize(flat, dim=1).T
    bases = []
    for we in w:
        u, s, vh = torch.linalg.svd(we)
        k = int((s > rtol * s[0]).sum())
        bases.append((u[:, :k], vh[:k].T))
    over = [
        [[(bases[e][i].T @ bases[f][i]).square().sum() / min(bases[e][i].shape[1],
          bases[f][i].shape[1]) for f in range(len(w))] for e in range(len(w))]
        for i in (0, 1)
    ]  # fmt: skip
    return cos, torch.tensor(over[0]), torch.tensor(over[1])


@pytest.mark.parametrize("transform", ["chirp", "exact"])
def test_frame_matches_its_dense_delta_weights(transform):
    model = fp.inject(tiny_llama(), fp.FrameConfig(target_modules=QV, num_experts=4, rank=2,
                                                   transform=transform))  # fmt: skip
    randomise(model)
    out = decorrelation(model)
    assert out["skipped"] == {}
    for name, adapter in adapters(model).items():
        m = out["modules"][name]
        cos, col, row = dense_reference(adapter.dense_delta_weights().detach())
        torch.testing.assert_close(mat(m["delta_cosine"]), cos, atol=1e-5, rtol=0)
        torch.testing.assert_close(mat(m["col_overlap"]), col, atol=1e-5, rtol=0)
        torch.testing.assert_close(mat(m["row_overlap"]), row, atol=1e-5, rtol=0)
        assert m["ranks"] == [4] * 4  # rank 2r
        assert m["orders"] == pytest.approx(adapter.orders().tolist())
        for e in range(4):
            for f in range(4):
                expected = coherence(m["orders"][e], m["orders"][f], 32, transform)
                assert m["coherence"][e][f] == pytest.approx(expected, abs=1e-12)


def test_coherence_switches_and_identity_bases():
    model = fp.inject(tiny_llama(), fp.FrameConfig(target_modules=QV, num_experts=4, rank=2))
    randomise(model)
    name = "model.layers.0.self_attn.q_proj"
    assert decorrelation(model, coherence=False)["modules"][name]["coherence"] is None
    out = decorrelation(model, max_coherence_width=16)
    assert out["modules"][name]["coherence"] is None
    assert out["summary"]["mean_offdiag_coherence"] is None
    ones = decorrelation(fp.inject(tiny_llama(), fp.HMoRAConfig(target_modules=QV, rank=2)))
    assert ones["modules"][name]["coherence"] == [[1.0] * 8] * 8


def test_other_methods_skipped_or_measured():
    lora = decorrelation(fp.inject(tiny_llama(), fp.LoRAConfig(target_modules=QV)))
    assert (
        lora["modules"] == {} and "no experts" in lora["skipped"]["model.layers.0.self_attn.q_proj"]
    )
    fly = decorrelation(fp.inject(tiny_llama(), fp.FlyLoRAConfig(target_modules=QV)))
    assert len(fly["skipped"]) == 4 and fly["summary"]["num_modules"] == 0

    hydra = fp.inject(tiny_llama(), fp.HydraLoRAConfig(target_modules=QV, num_experts=3, rank=2))
    randomise(hydra)
    m = decorrelation(hydra)["modules"]["model.layers.1.self_attn.v_proj"]
    torch.testing.assert_close(mat(m["row_overlap"]), torch.ones(3, 3, dtype=torch.float64))
    assert m["col_overlap"][0][1] < 1 and m["coherence"] == [[1.0] * 3] * 3  # shared A

    four = fp.inject(tiny_llama(), fp.FourierMoEConfig(target_modules=QV, num_experts=4,
                                                       num_coefficients=16))  # fmt: skip
    randomise(four)
    out = decorrelation(four)
    for name, adapter in adapters(four).items():
        m = out["modules"][name]
        cos, col, row = dense_reference(adapter.dense_delta_weights())
        torch.testing.assert_close(mat(m["delta_cosine"]), cos, atol=1e-9, rtol=0)
        torch.testing.assert_close(mat(m["col_overlap"]), col, atol=1e-9, rtol=0)
        torch.testing.assert_close(mat(m["row_overlap"]), row, atol=1e-9, rtol=0)
        assert m["coherence"] is None
    small = decorrelation(four, max_dense_elements=100)
    assert small["modules"] == {}
    assert "too large" in small["skipped"]["model.layers.0.self_attn.q_proj"]


def test_per_layer_and_summary_are_means_over_modules():
    model = fp.inject(tiny_llama(), fp.MoELoRAConfig(target_modules=QV, num_experts=4, rank=2))
    randomise(model)
    out = decorrelation(model)
    assert [r["layer"] for r in out["per_layer"]] == [0, 1]
    for row in out["per_layer"]:
        mods = [m for m in out["modules"].values() if m["layer"] == row["layer"]]
        assert row["num_modules"] == 2
        for key in ("mean_offdiag_cosine", "mean_abs_offdiag_cosine", "mean_offdiag_col_overlap",
                    "mean_offdiag_row_overlap", "mean_offdiag_coherence"):  # fmt: skip
            per_module = [
                statistics.fmean(abs(v) if "abs" in key else v
                                 for e, r in enumerate(m[_matrix(key)]) for f, v in enumerate(r)
                                 if e != f)
                for m in mods
            ]  # fmt: skip
            assert row[key] == pytest.approx(statistics.fmean(per_module))
    assert out["summary"]["num_modules"] == 4
    assert out["summary"]["mean_offdiag_coherence"] == 1.0


def _matrix(key: str) -> str:
    for part, matrix in (("cosine", "delta_cosine"), ("col", "col_overlap"),
                         ("row", "row_overlap"), ("coherence", "coherence")):  # fmt: skip
        if part in key:
            return matrix
    raise KeyError(key)
