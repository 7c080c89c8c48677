"""Parity of every exported variant against ONNX Runtime, and of ONNX Runtime against PyTorch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from mobile_vision_export.validate.metrics import ParityMetrics, compare
from mobile_vision_export.validate.runners import run_onnx, run_tflite, run_torch
from mobile_vision_export.validate.thresholds import Thresholds, failures


@dataclass(frozen=True)
class VariantParity:
    variant: str
    reference: str
    metrics: ParityMetrics
    thresholds: Thresholds
    failures: list[str] = field(default_factory=list)
    accuracy_top1: float | None = None  # on the labelled photos, when the model has real weights

    @property
    def passed(self) -> bool:
        return not self.failures


def _accuracy(logits: np.ndarray, labels: list[int | None]) -> float | None:
    known = [(i, y) for i, y in enumerate(labels) if y is not None]
    if not known:
        return None
    return float(np.mean([logits[i].argmax() == y for i, y in known]))


def check_parity(
    onnx_path: Path,
    tflite_files: dict[str, Path],
    images_nhwc: np.ndarray,
    labels: list[int | None],
    thresholds: dict[str, Thresholds],
    torch_model: nn.Module | None = None,
    with_accuracy: bool = False,
) -> list[VariantParity]:
    """Run every model on the same normalized images and compare; the first row is ONNX vs PyTorch if given."""
    nchw = np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))
    reference = run_onnx(onnx_path, nchw)

    def row(variant: str, ref_name: str, ref: np.ndarray, out: np.ndarray) -> VariantParity:
        metrics = compare(ref, out)
        return VariantParity(
            variant,
            ref_name,
            metrics,
            thresholds[variant],
            failures(metrics, thresholds[variant]),
            _accuracy(out, labels) if with_accuracy else None,
        )

    rows = []
    if torch_model is not None:
        torch_out = run_torch(torch_model, nchw)
        rows.append(row("onnx", "pytorch", torch_out, reference))
    for variant, path in tflite_files.items():
        rows.append(row(variant, "onnxruntime", reference, run_tflite(path, images_nhwc)))
    return rows
