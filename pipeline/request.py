"""What the user asked one export to do."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from validate.thresholds import Thresholds


@dataclass(frozen=True)
class ExportRequest:
    modes: list[str]
    out_root: Path
    thresholds: dict[str, Thresholds]
    command: str
    calib_dir: Path | None = None
    calib_samples: int = 100
    labels: list[str] | None = None
    optimize: bool = True
    equalize: bool = True
    percentile_ranges: bool = True
    bias_correction: bool = True
    min_sqnr: float | None = None  # int8 target: layers fall back to float, worst first, until it holds
    int8_output: str = "int8"  # "float": the int8 file gives float32 logits (its output layer in dynamic range)

    @property
    def int8(self) -> bool:
        return "int8" in self.modes
