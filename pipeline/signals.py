"""Ctrl-C and SIGTERM for the command-line tools: unwind like KeyboardInterrupt, then one line and exit 128+N.

Python's default SIGTERM kills the process on the spot: no `finally` runs, so a converter subprocess keeps running
on its own and a half-written staging folder stays behind. Under `interrupts_raise()` both SIGINT and SIGTERM raise
`Interrupted` in the main thread instead, so every context manager on the way out cleans up (pipeline.partial_dir
removes the partial folder, export.tflite_convert stops the converter's process group).
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; a KeyboardInterrupt, so code that cleans up on Ctrl-C cleans up on SIGTERM too."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signal_of(exc: KeyboardInterrupt) -> int:
    """The signal behind an interrupt (a plain KeyboardInterrupt is Ctrl-C)."""
    return getattr(exc, "signum", signal.SIGINT)


@contextmanager
def interrupts_raise():
    """Within the block, SIGINT and SIGTERM raise Interrupted in the main thread; the previous handlers come back
    afterwards. Only the first signal raises: later ones are ignored while the first unwinds, so the clean-up
    (bounded: stopping the converter takes at most a few seconds) is not itself cut short. A signal the process
    was started ignoring (SIG_IGN, e.g. SIGINT under nohup) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum, frame):
        if fired:
            return
        fired.append(signum)
        raise Interrupted(signum)

    previous = {}
    for signum in HANDLED:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        fired.append(0)  # a signal from here on must not raise inside this clean-up
        for signum, old in previous.items():
            signal.signal(signum, old)


def sigterm_raises() -> None:
    """For a worker process: SIGTERM unwinds like Ctrl-C (Interrupted), so its converter is stopped and its partial
    folder removed."""

    def handler(signum, frame):
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, handler)


def run_interruptible(body: Callable[[], int], stopped: str) -> int:
    """Run a CLI's `body`; on SIGINT or SIGTERM print `error: interrupted (SIGNAME): <stopped>` and return 128+N
    (130 for Ctrl-C, 143 for SIGTERM) instead of a traceback."""
    with interrupts_raise():
        try:
            return body()
        except KeyboardInterrupt as exc:
            signum = signal_of(exc)
            print(f"error: interrupted ({signal.Signals(signum).name}): {stopped}", file=sys.stderr)
            return 128 + signum
