"""One export: source -> ONNX -> simplified ONNX -> TFLite variants -> parity -> reports, in a staged folder."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from export import images as imgs
from export.bundle import labels_for, preprocess_contract
from export.onnx_stage import OnnxModel, check_supported_ops, describe_onnx, export_onnx, simplify_onnx
from export.tflite_inspect import TfliteSummary, inspect_tflite
from export.tflite_stage import ConversionError, TfliteConversion, convert_tflite, keep_files
from pipeline.progress import StageTimer
from pipeline.sources import ModelSource, calibrate_random_weights
from pipeline.staging import staged_dir, write_text_atomic
from validate.parity import VariantParity, check_parity
from validate.report import parity_json, render_report, sha256_array, sha256_bytes
from validate.thresholds import Thresholds


@dataclass(frozen=True)
class ExportRequest:
    modes: list[str]
    out_root: Path
    thresholds: dict[str, Thresholds]
    calib_dir: Path | None = None
    calib_samples: int = 100
    labels_file: Path | None = None


@dataclass
class ExportResult:
    name: str
    out_dir: Path
    passed: bool
    rows: list[VariantParity]
    summaries: dict[str, TfliteSummary]
    timings: dict[str, float]
    params: int | None = None
    macs: int | None = None
    extra: dict = field(default_factory=dict)


def _calibration(request: ExportRequest, size: int) -> tuple[np.ndarray, str]:
    photos = imgs.photos_in_dir(request.calib_dir) if request.calib_dir else imgs.calibration_photos()
    where = str(request.calib_dir) if request.calib_dir else "built-in scikit-image and CIFAR-100 photos"
    batch = imgs.calibration_batch(photos, size, request.calib_samples)
    return batch, f"{len(batch)} crops of {len(photos)} photos ({where})"


def _onnx_stages(source: ModelSource, stage_dir: Path, timer: StageTimer) -> tuple[OnnxModel, OnnxModel]:
    raw_path = stage_dir / f"{source.name}.onnx"
    if source.module is not None:
        with timer.stage("PyTorch -> ONNX"):
            raw = export_onnx(source.module, source.input_size, raw_path)
    else:
        with timer.stage("read ONNX"):
            shutil.copyfile(source.onnx_path, raw_path)
            raw = describe_onnx(raw_path)
    check_supported_ops(raw.path)
    with timer.stage("onnxsim"):
        simplified = simplify_onnx(raw, stage_dir / f"{source.name}_simplified.onnx")
    return raw, simplified


def run_export(source: ModelSource, request: ExportRequest, timer: StageTimer) -> ExportResult:
    """Run every stage for `source`; artifacts land in out_root/<name>/ only if all stages complete."""
    out_dir = request.out_root / source.name
    with staged_dir(out_dir) as stage_dir:
        size = source.input_size
        with timer.stage("load photos"):
            calib, calib_desc = _calibration(request, size)
            heldout_photos = imgs.heldout_photos()
            heldout = imgs.normalize(imgs.heldout_batch(heldout_photos, size), source.mean, source.std)
        if source.needs_random_calibration:
            with timer.stage("BatchNorm statistics (random weights)"):
                nchw = imgs.normalize(calib, source.mean, source.std).transpose(0, 3, 1, 2)
                calibrate_random_weights(source, torch.from_numpy(np.ascontiguousarray(nchw)))
        raw, simplified = _onnx_stages(source, stage_dir, timer)
        with timer.stage(f"onnx2tf -> {', '.join(request.modes)}"):
            conversion = _convert(simplified, stage_dir, request, calib, source)
            files = keep_files(conversion, stage_dir, source.name)
            shutil.copyfile(conversion.log_path, stage_dir / "convert.log")
            shutil.rmtree(stage_dir / "work")
        summaries = {mode: inspect_tflite(path) for mode, path in files.items()}
        with timer.stage("parity"):
            labels = [p.label for p in heldout_photos]
            rows = check_parity(simplified.path, files, heldout, labels,
                                {"onnx": request.thresholds["onnx"], **{m: request.thresholds[m] for m in files}},
                                torch_model=source.module, with_accuracy=not source.weights.startswith("random"))
        params, macs = source.complexity()
        num_classes = summaries[request.modes[0]].outputs[0].shape[-1]
        write_text_atomic(stage_dir / "labels.txt", "\n".join(labels_for(num_classes, request.labels_file)) + "\n")
        contract = preprocess_contract(size, source.mean, source.std, summaries, num_classes)
        write_text_atomic(stage_dir / "preprocess.json", json.dumps(contract, indent=2) + "\n")
        model_info = {"name": source.name, "source": source.description, "weights": source.weights,
                      "input_size": size, "mean": list(source.mean), "std": list(source.std), "params": params,
                      "macs": macs, "onnx_exporter": raw.exporter, "opset": raw.opset, "onnx_nodes": raw.nodes,
                      "onnx_nodes_simplified": simplified.nodes, "converter_settings": conversion.settings}
        inputs = {"weights_sha256": source.weights_sha256,
                  "onnx_sha256": sha256_bytes(raw.path.read_bytes()),
                  "calibration": {"description": calib_desc, "sha256": sha256_array(calib)},
                  "validation": {"description": f"{len(heldout_photos)} held-out photos "
                                 f"({sum(p.label is not None for p in heldout_photos)} with ImageNet labels)",
                                 "files": [p.path.name for p in heldout_photos], "sha256": sha256_array(heldout)}}
        artifacts = {p.name: sha256_bytes(p.read_bytes()) for p in sorted(stage_dir.iterdir())
                     if p.suffix in (".tflite", ".onnx") or p.name in ("labels.txt", "preprocess.json")}
        write_text_atomic(stage_dir / "parity.json",
                          json.dumps(parity_json(model_info, inputs, rows, artifacts), indent=2) + "\n")
        write_text_atomic(stage_dir / "report.md", render_report(model_info, inputs, rows, summaries, timer.timings))
    return ExportResult(source.name, out_dir, all(r.passed for r in rows), rows, summaries, dict(timer.timings),
                        params, macs, {"channel_shuffles": source.channel_shuffles})



def _convert(simplified: OnnxModel, stage_dir: Path, request: ExportRequest, calib: np.ndarray,
             source: ModelSource) -> TfliteConversion:
    """Run onnx2tf; on failure keep its log beside the (never created) artifact folder."""
    try:
        return convert_tflite(simplified, stage_dir / "work", request.modes,
                              calib if "int8" in request.modes else None, source.mean, source.std)
    except ConversionError as exc:
        if exc.log_path is not None and exc.log_path.is_file():
            kept = request.out_root / f"{source.name}.onnx2tf-error.log"
            shutil.copyfile(exc.log_path, kept)
            exc.log_path = kept
        raise
