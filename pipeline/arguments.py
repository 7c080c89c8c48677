"""Argument types shared by the command-line tools."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """A whole number of at least 1, or argparse's usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# The largest square input an export accepts. Mobile classifiers run at 224..600 pixels. The pipeline holds about
# 300 calibration and held-out crops of this size as float32 (12 bytes a pixel), some twice: about 8 GB at 1024,
# 30 GB at 2048, so a larger size ends in a MemoryError halfway through on a machine like this one (24 GB).
MAX_INPUT_SIZE = 1024


def input_size_problem(size: int, what: str, fix: str = "choose a smaller --input-size") -> str | None:
    """Why `size` cannot be exported (one line naming `what` and `fix`), or None if it can."""
    if size > MAX_INPUT_SIZE:
        return f"{what} is too large: at most {MAX_INPUT_SIZE} (int8 mobile classifiers run at 224..512); {fix}"
    return None
