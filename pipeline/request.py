"""What the user asked one export to do."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mobile_vision_export.export.onnx_graph import Detection
from mobile_vision_export.validate.thresholds import Thresholds

# Calibration crops by default: chosen against 100 and 300 on mobilenet_v2 (ImageNet weights); bench/accuracy.py
# measures an export's int8 with other counts (--calib-samples).
CALIBRATION_CROPS = 200


@dataclass(frozen=True)
class ExportRequest:
    modes: list[str]
    out_root: Path
    thresholds: dict[str, Thresholds]
    command: str
    calib_dir: Path | None = None
    calib_samples: int = CALIBRATION_CROPS
    labels: list[str] | None = None
    optimize: bool = True
    int8_off: frozenset[str] = frozenset()  # switches of the int8 steps turned off (pipeline.int8_steps.SWITCHES)
    min_sqnr: float | None = None  # int8 targets: layers fall back (dynamic-range, else float), worst first,
    min_top1: float | None = None  # until they hold
    val_dir: Path | None = None  # the user's labelled photos (class folders or a CSV): accuracy of every model
    max_accuracy_drop: float | None = None  # points of top-1 a variant may lose on them against the reference
    int8_output: str = "int8"  # "float": the int8 file gives float32 logits (its output layer in dynamic range)
    task: str = "auto"  # what the outputs are (export.onnx_graph.TASKS); auto decides from their shapes
    detection: Detection = Detection()  # a detector's outputs as asked (--boxes, --scores, --box-format)
    int8_io: str = "uint8"  # the int8 file's input (and quantized output) type: uint8 (pixels, for clients) or int8

    @property
    def wants_int8(self) -> bool:
        return "int8" in self.modes
