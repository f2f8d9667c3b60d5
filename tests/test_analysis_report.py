"""Figures and the HTML report from hand-made analysis dicts (the contract with the numbers side).

The ``*_dict`` builders below follow exactly the formats documented for ``order_statistics``,
``RoutingRecorder.statistics`` and ``decorrelation`` (docs/analysis.md): if those formats change,
these tests say so. The report is also rendered in headless Chromium to check every image loads.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import pytest

from frame_peft.analysis.figures import analysis_figures
from frame_peft.analysis.report import write_report

PNG = b"\x89PNG\r\n\x1a\n"
HOSTILE_TASK = "<b>gsm8k</b>"  # must come out escaped, never as markup
KINDS = ("q_proj", "v_proj")


def _names(layers: int) -> list[tuple[str, int, str]]:
    return [(f"model.layers.{i}.self_attn.{k}", i, k) for i in range(layers) for k in KINDS]


def order_dict(layers: int = 3, experts: int = 4, steps=(1, 2, 3)) -> dict:
    modules, trajectory, by_kind = {}, {}, {}
    for name, layer, kind in _names(layers):
        initial = [(e + 0.5) / experts for e in range(experts)]
        final = [min(1.0, a + 0.05 * (layer - e)) for e, a in enumerate(initial)]
        modules[name] = {"layer": layer, "kind": kind, "orders": final, "initial": initial}
        trajectory[name] = [
            [a + (f - a) * s / steps[-1] for a, f in zip(initial, final, strict=True)]
            for s in steps
        ]
        row = by_kind.setdefault(kind, {"layers": [], "orders": []})
        row["layers"].append(layer)
        row["orders"].append(final)
    flat = [a for m in modules.values() for a in m["orders"]]
    stats = {"mean": sum(flat) / len(flat), "std": 0.2, "min": min(flat), "max": max(flat)}
    return {
        "modules": modules,
        "by_kind": by_kind,
        "per_layer": [{"layer": i, **stats} for i in range(layers)],
        "summary": {**stats, "mean_abs_change": 0.05},
        "trajectory": {"steps": list(steps), "modules": trajectory},
    }


def routing_dict(layers: int = 3, experts: int = 4, tasks=("arc_easy", HOSTILE_TASK)) -> dict:
    modules = {}
    for name, layer, kind in _names(layers):
        load = (
            [0.7] + [0.3 / (experts - 1)] * (experts - 1) if layer == 0 else [1 / experts] * experts
        )
        modules[name] = {
            "layer": layer,
            "kind": kind,
            "num_experts": experts,
            "top_k": 1,
            "num_tokens": 100,
            "load": load,
            "importance": load,
            "entropy": 0.5,
            "load_entropy": 0.9,
            "top1_prob": 0.6,
            "per_task_load": dict.fromkeys(tasks, load),
            "per_task_tokens": dict.fromkeys(tasks, 50),
        }
    skewed = [0.5] + [0.5 / (experts - 1)] * (experts - 1)
    return {
        "tasks": list(tasks),
        "modules": modules,
        "by_layer_task": {
            str(i): {"tasks": list(tasks), "load": [[1 / experts] * experts, skewed]}
            for i in range(layers)
        },
        "warnings": ["model.layers.0.self_attn.q_proj: expert 0 takes 70% of the load <script>"],
    }


def decorrelation_dict(layers: int = 3, experts: int = 4, method: str = "frame") -> dict:
    def matrix(off):
        return [[1.0 if i == j else off for j in range(experts)] for i in range(experts)]

    frame = method == "frame"
    modules = {
        name: {
            "layer": layer,
            "kind": kind,
            "method": method,
            "num_experts": experts,
            "delta_cosine": matrix(0.1),
            "col_overlap": matrix(0.3),
            "row_overlap": matrix(None if layer == 1 else 0.2),  # None: an all-zero expert
            "coherence": matrix(0.5) if frame else None,
            "orders": [0.2 * e for e in range(experts)] if frame else None,
        }
        for name, layer, kind in _names(layers)
    }
    per_layer = [
        {
            "layer": i,
            "mean_offdiag_cosine": 0.1,
            "mean_abs_offdiag_cosine": 0.1,
            "mean_offdiag_col_overlap": 0.3,
            "mean_offdiag_row_overlap": 0.2,
            "mean_offdiag_coherence": 0.5 if frame else None,
        }
        for i in range(layers)
    ]
    summary = {k: v for k, v in per_layer[0].items() if k != "layer"}
    summary["mean_offdiag_cosine"] = float("nan")  # must become null in analysis.json
    return {
        "modules": modules,
        "per_layer": per_layer,
        "summary": summary,
        "skipped": {"lm_head": "not a mixture <module>"},
    }


def fixture_analysis() -> dict:
    run = {
        "recipe": "tiny",
        "model": "tiny-llama",
        "parameters": {"total": 100, "trainable": 10},
        "train_steps": 3,
        "items": {"arc_easy": 4, HOSTILE_TASK: 4},
    }
    return {
        "frame_peft_version": "test",
        "settings": {"max_items_per_task": 4, "coherence": True},
        "runs": [
            {
                **run,
                "label": "frame",
                "method": "frame",
                "notes": [],
                "orders": order_dict(),
                "routing": routing_dict(),
                "decorrelation": decorrelation_dict(),
            },
            {
                **run,
                "label": "moe-lora",
                "method": "moe-lora",
                "notes": [],
                "orders": None,
                "routing": routing_dict(),
                "decorrelation": decorrelation_dict(method="moe-lora"),
            },
            {
                **run,
                "label": "lora",
                "method": "lora",
                "orders": None,
                "routing": {},
                "decorrelation": None,
                "notes": ["lora has no router: no held-out pass"],
            },
        ],
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    analysis = fixture_analysis()
    figures = analysis_figures(analysis, root / "figs")  # elsewhere: must be copied beside
    report = write_report(analysis, figures, root / "out" / "report.html")
    return analysis, figures, report


def test_figures_are_pngs_one_set_per_section(written):
    _, figures, _ = written
    expected = {
        *(f"orders/frame/{n}" for n in ("final_orders", "trajectories", "histogram")),
        *(
            f"routing/{r}/{n}"
            for r in ("frame", "moe-lora")
            for n in ("load", "entropy", "task_load")
        ),
        *(
            f"decorrelation/{r}/{n}"
            for r in ("frame", "moe-lora")
            for n in ("matrices", "per_layer")
        ),
        "decorrelation/comparison/per_layer",
    }
    assert set(figures) == expected  # nothing for lora (no experts), no orders for moe-lora
    for path in figures.values():
        assert path.is_file() and path.read_bytes()[:8] == PNG


def test_report_is_self_contained_and_escaped(written):
    _, figures, report = written
    text = report.read_text()
    sources = re.findall(r'<img [^>]*src="([^"]*)"', text)
    assert len(sources) == len(figures) == text.count("<img ")
    inlined = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert inlined == {p.read_bytes() for p in figures.values()}  # each figure exactly once
    assert not re.search(r'(src|href)="(?!data:)', text) and "url(" not in text
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert HOSTILE_TASK not in text and "&lt;b&gt;gsm8k&lt;/b&gt;" in text
    assert "&lt;script&gt;" in text and "not a mixture &lt;module&gt;" in text
    # collapse warnings are visible (not folded into a <details>), the n/a cases are explained
    warn = re.search(r'<div class="warn">(.*?)</div>', text, re.S)
    assert warn and "expert 0 takes 70% of the load" in warn.group(1)
    assert "No FRAME module in this run (method moe-lora)" in text
    assert "no routing statistics" in text and "Decorrelation skipped" in text
    assert "lora has no router" in text


def test_json_and_pngs_beside_the_report(written):
    analysis, figures, report = written

    def no_nan(token):
        raise AssertionError(f"analysis.json holds {token}")

    saved = json.loads((report.parent / "analysis.json").read_text(), parse_constant=no_nan)
    assert saved["runs"][0]["decorrelation"]["summary"]["mean_offdiag_cosine"] is None
    assert saved["runs"][0]["orders"] == analysis["runs"][0]["orders"]
    assert (
        saved["runs"][0]["decorrelation"]["modules"]["model.layers.1.self_attn.q_proj"][
            "row_overlap"
        ][0][1]
        is None
    )
    beside = {p.name for p in report.parent.glob("*.png")}
    assert beside == {p.name for p in figures.values()}


def _chromium() -> str | None:
    return next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )


_PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.every(function (i) { return i.complete && i.naturalWidth > 0; });
  document.title = "IMAGES " + (ok ? "loaded" : "broken") + " " + imgs.length;
});
</script>"""


def _render(browser: str, html: str, tmp_path) -> tuple[str, int]:
    """Open ``html`` in headless Chromium; ('loaded'|'broken', number of images)."""
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", _PROBE + "</body>"))
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=10000",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    title = re.search(r"<title>IMAGES (loaded|broken) (\d+)</title>", done.stdout)
    assert title, f"no probe title in Chromium's DOM (rc {done.returncode}): {done.stderr[-500:]}"
    return title.group(1), int(title.group(2))


@pytest.mark.skipif(
    _chromium() is None,
    reason="no chromium/chromium-browser/google-chrome on "
    "PATH (scripts/ensure_chromium.sh installs it)",
)
def test_report_renders_in_chromium_and_a_broken_image_is_caught(written, tmp_path):
    _, figures, report = written
    browser = _chromium()
    html = report.read_text()
    assert _render(browser, html, tmp_path) == ("loaded", len(figures))
    # negative control: one image with a corrupt payload must be reported as not loaded
    first = re.search(r'src="data:image/png;base64,([^"]{40})', html).group(1)
    broken = html.replace(first, "A" * 40, 1)
    assert _render(browser, broken, tmp_path) == ("broken", len(figures))
