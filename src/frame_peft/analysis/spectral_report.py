"""The "Spectral analysis" section of the HTML report (called by :func:`.report.write_report`
for runs that carry a ``"spectral"`` entry): definitions, per-run tables and figures."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

DEFINITIONS = [
    ("bands", "The 2-D DFT of each module's update ΔW cut into B radial bands: FourierMoE's own "
     "rings (the half-plane sorted by radial frequency, cut into B rings of equal count; "
     "frequency_rings). Band shares sum to 1; a random matrix gives 1/B each."),
    ("centroid", "Σ_b p_b (b + ½)/B: 0.5 for a flat profile, lower when energy sits in low "
     "frequencies."),
    ("low fraction", "Share of the lowest quarter of the bands (0.25 if flat)."),
    ("nulls", "The same statistics for random Gaussian matrices and random-factor rank-r LoRA "
     "updates of the same shape (mean and 95 % range): a profile is distinct only outside them."),
    ("compactness", "f(a): share of the target's energy a real rank-r FRAME expert at order a "
     "captures (the order scan's fit), against LoRA at rank r (= f(0)) and 2r."),
    ("band × expert", "P(expert | the token's dominant band) of the router's decisions on "
     "held-out tokens (bands of the token's input spectrum, the router's features); MI is the "
     "mutual information between dominant band and expert (0 = routing ignores the bands)."),
]  # fmt: skip


def spectral_block(
    spec: Mapping[str, Any] | None,
    table: Callable[..., str],
    details: Callable[[str, str], str],
) -> str:
    """HTML of one run's spectral numbers (``table`` and ``details`` are the report's helpers)."""
    if not spec:
        return "<p>No spectral analysis for this run (run `frame-peft analyze --spectral`).</p>"
    prof = spec["profiles"]
    out = ""
    summary = prof.get("summary") or {}
    if summary:
        rows = [["mean over modules", summary.get("centroid"), summary.get("low_fraction"),
                 summary.get("modules")]]  # fmt: skip
        for shape, null in prof.get("nulls", {}).items():
            for kind in ("dense", "lora"):
                c, low = null[kind]["centroid"], null[kind]["low_fraction"]
                rows.append([f"null {kind} {shape} (95 %)",
                             f"{c['lo']:.3f} – {c['hi']:.3f}",
                             f"{low['lo']:.3f} – {low['hi']:.3f}", null["draws"]])  # fmt: skip
        out += table(["profile", "centroid", "low fraction", "modules / draws"], rows)
    rows = []
    for kind, v in prof.get("by_kind", {}).items():
        for layer, name, c, low in zip(v["layers"], v["names"], v["centroid"], v["low_fraction"],
                                       strict=True):  # fmt: skip
            rows.append([name, kind, layer, c, low])
    if rows:
        out += details(
            "centroid and low fraction per module",
            table(["module", "kind", "layer", "centroid", "low fraction"], rows, 2),
        )
    curves = (spec.get("compactness") or {}).get("modules", {})
    rows = [[n, c["best_order"], c["best_fitted"], c["lora_r"], c["lora_2r"], c["gain_over_lora"]]
            for n, c in curves.items() if "fitted" in c]  # fmt: skip
    if rows:
        target = (spec.get("compactness") or {}).get("target", "")
        out += f"<p>Compactness of the {target} (rank r = {spec['compactness']['rank']}):</p>"
        out += table(["module", "best order", "FRAME at best", "LoRA r", "LoRA 2r",
                      "best − LoRA r"], rows)  # fmt: skip
    routing = spec.get("band_routing") or {}
    if routing:
        rows = [[n, r["tokens"], r["mutual_information"]] for n, r in routing.items()]
        out += details(
            "band × expert routing: mutual information per module",
            table(["module", "tokens", "MI (nats)"], rows),
        )
    skipped = spec.get("skipped") or {}
    if skipped:
        out += details(
            "modules without an update matrix",
            table(["module", "why"], [[k, v] for k, v in skipped.items()], 2),
        )
    return out
