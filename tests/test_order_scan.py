"""The order scan: the fit, the sketch, the search, the jumps (unit level, synthetic modules)."""

from __future__ import annotations

import pytest
import torch

import frame_peft as fp
from _models import single_linear
from frame_peft.methods.frame.order_fit import (
    Sketch,
    dense_fitted_energy,
    fitted_energies,
    order_map,
)
from frame_peft.methods.frame.scan import ScanSettings, apply_jumps, scan_module, scan_orders
from frame_peft.methods.frame.scan_stats import TokenStats
from frame_peft.methods.frame.scan_targets import sketch_targets, whitened_targets


def _planted(d_out: int, d_in: int, rank: int, order: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(d_out, rank, generator=g, dtype=torch.float64)
    a = torch.randn(rank, d_in, generator=g, dtype=torch.float64)
    return order_map(b @ a, order)


def _exact_sketch(targets: list[torch.Tensor], q: int) -> Sketch:
    """A shared basis from the exact SVDs of the stacked targets (no randomness)."""
    u = torch.linalg.svd(torch.cat(targets, dim=1), full_matrices=False).U[:, :q]
    v = torch.linalg.svd(torch.cat(targets, dim=0), full_matrices=False).Vh[:q].T
    cores = torch.stack([u.T @ w @ v for w in targets])
    energy = torch.stack([w.square().sum() for w in targets])
    return Sketch.shared(u, v, cores, energy)


def test_order_map_is_self_adjoint_identity_at_zero_and_squares_to_a_projection_at_one():
    g = torch.Generator().manual_seed(0)
    m, w = (torch.randn(12, 16, generator=g, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(order_map(m, 0.0), m)
    for a in (0.3, 1.0):
        lhs = (order_map(m, a) * w).sum()
        torch.testing.assert_close(lhs, (m * order_map(w, a)).sum())
    # L_1 = Re(C^H M C): L_1² M = (M + R M R)/2 with R the index reversal c -> -c
    rev_o, rev_i = [(torch.arange(n) * -1 + 2 * (n // 2)) % n for n in (12, 16)]
    twice = order_map(order_map(m, 1.0), 1.0)
    torch.testing.assert_close(twice, 0.5 * (m + m[rev_o][:, rev_i]), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("order", [0.0, 0.23, 0.71, 1.0])
def test_fit_is_exact_at_the_planted_order_and_lower_elsewhere(order):
    w = _planted(16, 24, 2, order)
    sketch = _exact_sketch([w], 4)  # spatial rank of a rank-2 update: <= 4
    grid = torch.tensor([0.0, 0.23, 0.5, 0.71, 1.0], dtype=torch.float64)
    f = fitted_energies(sketch, grid, 2, iters=8)[0]
    j = int((grid - order).abs().argmin())
    assert f[j] > 0.9999
    others = torch.cat([f[:j], f[j + 1 :]])
    assert others.max() < 0.97


def test_sketched_fit_agrees_with_the_dense_reference():
    w = _planted(20, 28, 2, 0.37, seed=3)
    w = w + 0.05 * w.norm() / 24 * torch.randn(20, 28, generator=torch.Generator().manual_seed(4),
                                                dtype=torch.float64)  # fmt: skip
    grid = [0.0, 0.2, 0.37, 0.6, 1.0]
    dense = [dense_fitted_energy(w, a, 2, iters=40) for a in grid]
    sketched = fitted_energies(_exact_sketch([w], 20), torch.tensor(grid, dtype=torch.float64),
                               2, iters=12)[0].tolist()  # fmt: skip
    for a, d_val, s_val in zip(grid, dense, sketched, strict=True):
        assert s_val == pytest.approx(d_val, abs=0.03), a
    assert max(range(5), key=dense.__getitem__) == max(range(5), key=sketched.__getitem__) == 2


def _stats_for(targets: list[torch.Tensor], tokens: int = 600, seed: int = 0) -> TokenStats:
    """Tokens whose whitened targets are exactly ``targets``: isotropic inputs, δ = W_e x,
    each token routed to one expert with gate 1."""
    g = torch.Generator().manual_seed(seed)
    e = len(targets)
    x = torch.randn(tokens * e, targets[0].shape[1], generator=g, dtype=torch.float64)
    owner = torch.arange(tokens * e) % e
    delta = torch.stack([targets[int(o)] @ xi for o, xi in zip(owner, x, strict=True)])
    gates = torch.nn.functional.one_hot(owner, e).double()
    return TokenStats(x.float(), delta.float(), gates.float())


def test_whitened_targets_recover_the_teacher_both_ways():
    w = _planted(10, 12, 2, 0.4)
    for tokens in (8, 400):  # push-through (N < d_in) and direct (N >= d_in) paths
        t = whitened_targets(_stats_for([w], tokens), ridge=1e-9)[0]
        if tokens >= 12:
            torch.testing.assert_close(t.dense(), w, rtol=1e-4, atol=1e-4)
        energy = torch.tensor(t.energy, dtype=torch.float64)
        torch.testing.assert_close(energy, t.dense().square().sum(), rtol=1e-9, atol=0.0)


def _frame(d: int, experts: int, rank: int, **kw):
    cfg = fp.FrameConfig(target_modules=["0"], num_experts=experts, top_k=1, rank=rank,
                         dropout=0.0, **kw)  # fmt: skip
    model = fp.inject(single_linear(d, d), cfg)
    return model, fp.adapted_layers(model)["0"].adapter


@pytest.mark.parametrize("basis", ["shared", "expert"])
def test_scan_recovers_planted_orders_per_expert(basis):
    d, orders = 32, [0.0, 0.31, 0.62, 1.0]
    targets = [_planted(d, d, 2, a, seed=i) for i, a in enumerate(orders)]
    _, adapter = _frame(d, 4, 2)
    stats = _stats_for(targets, tokens=300)
    settings = ScanSettings(sketch_rank=16, basis=basis)
    report, jumps = scan_module(adapter, stats, settings, first=True)
    found = [e.best_order for e in report.experts]
    for a, b in zip(found, orders, strict=True):
        assert abs(a - b) <= 1.0 / (8 * d) + 1e-9
    assert [j[0] for j in jumps] == [0, 1, 2, 3]
    assert [j[2] for j in jumps] == [True, False, False, True]  # 0 and 1 are held
    assert all(e.score_best > 0.99 for e in report.experts)


def test_sketched_targets_span_the_planted_updates():
    targets = [_planted(24, 24, 2, a, seed=i) for i, a in enumerate([0.2, 0.7])]
    ts = whitened_targets(_stats_for(targets, tokens=200), ridge=1e-9)
    sketch, present = sketch_targets(ts, 24, 24, q=16, basis="shared")
    assert present == [0, 1]
    captured = sketch.cores.square().sum((-1, -2)) / sketch.energy
    assert torch.all(captured > 1 - 1e-6)  # two rank-4 (spatial) targets in a 16-dim basis


def test_rescan_jumps_only_past_the_margin():
    d = 32
    target = _planted(d, d, 2, 0.5)
    _, adapter = _frame(d, 1, 2, order_mode="fixed", init_orders=[0.5])
    stats = _stats_for([target])
    report, jumps = scan_module(adapter, stats, ScanSettings(), first=False)
    assert jumps == [] and not report.experts[0].jumped  # already at its best order

    with torch.no_grad():
        adapter.fixed_orders.fill_(0.3)  # far from the best order: it fits much worse there
    report, jumps = scan_module(adapter, stats, ScanSettings(), first=False)
    assert report.experts[0].score_best >= 1.05 * report.experts[0].score_before
    assert len(jumps) == 1 and abs(jumps[0][1] - 0.5) < 1 / d

    # the same move with an impossible margin is refused
    report, jumps = scan_module(adapter, stats, ScanSettings(margin=1e6), first=False)
    assert jumps == [] and report.experts[0].order_after == pytest.approx(0.3)


def test_jumps_move_pin_refactor_the_experts_and_zero_first_moments_only():
    model, adapter = _frame(16, 3, 2)
    opt = fp.build_optimizer(model, lr=1e-2, order_lr=1e-2)
    with torch.no_grad():
        adapter.B.normal_(0.0, 0.1)
    x = torch.randn(20, 16)
    model(x).square().sum().backward()
    opt.step()
    before = {n: p.detach().clone() for n, p in adapter.named_parameters()}
    old_update = adapter.dense_delta_weights()[1]  # expert 1's update before its jump to 0
    states = {id(p): {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}
              for p in (adapter.A, adapter.B, adapter.order_logits)}  # fmt: skip
    apply_jumps(adapter, [(1, 0.0, True), (2, 0.4, False)], opt)
    assert adapter.orders().tolist()[1:] == pytest.approx([0.0, 0.4], abs=1e-6)
    assert adapter.order_pins.tolist() == [-1.0, 0.0, -1.0]
    # expert 2 (to 0.4) restarts; expert 1 (to 0) keeps the best rank-r part of its update
    assert torch.all(adapter.B[2] == 0) and torch.equal(adapter.B[0], before["B"][0])
    assert torch.equal(adapter.A[0], before["A"][0])
    assert not torch.equal(adapter.A[2], before["A"][2])
    u, sv, vh = torch.linalg.svd(old_update)
    best_rank_2 = (u[:, :2] * sv[:2]) @ vh[:2]
    new_update = adapter.dense_delta_weights()[1]
    torch.testing.assert_close(new_update, best_rank_2, rtol=1e-4, atol=1e-6)
    # A keeps its scale (RMS row norm), orthogonal rows; B carries the update
    kappa = before["A"][1].norm() / 2**0.5
    torch.testing.assert_close(adapter.A[1] @ adapter.A[1].T, kappa**2 * torch.eye(2))
    for p in (adapter.A, adapter.B, adapter.order_logits):
        state, old = opt.state[p], states[id(p)]
        assert torch.all(state["exp_avg"][1:] == 0)
        assert torch.equal(state["exp_avg"][0], old["exp_avg"][0])
        assert torch.equal(state["exp_avg_sq"], old["exp_avg_sq"])  # second moments kept


def test_scan_orders_entry_point_on_a_plain_module():
    d = 32
    target = _planted(d, d, 2, 0.45, seed=9)
    model, adapter = _frame(d, 2, 2)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(64, d, generator=g) for _ in range(6)]

    def loss_fn(m, x):
        return (m(x) - m[0].base_layer(x) - x @ target.float().T).square().sum()

    marker = torch.full_like(adapter.B, 7.0)
    adapter.B.grad = marker
    report = scan_orders(model, batches, loss_fn=loss_fn, tokens_per_batch=64)
    assert adapter.B.grad is marker and adapter.A.grad is None  # the caller's grads, untouched
    assert report.first and report.tokens == 6 * 64
    best = [e.best_order for e in report.modules[0].experts]
    assert all(abs(b - 0.45) <= 1 / (8 * d) + 1e-9 for b in best)
    assert adapter.orders().tolist() == pytest.approx(best, abs=1e-5)
    assert torch.all(adapter.B == 0)  # reset: the experts restart at the new order
    with pytest.raises(ValueError, match="FRAME only"):
        scan_orders(fp.inject(single_linear(8, 8), fp.LoRAConfig(target_modules=["0"])), [])


def test_rescan_scale_turns_the_gradient_into_the_residual_for_squared_error():
    from frame_peft.methods.frame.scan_stats import record

    d, z = 16, 250.0
    model, adapter = _frame(d, 2, 2)
    with torch.no_grad():
        adapter.B.normal_(0.0, 0.2)
    target = _planted(d, d, 2, 0.3).float()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(32, d, generator=g) for _ in range(3)]

    def loss_fn(m, x):
        pred = m(x) - m[0].base_layer(x)
        return (pred - x @ target.T).square().sum() / z

    stats, scale = record(model, batches, loss_fn, tokens_per_batch=32, mode="current")
    assert scale == pytest.approx(z / 2, rel=1e-4)  # exact for a squared error
    s = stats["0"]
    with torch.no_grad():
        pred = model(s.x) - model[0].base_layer(s.x)
    torch.testing.assert_close(scale * s.delta, s.x @ target.T - pred, rtol=1e-4, atol=1e-4)


def test_experts_started_at_zero_stay_untouched_unless_a_domain_wins():
    d = 32
    with pytest.raises(ValueError, match="never moves"):
        fp.FrameConfig(init_orders="zeros")  # gradient-only orders at 0 would never move
    _, adapter = _frame(d, 2, 2, order_search="scan", init_orders="zeros")
    assert adapter.order_pins.tolist() == [0.0, 0.0] and adapter.identity_orders
    targets = [_planted(d, d, 2, 0.0, seed=1), _planted(d, d, 2, 0.4, seed=2)]
    report, jumps = scan_module(adapter, _stats_for(targets), ScanSettings(), first=True)
    assert [j[0] for j in jumps] == [1] and abs(jumps[0][1] - 0.4) <= 1 / (8 * d) + 1e-9
    assert not report.experts[0].jumped and report.experts[0].order_after == 0.0


@pytest.mark.parametrize(
    ("kwargs", "kind"),
    [({}, "grouped"), ({"order_search": "scan"}, "switch"),
     ({"order_search": "scan", "aux_loss": "grouped"}, "grouped"), ({"aux_loss": "none"}, "none")],
)  # fmt: skip
def test_the_balance_loss_follows_the_order_search_unless_given(kwargs, kind):
    _, adapter = _frame(16, 4, 2, **kwargs)
    assert adapter.aux_kind == kind
    with pytest.raises(ValueError, match="aux_loss"):
        fp.FrameConfig(aux_loss="grouped-ish")
