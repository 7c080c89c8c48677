"""One record, report.json, from which report.md and report.html are both rendered: the markdown, and per section
heading the figures report.html shows after it. A section added later (the profile) goes into the record and both
files are rendered again, so they always show the same sections."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from mobile_vision_export.errors import UserError
from mobile_vision_export.export.files import write_text_atomic
from mobile_vision_export.report.html import render_html

RECORD = "report.json"


class ReportError(UserError, ValueError):
    """A report record that cannot be read."""


@dataclass(frozen=True)
class Report:
    markdown: str
    figures: dict[str, list[str]] = field(default_factory=dict)  # section heading -> HTML blocks
    recorded: bool = True  # False: rebuilt from an older export's report.md alone, whose figures are unknown

    def with_section(self, heading: str, markdown: str, figures: list[str] | None = None) -> Report:
        """This report with the `## heading` section replaced by `markdown` (which starts with that line), or
        appended."""
        pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## (?!#)|\Z)", re.S | re.M)
        if pattern.search(self.markdown):
            text = pattern.sub(lambda _: markdown.rstrip("\n") + "\n\n", self.markdown).rstrip("\n") + "\n"
        else:
            text = (self.markdown.rstrip("\n") + "\n\n" if self.markdown.strip() else "") + markdown
        return Report(text, {**self.figures, heading: list(figures or [])}, self.recorded)

    def write(self, folder: Path) -> None:
        """report.md and report.html and their record; for an older export without a record only report.md, so its
        report.html keeps the figures this record does not have."""
        write_text_atomic(folder / "report.md", self.markdown)
        if self.recorded:
            write_text_atomic(folder / RECORD, json.dumps({"markdown": self.markdown, "figures": self.figures}) + "\n")
            write_text_atomic(folder / "report.html", render_html(self.markdown, self.figures))


def read_report(folder: Path) -> Report:
    """The report record in `folder`; a report.md without one (an older export) keeps its text; else empty."""
    if (folder / RECORD).is_file():
        try:
            record = json.loads((folder / RECORD).read_text())
            return Report(record["markdown"], record["figures"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ReportError(f"{folder / RECORD} is damaged ({exc}): export the model again") from None
    if (folder / "report.md").is_file():
        return Report((folder / "report.md").read_text(), recorded=False)
    return Report("")
