"""What the user asked one export to do."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from validate.thresholds import Thresholds

# Calibration crops by default. On mobilenet_v2 (ImageNet weights, 194 held-out photos) 200 crops of the built-in
# set agreed with float on 87.1 % (15.8 dB), 100 crops on 85.1 % (15.6 dB), 300 on 86.6 % (15.8 dB); 200 costs
# 46 s more per export than 100.
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
    equalize: bool = True
    percentile_ranges: bool = True
    fitted_rounding: bool = True
    bias_correction: bool = True
    tuning: bool = True
    min_sqnr: float | None = None  # int8 targets: layers fall back (dynamic-range, else float), worst first,
    min_top1: float | None = None  # until they hold
    val_dir: Path | None = None  # the user's labelled photos (class folders or a CSV): accuracy of every model
    max_accuracy_drop: float | None = None  # points of top-1 a variant may lose on them against the reference
    int8_output: str = "int8"  # "float": the int8 file gives float32 logits (its output layer in dynamic range)

    @property
    def int8(self) -> bool:
        return "int8" in self.modes
