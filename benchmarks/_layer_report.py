"""Markdown for ``bench_layers.py``: per-cell tables, summary grid, targets, FourierMoE gap."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import NamedTuple

from _common import machine_info, quartiles
from _layer_methods import METHODS
from frame_peft._tables import markdown_table

# Targets of issue 7 on fwd+bwd time (ratios of medians)
FRAME_VS_MOE = 1.10  # FRAME (chirp) / MoE-LoRA
FRAME_VS_PEFT_LORA = 1.25  # FRAME (chirp) / PEFT LoRA at equal active rank k·r
LORA_VS_PEFT = 0.05  # |our LoRA / PEFT LoRA − 1|, same rank

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
  n_frequency real coefficients. *PEFT LoRA (equal rank)* is the one unmatched row: r = k·r = 8,
  MoE-LoRA's active rank, the reference of the equal-rank target.
- Ratios (× MoE-LoRA, × base) are ratios of medians, of fwd+bwd, fwd and step peak memory.
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


def ms(v: float) -> str:
    """Milliseconds with three significant digits below 100 (quick cells), integers above."""
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.3f}" if a is not None and b else "—"


def main_table(
    knobs: dict, counts: dict, times: dict, mem: dict, target: int, skipped: dict[str, str]
) -> str:
    """One row per method of ``counts`` (timed ones from ``times``; ``skipped``: method -> why).

    Ratios are of medians (fwd+bwd and fwd) and of step peaks, to MoE-LoRA and to the base.
    """
    base = times["base"]["step"]
    med = {m: (quartiles(t["fwd"])[1], quartiles(t["step"])[1]) for m, t in times.items()}
    moe, bas = med.get("moe_lora", (None, None)), med["base"]
    headers = [
        "method", "config", "trainable", "active / token", "vs target", "fwd ms",
        "fwd+bwd ms [IQR]", "overhead vs base ms (paired)", "fwd+bwd × MoE-LoRA",
        "fwd+bwd × base", "fwd × base", "step peak MiB", "peak × MoE-LoRA", "peak × base",
    ]  # fmt: skip
    rows = []
    for m, c in counts.items():
        miss = "—" if m == "base" else f"{100 * (c['active_per_token'] - target) / target:+.2f} %"
        p = mem.get(m)
        peak = ["—"] * 3
        if p is not None:
            peak = [f"{p:.0f}", _ratio(p, mem.get("moe_lora")), _ratio(p, mem.get("base"))]
        head = [
            METHODS[m].label, METHODS[m].describe(knobs.get(m)), f"{c['trainable']:,}",
            f"{c['active_per_token']:,}", miss,
        ]  # fmt: skip
        if m in skipped or m not in times:
            why = skipped.get(m, "not run")
            rows.append([*head, "—", f"not timed: {why}", *["—"] * 4, *peak])
            continue
        q1, md, q3 = quartiles(times[m]["step"])
        over = "—"
        if m != "base":
            d = quartiles([a - b for a, b in zip(times[m]["step"], base, strict=True)])
            over = f"{d[1]:+.0f} [{d[0]:+.0f}, {d[2]:+.0f}]"
        rows.append([
            *head, ms(med[m][0]), f"{ms(md)} [{ms(q1)}, {ms(q3)}]", over, _ratio(md, moe[1]),
            _ratio(md, bas[1]), _ratio(med[m][0], bas[0]), *peak,
        ])  # fmt: skip
    return markdown_table(headers, rows, align="llrrrrrrrrrrrr")


def cell_table(cell: dict) -> str:
    """:func:`main_table` of one grid cell (keys: knobs, counts, times, memory, target, skipped)."""
    return main_table(
        cell["knobs"], cell["counts"], cell["times"], cell["memory"], cell["target"],
        cell["skipped"],
    )  # fmt: skip


def summary_table(cells: list[dict]) -> str:
    """Methods × cells: median fwd+bwd ms (× MoE-LoRA, × base); step peak MiB (× base)."""
    heads = [f"{c['shape'][0]}×{c['shape'][1]}, T={c['tokens']}" for c in cells]
    rows = []
    names = [m for m in METHODS if any(m in c["counts"] for c in cells)]
    for m in names:
        out = []
        for c in cells:
            t = c["times"]
            if m not in t or m in c["skipped"]:
                out.append("—")
                continue
            md = quartiles(t[m]["step"])[1]
            moe = quartiles(t["moe_lora"]["step"])[1] if "moe_lora" in t else None
            text = f"{ms(md)} ms ({_ratio(md, moe)}, {_ratio(md, quartiles(t['base']['step'])[1])})"
            p = c["memory"].get(m)
            if p is not None:
                text += f"; {p:.0f} MiB ({_ratio(p, c['memory'].get('base'))})"
            out.append(text)
        rows.append([METHODS[m].label, *out])
    return markdown_table(["method", *heads], rows, align="l" + "r" * len(cells))


class Target(NamedTuple):
    """One target checked in one cell: ``measured`` (ratio of medians) against ``threshold``."""

    name: str
    cell: str
    measured: float
    threshold: str
    ok: bool
    detail: str


# (name, numerator, denominator, threshold text, test on the ratio of medians)
TARGETS = [
    ("FRAME (chirp) <= 1.10 × MoE-LoRA", "frame_chirp", "moe_lora", "<= 1.10",
     lambda r: r <= FRAME_VS_MOE),
    ("FRAME (chirp) <= 1.25 × PEFT LoRA at equal active rank (r = k·r)", "frame_chirp",
     "peft_lora_rank", "<= 1.25", lambda r: r <= FRAME_VS_PEFT_LORA),
    ("our LoRA within 5 % of PEFT LoRA (same r)", "lora", "peft_lora", "0.95 … 1.05",
     lambda r: abs(r - 1) <= LORA_VS_PEFT),
    ("FourierMoE faster than PEFT FourierFT (matched active parameters)", "fouriermoe",
     "peft_fourierft", "< 1", lambda r: r < 1),
]  # fmt: skip


def targets(cells: list[dict]) -> list[Target]:
    """Every target of :data:`TARGETS` in every cell where both of its methods were timed.

    The measure is fwd+bwd time; ``measured`` is the ratio of medians, ``detail`` adds the
    median and IQR of the per-round paired ratios and the ratio of the fastest rounds.
    """
    out = []
    for c in cells:
        t, skip = c["times"], c["skipped"]
        where = f"{c['shape'][0]}×{c['shape'][1]}, T={c['tokens']}"
        for name, num, den, thr, test in TARGETS:
            if num not in t or den not in t or num in skip or den in skip:
                continue
            a, b = t[num]["step"], t[den]["step"]
            ratio = quartiles(a)[1] / quartiles(b)[1]
            p = quartiles([x / y for x, y in zip(a, b, strict=True)])
            detail = (
                f"paired ratio median {p[1]:.3f} [IQR {p[0]:.3f}, {p[2]:.3f}]; fastest rounds "
                f"{min(a) / min(b):.3f}"
            )
            out.append(Target(name, where, ratio, thr, bool(test(ratio)), detail))
    return out


def targets_table(rows: list[Target]) -> str:
    headers = [
        "target", "cell", "measured (ratio of medians, fwd+bwd)", "threshold", "verdict", "detail",
    ]  # fmt: skip
    cells = [
        [r.name, r.cell, f"{r.measured:.3f}", r.threshold, "**PASS**" if r.ok else "**FAIL**",
         r.detail]
        for r in rows
    ]  # fmt: skip
    return markdown_table(headers, cells, align="llr")


def gap_table(res: dict, knobs: dict, per_token: int, dw_times: list[float], shape) -> str:
    """``res``: {T: {method: {"fwd": [...], "step": [...]}}}; a method over the cap is absent."""
    d_in, d_out = shape
    tokens = list(res)
    cols = [c for t in tokens for c in (f"T={t}: fwd / fwd+bwd ms", f"T={t}: overhead ms")]
    rows = []
    overhead = {}
    for m in ("base", "fouriermoe", "peft_fourierft"):
        cells = []
        for t in tokens:
            if m not in res[t]:
                cells += ["not timed", "—"]
                continue
            tm, base = res[t][m], res[t]["base"]["step"]
            o = quartiles([a - b for a, b in zip(tm["step"], base, strict=True)])[1]
            overhead[(m, t)] = o
            cells += [
                f"{quartiles(tm['fwd'])[1]:.0f} / {quartiles(tm['step'])[1]:.0f}",
                "—" if m == "base" else f"{o:+.0f}",
            ]
        coeffs = 0 if m == "base" else per_token
        rows.append([METHODS[m].label, METHODS[m].describe(knobs.get(m)), f"{coeffs:,}", *cells])
    headers = ["method", "config", "coefficients / token", *cols]
    lines = [markdown_table(headers, rows, align="llr" + "rr" * len(tokens)), ""]
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
    # Results pages written by earlier runs are not code: they do not make the tree dirty.
    dirty = git("status", "--porcelain", "--", "src", "benchmarks", ":!benchmarks/results")
    return head + (" with uncommitted changes under src/ or benchmarks/" if dirty else "")


def report(run: dict, sections: list[str], summary: str, checks: list[Target], gap: str) -> str:
    """The whole results page. ``run``: command, root, tokens, seq_len, warmup, rounds (text per
    cell), rounds_rule, load_start, load_end (``os.getloadavg()`` tuples), elapsed (s),
    gap_shape; ``summary``: :func:`summary_table`; ``checks``: :func:`targets`."""
    info = machine_info()

    def load(v: tuple[float, ...]) -> str:
        return ", ".join(f"{x:.2f}" for x in v)

    passed = sum(c.ok for c in checks)
    lines = [
        "# Layer benchmark: one adapted Linear, every method at matched active parameters",
        "",
        "Generated by `benchmarks/bench_layers.py` (do not edit by hand; rerun the command).",
        "",
        "## Command",
        "",
        f"```\n{run['command']}\n```",
        "",
        f"Total wall time {run['elapsed'] / 60:.1f} min; tokens per cell {run['tokens']}; "
        f"{run['warmup']} warm-up step(s) per method and cell. Rounds are chosen by a time "
        f"budget ({run['rounds_rule']}), so big cells get fewer rounds: {run['rounds']}.",
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
        "## Targets",
        "",
        f"{passed} of {len(checks)} checks pass. Each target is checked in every cell on the "
        "fwd+bwd step time.",
        "",
        targets_table(checks),
        "",
        "## Summary: fwd+bwd median (× MoE-LoRA, × base); step peak (× base)",
        "",
        summary,
        "",
        "## Results per cell",
        "",
        *sections,
    ]
    if gap:
        d_in, d_out = run["gap_shape"]
        lines += [f"## FourierMoE vs PEFT FourierFT ({d_in} → {d_out})", "", GAP_TEXT, "", gap, ""]
    return "\n".join(lines)
