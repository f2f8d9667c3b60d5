"""One self-contained HTML report of an analysis, plus ``analysis.json`` and the PNGs beside it.

The report needs nothing else to be read: figures are inlined as ``data:image/png;base64`` URIs,
the style sheet is inline, there is no script and no external URL. Every string taken from the
analysis (module, task and run names, warnings) is escaped with :func:`html.escape`.

``analysis`` is the dict of :func:`frame_peft.analysis.run.analyze_run`::

    {"frame_peft_version": str, "settings": {...},
     "runs": [{"label", "run_dir", "method", "recipe", "model", "parameters": {...},
               "train_steps", "items": {task: n}, "notes": [str],
               "orders": dict | None, "routing": dict, "decorrelation": dict | None}, ...]}

``figures`` maps ``"<section>/<run label>/<name>"`` to PNG paths
(:func:`.figures.analysis_figures`); a figure whose key names no section or run still
appears, under "Other figures".
"""

from __future__ import annotations

import base64
import html
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._files import atomic_write_bytes, write_json
from .figures import SECTIONS

__all__ = ["jsonable", "write_analysis_json", "write_report"]

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:2px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.5em}table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f2f2f2}
td.s,th.s{text-align:left}figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}.warn{background:#fff4e0;border-left:4px solid #e69500;
padding:.5em 1em;margin:.8em 0}.note{background:#eef4fb;border-left:4px solid #4a7fc1;
padding:.5em 1em;margin:.8em 0}dl.defs dt{font-weight:600}dl.defs dd{margin:0 0 .4em 1.5em}
details{margin:.5em 0}summary{cursor:pointer;color:#335}code{font-size:.92em}
"""

_DEFINITIONS = {
    "orders": [
        (
            "order a",
            "the fractional Fourier order of an expert's transform, a = sigmoid(θ) in (0, 1): "
            "a = 0 is the identity (a MoE-LoRA expert), a = 1 the discrete Fourier transform.",
        ),
        ("mean_abs_change", "mean over modules and experts of |a_final − a_initial|."),
        ("per layer", "mean, std, min, max of the orders of all experts of that layer's modules."),
    ],
    "routing": [
        (
            "load",
            "share of the routed top-k slots that go to expert e, over non-padding "
            "held-out tokens (dense routers: the argmax expert); sums to 1, uniform = 1/E.",
        ),
        ("importance", "mean router probability of expert e over the same tokens."),
        (
            "entropy",
            "mean over tokens of H(p)/log E of the router probabilities p "
            "(1 = uniform, 0 = always one expert).",
        ),
        ("load entropy", "H(load)/log E: 1 = balanced load, 0 = one expert takes every token."),
        ("top-1 prob", "mean over tokens of the largest router probability."),
        (
            "warnings",
            "routing collapse: a dead expert (load < 0.1/E) or a dominant one (load > 0.9/k, "
            "i.e. chosen by 90% of the tokens; k = slots per token).",
        ),
    ],
    "decorrelation": [
        (
            "cosine",
            "cos(vec ΔW_e, vec ΔW_f) = ⟨B_eA_e, B_fA_f⟩_F / (‖B_eA_e‖_F ‖B_fA_f‖_F), "
            "computed from the factors (no d×d matrix); 0 = orthogonal updates.",
        ),
        (
            "col / row overlap",
            "‖U_eᵀU_f‖_F² / min(rank_e, rank_f) of the column (row) "
            "spaces of ΔW_e and ΔW_f: 0 = orthogonal subspaces, 1 = one inside the other.",
        ),
        (
            "coherence",
            "μ(e, f) = max_ij |(T_{a_e}^H T_{a_f})_ij| for the experts' input-side transforms "
            "(length n = d_in): 1/√n = maximally incoherent bases, 1 = the same basis. MoE-LoRA, "
            "HydraLoRA and HMoRA experts all use the identity: all ones; FourierMoE: none.",
        ),
        (
            "off-diagonal means",
            "averages over expert pairs e ≠ f of one module, then over "
            "the modules of a layer (per layer) or of the model (summary).",
        ),
    ],
}

_TITLES = {"orders": "FRAME orders", "routing": "Routing", "decorrelation": "Expert decorrelation"}


def jsonable(obj: Any) -> Any:
    """``obj`` with NaN/±inf floats as ``None``, tuples as lists, paths and others as strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return jsonable(obj.item())
    return str(obj)


def write_analysis_json(analysis: Mapping[str, Any], path: str | Path) -> Path:
    """Write the numbers as strict JSON (NaN -> null); returns the path."""
    return write_json(path, jsonable(analysis), indent=1, allow_nan=False)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.3f}"
    return _e(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], text_cols: int = 1) -> str:
    def cell(tag: str, i: int, v: Any) -> str:
        cls = ' class="s"' if i < text_cols else ""
        return f"<{tag}{cls}>{_e(v) if tag == 'th' or i < text_cols else _num(v)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _details(summary: str, inner: str) -> str:
    return f"<details><summary>{_e(summary)}</summary>{inner}</details>"


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}">'
        f"<figcaption>{_e(caption)} ({_e(Path(path).name)})</figcaption></figure>"
    )


def _defs(section: str) -> str:
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in _DEFINITIONS[section])
    inner = f'<dl class="defs">{items}</dl>'
    return f"<details open><summary>What the numbers mean</summary>{inner}</details>"


def _summary_table(runs: Sequence[Mapping]) -> str:
    rows = []
    for r in runs:
        p = r.get("parameters") or {}
        items = ", ".join(f"{t} {n}" for t, n in (r.get("items") or {}).items()) or "none"
        rows.append(
            [
                r["label"],
                r.get("method"),
                r.get("recipe"),
                r.get("model"),
                items,
                r.get("run_dir"),
                p.get("trainable"),
                p.get("total"),
                p.get("active_per_token"),
                r.get("train_steps"),
            ]
        )
    header = [
        "run",
        "method",
        "recipe",
        "model",
        "held-out items analysed",
        "run directory",
        "trainable params",
        "total params",
        "active params / token",
        "train steps",
    ]
    return _table(header, rows, text_cols=6)


def _orders_block(orders: Mapping | None, method: str) -> str:
    if not orders:
        return f'<p class="note">No FRAME module in this run (method {_e(method)}): no orders.</p>'
    s = orders.get("summary") or {}
    keys = ["mean", "std", "min", "max", "mean_abs_change"]
    out = _table(
        ["modules", *keys],
        [[len(orders.get("modules") or {}), *[s.get(k) for k in keys]]],
        text_cols=0,
    )
    per_layer = orders.get("per_layer") or []
    if per_layer:
        rows = [
            [r.get("layer"), r.get("mean"), r.get("std"), r.get("min"), r.get("max")]
            for r in per_layer
        ]
        out += _details("orders per layer", _table(["layer", "mean", "std", "min", "max"], rows))
    if not orders.get("trajectory"):
        out += '<p class="note">No orders.jsonl in the run directory: no trajectories.</p>'
    scans = orders.get("scans") or []
    if scans:
        rows = [
            [r["step"], "first" if r["first"] else "rescan", f"{r['num_jumps']}/{r['experts']}",
             f"{r['at_zero']}/{r['experts']}", r.get("note") or ""]
            for r in scans
        ]  # fmt: skip
        out += "<p>Order scans (dotted red lines in the trajectories):</p>" + _table(
            ["step", "scan", "experts moved", "at order 0 after", "note"], rows, text_cols=5
        )
    return out


def _routing_block(routing: Mapping | None, method: str) -> str:
    if not routing or not routing.get("modules"):
        return (
            f'<p class="note">No routed mixture layer in this run (method {_e(method)}): '
            "no routing statistics.</p>"
        )
    warnings = routing.get("warnings") or []
    out = ""
    if warnings:
        lines = "".join(f"<li>{_e(w)}</li>" for w in warnings)
        out += f'<div class="warn"><b>Collapse warnings ({len(warnings)})</b><ul>{lines}</ul></div>'
    else:
        out += '<p class="note">No collapse warning: no dead or dominant expert.</p>'
    modules = routing["modules"]
    tasks = routing.get("tasks") or []
    task_rows = [
        [
            t,
            sum((m.get("per_task_tokens") or {}).get(t, 0) for m in modules.values())
            // max(1, len(modules)),
        ]
        for t in tasks
    ]
    out += _table(["task", "tokens per module"], task_rows)
    rows = []
    for name, m in sorted(
        modules.items(), key=lambda kv: (kv[1].get("layer") is None, kv[1].get("layer") or 0, kv[0])
    ):
        load = m.get("load") or []
        rows.append(
            [
                name,
                m.get("layer"),
                m.get("num_experts"),
                m.get("top_k"),
                m.get("num_tokens"),
                m.get("entropy"),
                m.get("load_entropy"),
                m.get("top1_prob"),
                min(load, default=None),
                max(load, default=None),
            ]
        )
    header = [
        "module",
        "layer",
        "E",
        "top-k",
        "tokens",
        "entropy",
        "load entropy",
        "top-1 prob",
        "min load",
        "max load",
    ]
    out += _details(f"routing per module ({len(rows)})", _table(header, rows))
    return out


_DECOR_KEYS = [
    "mean_offdiag_cosine",
    "mean_abs_offdiag_cosine",
    "mean_offdiag_col_overlap",
    "mean_offdiag_row_overlap",
    "mean_offdiag_coherence",
]
_DECOR_HEAD = ["cosine", "|cosine|", "col overlap", "row overlap", "coherence"]


def _decorrelation_block(dec: Mapping | None, method: str) -> str:
    if not dec:
        return (
            f'<p class="note">Decorrelation skipped for this run (method {_e(method)}): '
            "no per-expert updates to compare.</p>"
        )
    out = ""
    if not dec.get("modules"):
        out += (
            f'<p class="note">No module of this run (method {_e(method)}) has two or more '
            "experts with per-expert factors: nothing to compare.</p>"
        )
    else:
        s = dec.get("summary") or {}
        out += _table(
            ["modules", *_DECOR_HEAD],
            [[len(dec["modules"]), *[s.get(k) for k in _DECOR_KEYS]]],
            text_cols=0,
        )
        rows = [
            [r.get("layer"), *[r.get(k) for k in _DECOR_KEYS]] for r in dec.get("per_layer") or []
        ]
        if rows:
            out += _details("decorrelation per layer", _table(["layer", *_DECOR_HEAD], rows))
    skipped = dec.get("skipped") or {}
    if skipped:
        out += _details(
            f"modules skipped ({len(skipped)})",
            _table(["module", "reason"], sorted(skipped.items()), text_cols=2),
        )
    return out


_BLOCKS = {
    "orders": _orders_block,
    "routing": _routing_block,
    "decorrelation": _decorrelation_block,
}


def _spectral_section(runs: Sequence[Mapping], figs: Mapping[str, Path], used: set[str]) -> str:
    """The "Spectral analysis" section (:mod:`.spectral_report`): definitions, then per run its
    tables and its ``"spectral/<run>/..."`` figures (marked used)."""
    from .spectral_report import DEFINITIONS, spectral_block

    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in DEFINITIONS)
    parts = [
        '<h2 id="spectral">Spectral analysis</h2><details open><summary>What the numbers '
        f'mean</summary><dl class="defs">{items}</dl></details>'
    ]
    for r in runs:
        parts.append(f"<h3>{_e(r['label'])} ({_e(r.get('method', '?'))})</h3>")
        parts.append(spectral_block(r.get("spectral"), _table, _details))
        for key, fig in figs.items():
            if _split_key(key)[:2] == ("spectral", r["label"]):
                parts.append(_img(fig, _split_key(key)[2]))
                used.add(key)
    return "\n".join(parts)


def _split_key(key: str) -> tuple[str, str, str]:
    parts = str(key).split("/", 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else ("", "", str(key))


def write_report(
    analysis: Mapping[str, Any], figures: Mapping[str, str | Path], path: str | Path
) -> Path:
    """Write the HTML report to ``path`` and ``analysis.json`` (+ any PNG not yet there) beside it.

    Every figure of ``figures`` appears exactly once, as an inlined ``<img>``. Returns ``path``.
    """
    path = Path(path)
    out = path.parent
    out.mkdir(parents=True, exist_ok=True)
    figs: dict[str, Path] = {}
    for key, fig in figures.items():
        fig = Path(fig)
        if fig.resolve().parent != out.resolve():  # keep the PNG files beside the report
            target = out / fig.name
            shutil.copyfile(fig, target)
            fig = target
        figs[key] = fig
    write_analysis_json(analysis, out / "analysis.json")

    runs = list(analysis.get("runs") or [])
    labels = [r["label"] for r in runs]
    used: set[str] = set()
    n_warn = sum(len((r.get("routing") or {}).get("warnings") or []) for r in runs)
    body = [f"<h1>frame-peft analysis: {_e(', '.join(labels) or 'no run')}</h1>"]
    settings = analysis.get("settings") or {}
    meta = ", ".join(f"{k} = {v}" for k, v in settings.items())
    body.append(
        f"<p>frame-peft {_e(analysis.get('frame_peft_version', '?'))}"
        f"{'; ' + _e(meta) if meta else ''}. Numbers: <code>analysis.json</code> "
        "beside this file.</p>"
    )
    if n_warn:
        body.append(
            f'<p class="warn"><b>{n_warn} routing collapse warning(s)</b>: see Routing.</p>'
        )
    body.append("<h2>Runs</h2>" + _summary_table(runs))
    for r in runs:
        for note in r.get("notes") or []:
            body.append(f'<p class="note">{_e(r["label"])}: {_e(note)}</p>')
    for section in analysis.get("sections", SECTIONS):
        body.append(f'<h2 id="{section}">{_e(_TITLES[section])}</h2>{_defs(section)}')
        for r in runs:
            body.append(f"<h3>{_e(r['label'])} ({_e(r.get('method', '?'))})</h3>")
            body.append(_BLOCKS[section](r.get(section), str(r.get("method", "?"))))
            for key, fig in figs.items():
                if _split_key(key)[:2] == (section, r["label"]):
                    body.append(_img(fig, _split_key(key)[2]))
                    used.add(key)
        compared = [
            k for k in figs if k not in used and _split_key(k)[:2] == (section, "comparison")
        ]
        if compared:
            body.append(f"<h3>{_e(' vs '.join(labels))}</h3>")
            for key in compared:
                body.append(_img(figs[key], _split_key(key)[2]))
                used.add(key)
    if any(r.get("spectral") for r in runs):
        body.append(_spectral_section(runs, figs, used))
    rest = [k for k in figs if k not in used]
    if rest:
        body.append("<h2>Other figures</h2>" + "".join(_img(figs[k], k) for k in rest))
    title = _e(f"frame-peft analysis: {', '.join(labels)}")
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    atomic_write_bytes(path, page.encode("utf-8"))
    return path
