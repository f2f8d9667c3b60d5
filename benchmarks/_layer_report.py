"""Markdown for ``bench_layers.py``: matched-budget tables, FRAME target, FourierMoE gap."""

from __future__ import annotations

import subprocess
from pathlib import Path

from _common import machine_info, quartiles
from _layer_methods import METHODS

TARGET = 1.10  # FRAME (chirp) / MoE-LoRA, whole layer, fwd+bwd

MEASURED = """\
- One training step of a single layer: `y = model(x)`, `loss = mean(y²)` (`+ fp.aux_loss(model)`
  for frame-peft models; PEFT's have no routing loss), `loss.backward()`. float32, CPU. `x` is
  (T/S, S, d_in) with S = {seq_len} (HMoRA's task encoder pools over each sequence) and
  `requires_grad=True`: inside a network the frozen base still back-propagates to its input, so
  the base row costs a forward and a grad-input matmul. *fwd* = time to the loss, *fwd+bwd* = the
  whole step. Medians over rounds, IQR in brackets; methods interleaved round-robin (start
  rotated each round) after warm-up; *overhead* = median of the per-round paired differences to
  the base.
- Every method adapts the same `proj` Linear of a one-layer module (`_layer_methods.OneLayer`,
  one frozen weight shared by all); PEFT's methods wrap it with `fp.peft_baseline` (dropout 0).
- **Budget matching.** Target = MoE-LoRA E=8 k=2 r=4's active parameters per token as counted by
  `fp.count_parameters`: k·r·(d_in + d_out) expert parameters **plus the E·d_in router**
  (2·r·(d_in + d_out) alone would leave the router out). MoE-LoRA and FRAME keep that config
  (FRAME adds its E = 8 orders). Every other method keeps the structure in its config column and
  gets the value of its one budget knob whose count (on a meta-device copy, through
  `frame_peft.peft_bridge.count_parameters`) is closest to the target
  (`_layer_methods.match_budgets`; the table's counts are re-taken on the built layers). *vs
  target* is the relative mismatch; knobs are integers, hence the residuals. What is counted:
  LoRA r·(d_in+d_out); FourierMoE k·2n (n complex coefficients per expert) + E·d_in + E²;
  HydraLoRA r·d_in + E·r·d_out + E·d_in (dense router: every head is active); FlyLoRA k·d_out
  (its frozen sparse A is a buffer; rank = 4k as in its defaults r = 32, k = 8); HMoRA
  k·r·(d_in+d_out) plus its routers, task encoder and β, with top_k = 2 and task_dim = 8 (with
  the default task_dim = 32 the task encoder alone, 32·d_in, exceeds the whole budget, and dense
  HMoRA would need rank < 1); PEFT DoRA r·(d_in+d_out) + d_out (magnitude); PEFT FourierFT
  n_frequency real coefficients.
- *step peak*: extra memory of one step (RSS high-water mark minus RSS before the step, MiB) of
  the method built alone in a fresh process (see `bench_layers.py`): activations saved for
  backward, gradients, and for PEFT DoRA / FourierFT the dense d_out × d_in matrices they build
  every forward. A method whose step needs more than `--mem-cap-gb` is not timed (the cap is an
  address-space limit, so it fails cleanly instead of invoking the OOM killer on a shared box).
- Noise: the box is shared with other jobs (2 cores, other sessions running tests and
  benchmarks), so single timings vary by tens of percent; compare IQRs and paired differences
  before reading small gaps. The 1-minute load average at start and end is under Machine."""

GAP_TEXT = """\
FourierMoE evaluates ΔW x on activations: one FFT of x shared by all experts, then per expert a
sparse (half-spectrum × d_in) matrix of its n coefficients times the spectra of the tokens routed
to it, summed under the gates, and one inverse real FFT, so its time and memory grow linearly with
T and it never holds a d_out × d_in matrix. PEFT FourierFT scatters its n real coefficients into a
dense spectrum, runs a 2-D inverse FFT to a dense ΔW (independent of T) and then multiplies x by
ΔW like a second base weight (forward, grad-input and grad-ΔW: three T·d_in·d_out matmuls, linear
in T with the base's slope). Both apply the same number of real coefficients to each token:
FourierFT n_frequency = 2·k·n, FourierMoE E=8 k=2 with n complex coefficients per expert (the
matched row of the main table). Overheads are fwd+bwd minus the base, paired per round."""


def _load_note(run: dict) -> str:
    """A 1-minute load above ~1.2 on this single-threaded run means other jobs shared the box."""
    busiest = max(run["load_start"][0], run["load_end"][0])
    if busiest > 1.2:
        return (
            "Other jobs shared the machine during this run, so absolute times are inflated and "
            "noisy; rerun the command at a quiet moment for clean figures."
        )
    return "No other heavy job ran (1-minute load about 1, this benchmark's own thread)."


def main_table(
    knobs: dict, counts: dict, times: dict, mem: dict, target: int, skipped: dict[str, str]
) -> str:
    """One row per method of ``counts`` (timed ones from ``times``; ``skipped``: method -> why)."""
    base = times["base"]["step"]
    moe = quartiles(times["moe_lora"]["step"])[1]
    rows = [
        "| method | config | trainable | active / token | vs target | fwd ms | fwd+bwd ms "
        "[IQR] | overhead vs base ms (paired) | ratio to MoE-LoRA (fwd+bwd) | step peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, c in counts.items():
        miss = "—" if m == "base" else f"{100 * (c['active_per_token'] - target) / target:+.2f} %"
        peak = f"{mem[m]:.0f}" if mem.get(m) is not None else "—"
        head = (
            f"| {METHODS[m].label} | {METHODS[m].describe(knobs.get(m))} | {c['trainable']:,} "
            f"| {c['active_per_token']:,} | {miss} "
        )
        if m in skipped:
            rows.append(head + f"| — | not timed: {skipped[m]} | — | — | {peak} |")
            continue
        t = times[m]
        q1, md, q3 = quartiles(t["step"])
        over = "—"
        if m != "base":
            d = quartiles([a - b for a, b in zip(t["step"], base, strict=True)])
            over = f"{d[1]:+.0f} [{d[0]:+.0f}, {d[2]:+.0f}]"
        rows.append(
            head + f"| {quartiles(t['fwd'])[1]:.0f} | {md:.0f} [{q1:.0f}, {q3:.0f}] | {over} "
            f"| {md / moe:.3f} | {peak} |"
        )
    return "\n".join(rows)


def verdict(times: dict, shape: str) -> str:
    chirp, moe = times["frame_chirp"]["step"], times["moe_lora"]["step"]
    ratio = quartiles(chirp)[1] / quartiles(moe)[1]
    p = quartiles([a / b for a, b in zip(chirp, moe, strict=True)])
    ok = "PASS" if ratio <= TARGET else "FAIL"
    return (
        f"**{ok}** ({shape}): FRAME(chirp)/MoE-LoRA fwd+bwd = {ratio:.3f} (ratio of medians; "
        f"per-round paired ratio median {p[1]:.3f}, IQR [{p[0]:.3f}, {p[2]:.3f}]; fastest rounds "
        f"{min(chirp) / min(moe):.3f}), target <= {TARGET:.2f}."
    )


def gap_table(res: dict, knobs: dict, per_token: int, dw_times: list[float], shape) -> str:
    """``res``: {T: {method: {"fwd": [...], "step": [...]}}}; a method over the cap is absent."""
    d_in, d_out = shape
    tokens = list(res)
    cols = " | ".join(f"T={t}: fwd / fwd+bwd ms | T={t}: overhead ms" for t in tokens)
    rows = [f"| method | config | coefficients / token | {cols} |"]
    rows.append("|---|---|---:|" + "---:|---:|" * len(tokens))
    overhead = {}
    for m in ("base", "fouriermoe", "peft_fourierft"):
        cells = []
        for t in tokens:
            if m not in res[t]:
                cells.append("not timed | —")
                continue
            tm, base = res[t][m], res[t]["base"]["step"]
            o = quartiles([a - b for a, b in zip(tm["step"], base, strict=True)])[1]
            overhead[(m, t)] = o
            cells.append(
                f"{quartiles(tm['fwd'])[1]:.0f} / {quartiles(tm['step'])[1]:.0f} | "
                + ("—" if m == "base" else f"{o:+.0f}")
            )
        coeffs = 0 if m == "base" else per_token
        rows.append(
            f"| {METHODS[m].label} | {METHODS[m].describe(knobs.get(m))} | {coeffs:,} | "
            + " | ".join(cells)
            + " |"
        )
    lines = ["\n".join(rows), ""]
    for t in tokens:
        ft, moe = overhead.get(("peft_fourierft", t)), overhead.get(("fouriermoe", t))
        if ft is None or moe is None:
            lines.append(f"- T = {t}: FourierMoE not timed (its step exceeds the memory cap).")
            continue
        faster = "FourierFT" if ft < moe else "FourierMoE"
        lines.append(
            f"- T = {t}: adapter overhead FourierFT {ft:+.0f} ms, FourierMoE {moe:+.0f} ms; "
            f"FourierMoE / FourierFT = {moe / ft:.2f} ({faster} is faster here)."
        )
    q = quartiles(dw_times)
    lines.append(
        f"- PEFT FourierFT's dense ΔW alone (scatter into the {d_out}×{d_in} spectrum, ifft2, "
        f"and its backward): {q[1]:.0f} ms [{q[0]:.0f}, {q[2]:.0f}] per step, for any T."
    )
    return "\n".join(lines)


def git_state(root: Path) -> str:
    def git(*a: str) -> str:
        return subprocess.run(
            ["git", *a], cwd=root, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "src", "benchmarks")
    return head + (" with uncommitted changes under src/ or benchmarks/" if dirty else "")


def report(run: dict, sections: list[str], verdicts: list[str], gap: str) -> str:
    """The whole results page. ``run``: command, root, tokens, seq_len, warmup, rounds (text),
    load_start, load_end (``os.getloadavg()`` tuples), elapsed (s), gap_shape."""
    info = machine_info()

    def load(v: tuple[float, ...]) -> str:
        return ", ".join(f"{x:.2f}" for x in v)

    lines = [
        "# Layer benchmark: one adapted Linear, every method at matched active parameters",
        "",
        "Generated by `benchmarks/bench_layers.py` (do not edit by hand; rerun the command).",
        "",
        "## Command",
        "",
        f"```\n{run['command']}\n```",
        "",
        f"Total wall time {run['elapsed'] / 60:.1f} min; {run['tokens']} tokens; timed rounds "
        f"per shape: {run['rounds']}, after {run['warmup']} warm-up step(s) per method.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in info.items()],
        f"- load average (1, 5, 15 min) at start: {load(run['load_start'])}; at end: "
        f"{load(run['load_end'])}. {_load_note(run)}",
        f"- code: git {git_state(run['root'])} (the package is imported once, at the start)",
        "",
        "## What is measured",
        "",
        MEASURED.format(seq_len=run["seq_len"]),
        "",
        "## Results",
        "",
        *sections,
        "## FRAME target",
        "",
        *[f"- {v}" for v in verdicts],
        "",
    ]
    if gap:
        d_in, d_out = run["gap_shape"]
        lines += [f"## FourierMoE vs PEFT FourierFT ({d_in} → {d_out})", "", GAP_TEXT, "", gap, ""]
    return "\n".join(lines)
