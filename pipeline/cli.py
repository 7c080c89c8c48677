"""What every command shares: --version, -v/--verbose, and the libraries' native log lines kept out of the output."""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from mobile_vision_export.export.provenance import TOOL_NAME, tool_version
from mobile_vision_export.pipeline.signals import run_interruptible

# Native log lines of the runtimes (LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", absl/glog
# info and warning lines): not ours, and nothing a user acts on. Errors always pass.
_NOISE = re.compile(rb"^(INFO: |[IW]\d{4} \d\d:\d\d:\d\d|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] |WARNING: All log)")


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (the usage is what --help is for)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"{TOOL_NAME} {tool_version()}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also show the libraries' own log lines (LiteRT, TensorFlow)"
    )


def wants_verbose(argv: list[str]) -> bool:
    return "-v" in argv or "--verbose" in argv


@contextmanager
def quiet_libraries(verbose: bool):
    """Run the block with native code's stderr (file descriptor 2, also the children's) passed through a filter
    that drops the runtimes' info lines; Python's own stderr goes straight to the terminal."""
    if verbose:
        yield
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    python_stderr = sys.stderr
    if python_stderr is sys.__stderr__:  # not when a caller (a test) has replaced it: its writes stay its own
        sys.stderr = io.TextIOWrapper(open(os.dup(terminal), "wb", buffering=0), write_through=True)

    pipe, out = open(read_end, "rb", buffering=0), open(os.dup(terminal), "wb", buffering=0)

    def pump() -> None:
        with pipe, out:
            for line in iter(pipe.readline, b""):
                if not _NOISE.match(line):
                    out.write(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        if sys.stderr is not python_stderr:
            sys.stderr.close()
            sys.stderr = python_stderr
        os.dup2(terminal, 2)  # the pipe's last write end closes: the pump reads to the end and stops
        os.close(terminal)
        thread.join(timeout=5)


SCRIPTS = ("mobile-vision-export", "mve-profile", "mve-diagnose", "mve-bundle", "mve-arm-setup", "mve-evaluate")


def prog_name(module_command: str) -> str:
    """The name the user ran: an installed script's, else `module_command` (python -m ...)."""
    name = Path(sys.argv[0]).name
    return name if name in SCRIPTS else module_command


def run_command(body: Callable[[], int], argv: list[str] | None, stopped: str) -> int:
    """A command's body with the libraries' log lines filtered (unless -v) and Ctrl-C / SIGTERM as one line and exit
    130 / 143 (`stopped` says what was left undone)."""
    argv = sys.argv[1:] if argv is None else argv
    with quiet_libraries(wants_verbose(argv)):
        return run_interruptible(body, stopped)
