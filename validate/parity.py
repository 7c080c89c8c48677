"""Parity of every exported variant against ONNX Runtime, and of ONNX Runtime against PyTorch."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from torch import nn

from mobile_vision_export.export.onnx_graph import Detection, OnnxModel, read_anchors, to_onnx_layout
from mobile_vision_export.validate.metrics import (
    BoxDecoding,
    ParityMetrics,
    compare,
    detection_agreement,
    embedding_agreement,
    segmentation_agreement,
    top_k_score_overlap,
)
from mobile_vision_export.validate.runners import run_onnx_outputs, run_tflite_outputs, run_torch_outputs
from mobile_vision_export.validate.thresholds import Thresholds, failures


@dataclass(frozen=True)
class VariantParity:
    variant: str
    reference: str
    metrics: ParityMetrics
    thresholds: Thresholds
    failures: list[str] = field(default_factory=list)
    accuracy_top1: float | None = None  # on the labelled photos, when the model has real weights
    outputs: dict[str, dict] = field(default_factory=dict)  # per ONNX output: metrics, layout, task metrics

    @property
    def passed(self) -> bool:
        return not self.failures


def _accuracy(logits: np.ndarray, labels: list[int | None]) -> float | None:
    known = [(i, y) for i, y in enumerate(labels) if y is not None]
    if not known:
        return None
    return float(np.mean([logits[i].argmax() == y for i, y in known]))


def _compared(reference: np.ndarray, output: np.ndarray, task: str) -> tuple[ParityMetrics, dict]:
    """Parity metrics of one output over the photos, and the task's own metrics."""
    n = len(reference)
    metrics = compare(reference.reshape(n, -1), output.reshape(n, -1), classes=task == "classify")
    extra = {}
    if task == "segment":
        extra = segmentation_agreement(reference, output)
    elif task == "embed" and n > 1:
        extra = embedding_agreement(reference, output)
    return metrics, extra


def _detection_metrics(reference: dict[str, np.ndarray], got: dict[str, np.ndarray], detection: Detection) -> dict:
    """A detector's scores compared as a ranking, and with a box format its decoded detections."""
    boxes, scores = detection.boxes, detection.scores
    overlap = top_k_score_overlap(reference[scores], got[scores], detection.score_threshold)
    metrics = {"top_k_score_overlap": overlap}
    if detection.box_format is not None:
        pairs = (reference[boxes], reference[scores]), (got[boxes], got[scores])
        anchors = read_anchors(detection.anchors) if detection.anchors is not None else None
        decoding = BoxDecoding(detection.box_format, anchors, detection.box_scales)
        metrics.update(detection_agreement(*pairs, decoding, detection.score_threshold))
    return metrics


def check_parity(
    graph: OnnxModel,
    tflite_files: dict[str, Path],
    images_nhwc: np.ndarray,
    labels: list[int | None],
    thresholds: dict[str, Thresholds],
    torch_model: nn.Module | None = None,
    with_accuracy: bool = False,
) -> list[VariantParity]:
    """Run every model on the same normalized images and compare each output of `graph` with ONNX Runtime's, matched
    by name and moved back into ONNX's layout; the first row is ONNX vs PyTorch if given. A variant's metrics are
    those of its worst output (lowest SQNR), its failures those of every output; a detector's decoded detections
    are recorded with its scores output."""
    outputs, task = graph.outputs, graph.task
    nchw = np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))
    reference = run_onnx_outputs(graph.path, nchw)

    def row(variant: str, ref_name: str, got: dict[str, np.ndarray], layouts: dict[str, str]) -> VariantParity:
        limits = thresholds[variant] if task == "classify" else replace(thresholds[variant], min_top1=0.0)
        per_output, compared, worst, problems = {}, {}, None, []
        for spec in outputs:
            metrics, extra = _compared(reference[spec.name], got[spec.name], task)
            compared[spec.name] = metrics
            per_output[spec.name] = {**metrics.as_dict(), **extra, "layout": layouts.get(spec.name, "as in ONNX")}
            if worst is None or not metrics.sqnr_db >= worst.sqnr_db:
                worst = metrics
        if task == "detect":
            per_output[graph.detection.scores].update(_detection_metrics(reference, got, graph.detection))
        for name, metrics in compared.items():
            found = failures(metrics, limits, per_output[name])
            problems += [f"{name}: {f}" if len(outputs) > 1 else f for f in found]
        logits = got[outputs[0].name].reshape(len(nchw), -1)
        accuracy = _accuracy(logits, labels) if with_accuracy and task == "classify" else None
        return VariantParity(variant, ref_name, worst, limits, problems, accuracy, per_output)

    rows = []
    if torch_model is not None:
        torch_out = dict(zip((spec.name for spec in outputs), run_torch_outputs(torch_model, nchw)))
        rows.append(row("onnx", "pytorch", torch_out, {}))
    for variant, path in tflite_files.items():
        got, layouts = {}, {}
        tflite = run_tflite_outputs(path, images_nhwc, outputs)
        for spec in outputs:
            if spec.name not in tflite:
                raise ValueError(f"{path.name} has no output named '{spec.name}' (it has {sorted(tflite)})")
            got[spec.name], layouts[spec.name] = to_onnx_layout(tflite[spec.name], spec)
        rows.append(row(variant, "onnxruntime", got, layouts))
    return rows
