"""A console display of pipeline stages: a spinner while each runs, then its wall time."""

from __future__ import annotations

import time
from contextlib import contextmanager

from rich.console import Console


class StageTimer:
    """Times named stages and shows them on the console (stderr, so stdout stays clean)."""

    def __init__(self, title: str, console: Console | None = None):
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.timings: dict[str, float] = {}
        self.console.print(f"[bold]{title}[/bold]")

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            with self.console.status(f"{name} ..."):
                yield
        except Exception:
            self.console.print(f"  [red]x[/red] {name} failed after {time.perf_counter() - start:.1f} s")
            raise
        self.timings[name] = time.perf_counter() - start
        self.console.print(f"  [green]ok[/green] {name:<34} {self.timings[name]:6.1f} s")

    def note(self, text: str) -> None:
        self.console.print(f"  {text}")
