"""Argument types shared by the command-line tools."""

from __future__ import annotations

import argparse

from mobile_vision_export.export.images import hw


def positive_int(text: str) -> int:
    """A whole number of at least 1, or argparse's usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def image_size(text: str) -> int | tuple[int, int]:
    """An input size: S (square) or HxW (height x width), e.g. 224 or 48x192."""
    parts = text.lower().split("x")
    try:
        values = [int(part) for part in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected S or HxW in whole pixels (224 or 48x192), got '{text}'")
    return values[0] if len(values) == 1 else (values[0], values[1])


# The largest input an export accepts, in pixels: this size squared. Mobile classifiers run at 224..600 pixels.
# The pipeline holds about 300 calibration and held-out crops of this size as float32 (12 bytes a pixel), some
# twice: about 8 GB at 1024, 30 GB at 2048, so a larger size ends in a MemoryError halfway through on a machine like
# this one (24 GB).
MAX_INPUT_SIZE = 1024


def input_size_problem(size, what: str, fix: str = "choose a smaller --input-size") -> str | None:
    """Why `size` (S or (H, W)) cannot be exported (one line naming `what` and `fix`), or None if it can."""
    height, width = hw(size)
    if height * width > MAX_INPUT_SIZE**2:
        return (
            f"{what} is too large: at most {MAX_INPUT_SIZE}x{MAX_INPUT_SIZE} pixels (mobile models run at "
            f"224..640); {fix}"
        )
    return None
