"""The calibration crops the int8 steps fit on and the ones that judge them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
