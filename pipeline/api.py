"""The Python API: `export_model(...)` does what `python -m pipeline.export` does and returns the result."""

from __future__ import annotations

import math
from pathlib import Path

from torch import nn

from mobile_vision_export.export.contract import read_labels
from mobile_vision_export.export.onnx_graph import SSD_SCALES, TASKS, Detection
from mobile_vision_export.export.reproducible import ENVIRONMENT, pinned
from mobile_vision_export.export.tflite_convert import QUANT_MODES
from mobile_vision_export.pipeline.checks import (
    check_calib_samples,
    check_input_size,
    check_normalization,
    check_request,
    int8_output_for,
)
from mobile_vision_export.pipeline.int8_steps import SWITCHES
from mobile_vision_export.pipeline.progress import StageTimer
from mobile_vision_export.pipeline.request import CALIBRATION_CROPS, ExportRequest
from mobile_vision_export.pipeline.run import ExportResult, run_export
from mobile_vision_export.pipeline.sources import (
    ModelSource,
    SourceError,
    from_factory,
    from_module,
    from_onnx,
    from_registry,
    with_normalization_folded,
)
from mobile_vision_export.validate.thresholds import thresholds_for


def is_factory(model: str) -> bool:
    """'path/to/file.py:factory' names a function in a user's file, not a zoo model."""
    return ":" in model and model.rsplit(":", 1)[0].endswith(".py")


def model_source(model, weights=None, input_size=None, mean=None, std=None, name=None) -> ModelSource:
    """A zoo name, 'file.py:factory', an ONNX file (a Path ending in .onnx) or a torch.nn.Module."""
    if isinstance(model, nn.Module):
        if weights is not None:
            raise SourceError("weights= applies to zoo and file models: load them into the module before passing it")
        return from_module(model, name, input_size, mean, std)
    if isinstance(model, Path) or str(model).endswith(".onnx"):
        if weights is not None:
            raise SourceError("--weights does not apply to --onnx: the ONNX file holds its weights")
        return from_onnx(Path(model), mean, std, input_size)
    if is_factory(str(model)):
        return from_factory(str(model), input_size, weights, mean, std)
    return from_registry(str(model), weights, input_size, mean, std)


def export_model(
    model: str | Path | nn.Module,
    *,
    quant: str = "int8",
    weights: str | None = None,
    input_size: int | tuple[int, int] | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    name: str | None = None,
    labels: Path | list[str] | None = None,
    calib_dir: Path | None = None,
    calib_samples: int = CALIBRATION_CROPS,
    val_dir: Path | None = None,
    max_accuracy_drop: float | None = None,
    out: Path = Path("artifacts"),
    min_sqnr: float | None = None,
    min_top1: float | None = None,
    int8_output: str | None = None,
    int8_io: str = "uint8",
    task: str = "auto",
    boxes: str | None = None,
    scores: str | None = None,
    box_format: str | None = None,
    score_threshold: float = 0.5,
    anchors: str | Path | None = None,
    box_scales: tuple[float, float, float, float] = SSD_SCALES,
    fold_normalization: bool = True,
    thresholds: dict[str, dict[str, float]] | None = None,
    optimize: bool = True,
    reproducible: bool = False,
    command: str | None = None,
    **int8_switches: bool,
) -> ExportResult:
    """Export `model` to TFLite (`quant`: fp32, fp16, dynamic, int8 or all), check parity and write the artifacts to
    `out`/<name>/. `thresholds` overrides the parity gates, e.g. {"int8": {"min_top1": 0.9, "min_sqnr": 12}} (keys
    min_sqnr, min_cosine, min_top1, min_pixel_agreement, min_detections_reproduced). Each int8 step can be turned
    off by its switch, e.g. `tuning=False` (the switches: pipeline.int8_steps.SWITCHES). A detector's `boxes` and
    `scores` outputs are found by their shapes or named; with `box_format` (xyxy, cxcywh, or offsets from `anchors`
    scaled by `box_scales`: anchor-xywh, anchor-yxhw) parity decodes them (NMS, scores from `score_threshold`).
    `int8_output` ("int8" or "float"; unset: float under `min_sqnr` / `min_top1`, else int8) is the int8 file's
    outputs' type.
    `reproducible=True` (the same int8 bytes on any x86-64 machine) needs a process started with
    export.reproducible.ENVIRONMENT. Raises the tool's one-line errors (mobile_vision_export.errors.UserError) on bad
    input."""
    unknown = sorted(set(int8_switches) - set(SWITCHES))
    if unknown:
        raise SourceError(f"unknown argument '{unknown[0]}': the int8 step switches are {', '.join(SWITCHES)}")
    check_request(
        quant,
        min_sqnr=min_sqnr,
        min_top1=min_top1,
        int8_output=int8_output,
        int8_io=int8_io,
        val_dir=val_dir,
        max_accuracy_drop=max_accuracy_drop,
        thresholds=thresholds,
    )
    if not fold_normalization and int8_io == "uint8" and quant in ("int8", "all"):
        raise SourceError(
            "the int8 file takes the camera's pixels only with the normalization in the graph: add --int8-io int8, "
            "or leave out --no-fold-normalization"
        )
    if reproducible and not pinned():
        names = " ".join(f"{name}={value}" for name, value in ENVIRONMENT.items())
        raise SourceError(
            f"reproducible=True needs its arithmetic pinned before Python starts: run with {names} in the environment "
            "(the command's --reproducible does this itself)"
        )
    if task not in TASKS:
        raise SourceError(f"unknown task '{task}': use one of {', '.join(TASKS)}")
    detection = Detection(boxes, scores, box_format, score_threshold, Path(anchors) if anchors else None, box_scales)
    detection.check()
    if not math.isfinite(score_threshold):
        raise SourceError(f"score threshold {score_threshold} is not a number: give the score a detection needs")
    check_input_size(input_size)
    check_normalization(mean, std)
    modes = list(QUANT_MODES) if quant == "all" else [quant]
    labels = read_labels(Path(labels)) if isinstance(labels, (str, Path)) else labels  # fails before any model work
    training = model.training if isinstance(model, nn.Module) else None
    try:
        source = model_source(model, weights, input_size, mean, std, name)
        if fold_normalization:
            source = with_normalization_folded(source)
        check_calib_samples(calib_samples, source.input_size)
        overrides = {m: dict((thresholds or {}).get(m, {})) for m in ("onnx", *QUANT_MODES)}
        if min_sqnr is not None:
            overrides["int8"]["min_sqnr"] = min_sqnr
        if min_top1 is not None:
            overrides["int8"]["min_top1"] = min_top1
        trained = not source.random_weights
        request = ExportRequest(
            modes,
            Path(out),
            {m: thresholds_for(m, **overrides[m], trained=trained) for m in overrides},
            command or f"export_model({source.name!r}, quant={quant!r})",
            Path(calib_dir) if calib_dir else None,
            calib_samples,
            labels,
            optimize=optimize,
            int8_off=frozenset(name for name, on in int8_switches.items() if not on),
            min_sqnr=min_sqnr,
            min_top1=min_top1,
            int8_output=int8_output_for(int8_output, min_sqnr, min_top1),
            int8_io=int8_io,
            task=task,
            detection=detection,
            val_dir=Path(val_dir) if val_dir else None,
            max_accuracy_drop=max_accuracy_drop,
        )
        timer = StageTimer(f"Exporting {source.name} ({', '.join(modes)})")
        if source.random_weights:
            timer.note(
                f"warning: {source.name} has random weights: parity is meaningful, top-1 accuracy is not; "
                "pass --weights with a trained checkpoint"
            )
        return run_export(source, request, timer)
    finally:
        if training is not None:
            model.train(training)  # the caller's module as it came
