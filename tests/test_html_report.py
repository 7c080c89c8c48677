"""report.html: report.md's sections rendered for a browser, with figures after the sections they illustrate."""

import base64
import io
import re

import numpy as np
from PIL import Image

from mobile_vision_export.export.images import heldout_photos
from mobile_vision_export.report.html import Bar, bar_chart, contact_sheet, markdown_html, render_html
from tests.conftest import open_in_browser

MARKDOWN = """# model: PASSED parity

- Source: `zoo`
- Weights: **random**
  continued here

## Parity

| variant | SQNR dB |
|---|---:|
| int8 | 14.3 |

Some <text> & more.
"""


def test_markdown_sections_become_html_blocks():
    blocks = markdown_html(MARKDOWN)
    assert [section for section, _ in blocks] == ["model: PASSED parity"] * 2 + ["Parity"] * 3
    assert blocks[1][1] == "<ul><li>Source: <code>zoo</code></li><li>Weights: <b>random</b> continued here</li></ul>"
    assert blocks[3][1] == (
        "<table><tr><th>variant</th><th>SQNR dB</th></tr><tr><td>int8</td><td class=r>14.3</td></tr></table>"
    )
    assert blocks[4][1] == "<p>Some &lt;text&gt; &amp; more.</p>"


def test_figures_follow_their_section_and_photos_are_embedded(tmp_path):
    photos = [p.path for p in heldout_photos()[:3]]
    chart = bar_chart("SQNR", [Bar("int8", 14.3, "14.3 dB"), Bar("fp16", 41.5, "41.5 dB")], 41.5)
    sheet = contact_sheet("Changed answers", [(path, f"photo {k}") for k, path in enumerate(photos)])
    page = render_html(MARKDOWN, {"Parity": [chart, sheet], "Not a section": ["<p>never shown</p>"]})
    assert page.index("Some &lt;text&gt;") < page.index("<svg") < page.index("Changed answers")
    assert (
        "never shown" not in page
        and "<script" not in page
        and "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )
    thumbnails = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert [Image.open(io.BytesIO(base64.b64decode(t))).size for t in thumbnails] == [(112, 112)] * 3
    (tmp_path / "report.html").write_text(page)
    assert open_in_browser(tmp_path / "report.html", tmp_path / "shot.png") == []
    shot = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB")).astype(int)
    photo_like = np.abs(shot[..., 0] - shot[..., 2]) > 30  # colour from the thumbnails and the blue bars
    assert photo_like.mean() > 0.002
