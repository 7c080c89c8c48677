"""The calibration crops the int8 steps fit on and the ones that judge them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobile_vision_export.export.onnx_graph import TensorSpec, to_onnx_layout
from mobile_vision_export.validate.metrics import sqnr_db
from mobile_vision_export.validate.runners import run_onnx_outputs, run_tflite, run_tflite_outputs

SELECTION_IMAGES = 32  # crops held back to score each step's candidates against ONNX Runtime


def output_scales(outputs: list[np.ndarray]) -> tuple[float, ...]:
    """What each of several outputs is divided by before they are joined: its RMS (one output: 1)."""
    if len(outputs) == 1:
        return (1.0,)
    return tuple(max(float(np.sqrt(np.mean(np.square(y, dtype=np.float64)))), 1e-12) for y in outputs)


def joined(outputs: list[np.ndarray], scales: tuple[float, ...]) -> np.ndarray:
    """Several outputs (N x each's shape) as one N x total array: each flattened and divided by its scale."""
    return np.concatenate([y.reshape(len(y), -1) / s for y, s in zip(outputs, scales)], 1)


def outputs_in_order(path: Path, images: np.ndarray, names: list[str]) -> list[np.ndarray]:
    """A .tflite's outputs on `images` in the order of `names` (an int8 file's output names), as the file lays them
    out. By name: the export gives every file the ONNX output names; where it could not (outputs of one shape that
    the converter renamed), in the file's order."""
    by_name = run_tflite_outputs(path, images)
    outputs = [by_name[name] for name in names] if set(names) <= set(by_name) else list(by_name.values())
    if len(outputs) != len(names):
        raise ValueError(f"{path.name} has {len(outputs)} outputs, the int8 file {len(names)}")
    return outputs


@dataclass(frozen=True)
class Crops:
    """Normalized NHWC calibration crops. The first `len(selection)` judge each step's candidates against ONNX
    Runtime's output on them (`reference`); the others are what a step fits on. Every output is judged (`run`), in
    ONNX's layout; several at once, each scaled by its RMS on the selection crops so none outweighs the others (a
    detector's boxes in pixels beside its scores)."""

    images: np.ndarray
    reference: np.ndarray  # ONNX Runtime's output(s) on `selection`, from the unmodified graph, as `run` gives them
    outputs: tuple[TensorSpec, ...] = ()  # none: run_tflite's one output as the file has it
    scales: tuple[float, ...] = ()

    @classmethod
    def judged_by_onnx(cls, images: np.ndarray, onnx: Path, outputs: tuple[TensorSpec, ...]) -> Crops:
        """`images` with ONNX Runtime's outputs on the first SELECTION_IMAGES of them."""
        by_name = run_onnx_outputs(onnx, np.ascontiguousarray(images[:SELECTION_IMAGES].transpose(0, 3, 1, 2)))
        reference = [by_name[o.name] for o in outputs]
        scales = output_scales(reference)
        return cls(images, joined(reference, scales), outputs, scales)

    def run(self, path: Path, images: np.ndarray) -> np.ndarray:
        """A .tflite's output(s) on `images` as `reference` holds ONNX Runtime's: matched by name, moved into ONNX's
        layout, scaled and joined."""
        if not self.outputs:
            return run_tflite(path, images)
        got = run_tflite_outputs(path, images, self.outputs)
        return joined([to_onnx_layout(got[o.name], o)[0] for o in self.outputs], self.scales)

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
    before = sqnr_db(crops.reference, crops.run(int8, crops.selection))
    after = sqnr_db(crops.reference, crops.run(candidate, crops.selection))
    selection = Selection(len(crops.selection), float(before), float(after))
    if selection.kept:
        candidate.replace(int8)
    else:
        candidate.unlink()
    return selection
