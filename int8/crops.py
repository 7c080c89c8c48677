"""The calibration crops the int8 steps fit on and the ones that judge them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobile_vision_export.validate.metrics import sqnr_db
from mobile_vision_export.validate.runners import run_tflite

SELECTION_IMAGES = 32  # crops held back to score each step's candidates against ONNX Runtime


@dataclass(frozen=True)
class Crops:
    """Normalized NHWC calibration crops. The first `len(selection)` judge each step's candidates against ONNX
    Runtime's output on them (`reference`); the others are what a step fits on."""

    images: np.ndarray
    reference: np.ndarray  # ONNX Runtime's logits on `selection`, from the unmodified graph

    @property
    def selection(self) -> np.ndarray:
        return self.images[: len(self.reference)]

    @property
    def fit(self) -> np.ndarray:
        """The crops not used for selection; all of them when too few would be left."""
        held = len(self.reference)
        return self.images[held:] if len(self.images) >= 2 * held else self.images


@dataclass(frozen=True)
class Selection:
    """A candidate int8 file against the current one on the selection crops (SQNR against ONNX Runtime)."""

    crops: int
    sqnr_db_before: float
    sqnr_db_after: float

    @property
    def kept(self) -> bool:
        return self.sqnr_db_after > self.sqnr_db_before


def keep_if_closer(int8: Path, candidate: Path, crops: Crops) -> Selection:
    """Replace `int8` by `candidate` if its output on the selection crops is closer to ONNX Runtime's; the candidate
    file is gone either way."""
    before = sqnr_db(crops.reference, run_tflite(int8, crops.selection))
    after = sqnr_db(crops.reference, run_tflite(candidate, crops.selection))
    selection = Selection(len(crops.selection), float(before), float(after))
    if selection.kept:
        candidate.replace(int8)
    else:
        candidate.unlink()
    return selection
