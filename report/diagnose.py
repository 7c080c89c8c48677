"""diagnose.html (SQNR along the depth of the network, as an inline SVG) and diagnose.json."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from mobile_vision_export.export.files import write_text_atomic
from mobile_vision_export.export.provenance import tool_versions
from mobile_vision_export.models.weights import sha256_file
from mobile_vision_export.validate.diagnose import JUMP_DB, NOISE_FLOOR_DB, Diagnosis

_W, _H, _PAD = 900, 300, 40


def sqnr_curve(diagnosis: Diagnosis) -> str:
    finite = [layer.sqnr_db for layer in diagnosis.layers if math.isfinite(layer.sqnr_db)]
    top = max(finite + [1.0])
    bottom = min(finite + [0.0])
    n = max(len(diagnosis.layers) - 1, 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        v = min(max(v, bottom), top)  # +inf (exact) plots at the top, -inf at the bottom
        return _PAD + i * (_W - 2 * _PAD) / n, _H - _PAD - (v - bottom) * (_H - 2 * _PAD) / (top - bottom or 1)

    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, layer.sqnr_db) for i, layer in enumerate(diagnosis.layers)))
    marks = []
    for i, layer in enumerate(diagnosis.layers):
        x, y = xy(i, layer.sqnr_db)
        colour = "#c00" if layer in diagnosis.worst else "#36c"
        marks.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"><title>#{layer.index} {layer.op} '
            f"{layer.sqnr_db:.1f} dB: {html.escape(layer.tensor)}</title></circle>"
        )
    return (
        f'<svg width="{_W}" height="{_H}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">'
        f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" stroke="#999"/>'
        f'<line x1="{_PAD}" y1="{_PAD}" x2="{_PAD}" y2="{_H - _PAD}" stroke="#999"/>'
        f'<text x="{_PAD}" y="{_PAD - 8}">{top:.0f} dB</text><text x="{_PAD}" y="{_H - 8}">{bottom:.0f} dB</text>'
        f'<text x="{_W - _PAD - 120}" y="{_H - 8}">layer (graph order)</text>'
        f'<polyline points="{points}" fill="none" stroke="#36c"/>{"".join(marks)}</svg>'
    )


def render_html(diagnosis: Diagnosis, float_model: Path, int8_model: Path, images: str) -> str:
    rows = "".join(
        f"<tr{' class=bad' if layer in diagnosis.worst else ''}><td>{layer.index}</td><td>{layer.op}</td>"
        f"<td>{layer.sqnr_db:.1f}</td><td>{layer.drop_db:.1f}</td><td>{layer.cosine:.4f}</td>"
        f"<td><code>{html.escape(layer.tensor)}</code></td></tr>"
        for layer in diagnosis.layers
    )
    jump = diagnosis.first_jump
    jump_text = (
        f"first jump: layer #{jump.index} ({jump.op}), SQNR falls {jump.drop_db:.1f} dB to {jump.sqnr_db:.1f} dB"
        if jump
        else f"no layer loses {JUMP_DB:g} dB or more below {NOISE_FLOOR_DB:g} dB"
    )
    worst = ", ".join(f"#{layer.index} {layer.op} (-{layer.drop_db:.1f} dB)" for layer in diagnosis.worst) or "none"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Per-layer int8 error: {int8_model.name}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:2px 8px;text-align:right}}
td:last-child{{text-align:left}} tr.bad{{background:#fdd}}</style></head><body>
<h1>Per-layer int8 error</h1>
<p>{html.escape(int8_model.name)} against {html.escape(float_model.name)} on {html.escape(images)}.
SQNR of each layer's dequantized int8 output against the float output (errors accumulate along the graph);
"drop" is the SQNR lost against the previous layer.</p>
<p><b>{jump_text}</b>. Worst layers: {worst}.</p>
{sqnr_curve(diagnosis)}
<table><tr><th>#</th><th>op</th><th>SQNR dB</th><th>drop dB</th><th>cosine</th><th>output tensor</th></tr>{rows}</table>
</body></html>
"""


def report_section(diagnosis: Diagnosis, images: str) -> str:
    """The '## Per-layer int8 error' section of report.md."""
    jump = diagnosis.first_jump
    lines = [
        "## Per-layer int8 error",
        "",
        f"int8 against fp32 on {images}; the plot is in diagnose.html. "
        + (
            f"First jump: layer #{jump.index} ({jump.op}), SQNR falls {jump.drop_db:.1f} dB to {jump.sqnr_db:.1f} dB."
            if jump
            else f"No layer loses {JUMP_DB:g} dB or more below {NOISE_FLOOR_DB:g} dB."
        ),
        "",
        "| worst layers | op | SQNR dB | drop dB | output tensor |",
        "|---|---|---:|---:|---|",
    ]
    lines += [
        f"| #{layer.index} | {layer.op} | {layer.sqnr_db:.1f} | {layer.drop_db:.1f} | `{layer.tensor[:80]}` |"
        for layer in diagnosis.worst
    ]
    return "\n".join(lines) + "\n"


def write_diagnosis(out_dir: Path, diagnosis: Diagnosis, float_model: Path, int8_model: Path, images: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "versions": tool_versions(),
        "float_model": float_model.name,
        "float_model_sha256": sha256_file(float_model),
        "int8_model": int8_model.name,
        "int8_model_sha256": sha256_file(int8_model),
        "images": images,
        "first_jump": diagnosis.first_jump.as_dict() if diagnosis.first_jump else None,
        "worst": [layer.as_dict() for layer in diagnosis.worst],
        "layers": [layer.as_dict() for layer in diagnosis.layers],
    }
    write_text_atomic(out_dir / "diagnose.json", json.dumps(data, indent=2, allow_nan=False) + "\n")
    page = out_dir / "diagnose.html"
    write_text_atomic(page, render_html(diagnosis, float_model, int8_model, images))
    return page
