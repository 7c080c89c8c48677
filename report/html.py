"""report.html: report.md rendered for a browser, with the plots people look at (parity and accuracy per variant,
per-class drop, per-layer SQNR) and a contact sheet of the photos whose int8 answer changed. One self-contained
file: inline SVG and data-URI thumbnails, no script, nothing fetched."""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

THUMBNAIL = 112
_BAR_W, _LABEL_W, _ROW_H = 420, 200, 22
_STYLE = (
    """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}
th{background:#f0f0f0}td.r{text-align:right}code{background:#f4f4f4;padding:0 2px}
figure{margin:1em 0}figcaption{font-size:13px;color:#555}.sheet{display:flex;flex-wrap:wrap;gap:8px}
.sheet figure{width:"""
    + str(THUMBNAIL)
    + """px;margin:0;font-size:11px}.sheet img{display:block}"""
)


@dataclass(frozen=True)
class Bar:
    label: str
    value: float  # bar length, in the chart's unit
    text: str  # what is written at the end of the bar


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _table(lines: list[str]) -> str:
    head, spec, body = _cells(lines[0]), _cells(lines[1]), [_cells(line) for line in lines[2:]]
    right = {k for k, s in enumerate(spec) if s.endswith(":")}
    rows = ["<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"]
    for cells in body:
        tds = "".join(f"<td{' class=r' if k in right else ''}>{_inline(c)}</td>" for k, c in enumerate(cells))
        rows.append(f"<tr>{tds}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def markdown_html(markdown: str) -> list[tuple[str | None, str]]:
    """The report's markdown (headings, tables, lists, paragraphs) as HTML blocks, each with its section's heading."""
    blocks: list[tuple[str | None, str]] = []
    section, lines = None, markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif heading := re.match(r"(#{1,3}) (.*)", line):
            level, section = len(heading.group(1)), heading.group(2)
            blocks.append((section, f"<h{level}>{_inline(section)}</h{level}>"))
            i += 1
        else:
            kind = "|" if line.startswith("|") else "- " if line.startswith("- ") else ""
            j = i + 1
            while j < len(lines) and lines[j].strip() and not lines[j].startswith("#"):
                starts = "|" if lines[j].startswith("|") else "- " if lines[j].startswith("- ") else ""
                if starts != kind and not (kind == "- " and lines[j].startswith("  ")):
                    break
                j += 1
            chunk = lines[i:j]
            if kind == "|":
                blocks.append((section, _table(chunk)))
            elif kind == "- ":
                items = "".join(f"<li>{_inline(item)}</li>" for item in _list_items(chunk))
                blocks.append((section, f"<ul>{items}</ul>"))
            else:
                blocks.append((section, f"<p>{_inline(' '.join(chunk))}</p>"))
            i = j
    return blocks


def _list_items(lines: list[str]) -> list[str]:
    items: list[str] = []
    for line in lines:
        if line.startswith("- "):
            items.append(line[2:])
        else:  # a continuation line
            items[-1] += " " + line.strip()
    return items


def bar_chart(title: str, bars: list[Bar], full_scale: float) -> str:
    """Horizontal bars, one per row, scaled so `full_scale` fills the width."""
    height = _ROW_H * len(bars) + 10
    rows = []
    for k, bar in enumerate(bars):
        y = 5 + k * _ROW_H
        width = max(0.0, min(bar.value / full_scale, 1.0)) * _BAR_W if full_scale > 0 else 0.0
        rows.append(
            f'<text x="{_LABEL_W - 6}" y="{y + 14}" text-anchor="end">{html.escape(bar.label)}</text>'
            f'<rect x="{_LABEL_W}" y="{y + 2}" width="{width:.1f}" height="{_ROW_H - 6}" fill="#4a7fc1"/>'
            f'<text x="{_LABEL_W + width + 4:.1f}" y="{y + 14}">{html.escape(bar.text)}</text>'
        )
    svg = (
        f'<svg width="{_LABEL_W + _BAR_W + 90}" height="{height}" xmlns="http://www.w3.org/2000/svg" '
        f'font-family="sans-serif" font-size="12">{"".join(rows)}</svg>'
    )
    return f"<figure>{svg}<figcaption>{html.escape(title)}</figcaption></figure>"


CHAR_WIDTH, LINE_HEIGHT = 7.0, 13.0  # a 12 px sans-serif label's width per character (about) and line height


def scatter_chart(title: str, points: list[tuple[str, float, float]], x_label: str, y_label: str) -> str:
    """Labelled points (label, x, y) on linear axes from 0 to the largest value of each; a point in the right half
    has its label on its left, so that long names stay inside the chart."""
    width, height, left, bottom = 640, 320, 60, 40
    x_top = max((x for _, x, _ in points), default=0) or 1.0
    y_top = max((y for _, _, y in points), default=0) or 1.0
    plot_w, plot_h = width - left - 40, height - bottom - 20

    def at(x: float, y: float) -> tuple[float, float]:
        return left + x / x_top * plot_w, 20 + plot_h - y / y_top * plot_h

    marks, placed = [], []  # placed: (left, right, baseline) of each label so far
    for label, x, y in sorted(points, key=lambda p: -p[2]):
        px, py = at(x, y)
        right_half = x > x_top / 2
        anchor, tx = ("end", px - 6) if right_half else ("start", px + 6)
        span = (tx - CHAR_WIDTH * len(label), tx) if right_half else (tx, tx + CHAR_WIDTH * len(label))
        ty = py + 4
        while any(a < span[1] and span[0] < b and abs(ty - t) < LINE_HEIGHT for a, b, t in placed):
            ty += LINE_HEIGHT  # below a label it would overwrite
        placed.append((*span, ty))
        leader = (
            f'<line x1="{px:.1f}" y1="{py:.1f}" x2="{tx:.1f}" y2="{ty - 4:.1f}" stroke="#bbb"/>' if ty > py + 4 else ""
        )
        marks.append(
            f'{leader}<circle cx="{px:.1f}" cy="{py:.1f}" r="4" fill="#4a7fc1"/>'
            f'<text x="{tx:.1f}" y="{ty:.1f}" text-anchor="{anchor}">{html.escape(label)}</text>'
        )
    x0, y0 = at(0, 0)
    axes = (
        f'<line x1="{x0}" y1="{y0}" x2="{x0 + plot_w}" y2="{y0}" stroke="#555"/>'
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="20" stroke="#555"/>'
        f'<text x="{x0 + plot_w / 2}" y="{height - 8}" text-anchor="middle">{html.escape(x_label)} (0 to {x_top:.3g})'
        "</text>"
        f'<text x="14" y="{20 + plot_h / 2}" text-anchor="middle" transform="rotate(-90 14 {20 + plot_h / 2})">'
        f"{html.escape(y_label)} (0 to {y_top:.3g})</text>"
    )
    svg = (
        f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" '
        f'font-size="12">{axes}{"".join(marks)}</svg>'
    )
    return f"<figure>{svg}<figcaption>{html.escape(title)}</figcaption></figure>"


def _thumbnail(path: Path) -> str:
    with Image.open(path) as image:
        square = ImageOps.fit(ImageOps.exif_transpose(image).convert("RGB"), (THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    square.save(buffer, "JPEG", quality=80)
    return base64.b64encode(buffer.getvalue()).decode()


def contact_sheet(title: str, photos: list[tuple[Path, str]]) -> str:
    """Thumbnails with a caption each (what the models answered)."""
    cells = "".join(
        f'<figure><img alt="{html.escape(path.name)}" width="{THUMBNAIL}" height="{THUMBNAIL}" '
        f'src="data:image/jpeg;base64,{_thumbnail(path)}"><figcaption>{html.escape(caption)}</figcaption></figure>'
        for path, caption in photos
    )
    return f"<h3>{html.escape(title)}</h3><div class=sheet>{cells}</div>"


def render_html(markdown: str, figures: dict[str, list[str]]) -> str:
    """The whole page: each section of `markdown`, followed by the figures given for its heading."""
    blocks = markdown_html(markdown)
    title = blocks[0][0] if blocks else "report"
    parts, placed = [], set()
    for k, (section, block) in enumerate(blocks):
        parts.append(block)
        last_of_section = k + 1 == len(blocks) or blocks[k + 1][0] != section
        if last_of_section and section in figures and section not in placed:
            parts += figures[section]
            placed.add(section)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title or "")}</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )
