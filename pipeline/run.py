"""One export: source -> ONNX -> simplified ONNX -> TFLite variants -> parity -> reports, in a staged folder."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from export import images as imgs
from export.activation_ranges import narrow_ranges
from export.bias_correction import BIASED_OPS, correct_biases
from export.bundle import labels_for, preprocess_contract
from export.equalize import equalize_onnx
from export.float_fallback import fall_back
from export.onnx_stage import (
    OnnxError,
    OnnxModel,
    describe_onnx,
    export_onnx,
    load_onnx,
    simplify_onnx,
)
from export.tflite_inspect import TfliteSummary, inspect_tflite, op_inputs, op_outputs, paired_layers
from export.tflite_optimize import optimize_tflite
from export.tflite_stage import (
    QUANT_MODES,
    ConversionError,
    TfliteConversion,
    check_converter_supports,
    convert_tflite,
)
from models.weights import sha256_file
from pipeline.progress import StageTimer
from pipeline.sources import ModelSource, calibrate_random_weights
from pipeline.staging import staged_dir, write_text_atomic
from profiling.host import measure_host
from profiling.run import model_input
from validate.diagnose import diagnose
from validate.diagnose_report import report_section, write_diagnosis
from validate.metrics import sqnr_db
from validate.parity import VariantParity, check_parity
from validate.report import parity_json, render_report, sha256_array
from validate.runners import run_onnx, run_tflite
from validate.thresholds import Thresholds

IMAGENET_CLASSES = 1000
MAX_FALLBACK_STEPS = 8  # worst layers (each with its consumers) tried in float before giving up on --min-sqnr
MIN_FALLBACK_GAIN_DB = 0.1  # a layer stays in float only if it gains at least this much on the calibration crops
BIAS_CORRECTION_IMAGES = 16  # calibration crops the bias correction measures on
PERCENTILES = (99.999, 99.99)  # activation-range cuts tried; 99.95 and below clipped real photos' top logits
MIN_RANGE_GAIN_DB = 1.0  # a cut is kept only if it gains this much on the selection crops (smaller gains did not
# carry over to held-out photos on shufflenet_v2_x0_5)
SELECTION_IMAGES = 32  # calibration crops that choose between plain and equalized int8, and steer --min-sqnr
FLOAT_ROUNDING = 1e-6  # relative output change allowed from a layout rewrite of a float model (summation order)


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


@dataclass
class ExportResult:
    name: str
    out_dir: Path
    passed: bool
    rows: list[VariantParity]
    summaries: dict[str, TfliteSummary]
    timings: dict[str, float]
    params: int | None
    macs: int | None
    channel_shuffles: int | None


def _calibration(request: ExportRequest, size: int) -> tuple[np.ndarray, str]:
    photos = imgs.photos_in_dir(request.calib_dir) if request.calib_dir else imgs.calibration_photos()
    where = str(request.calib_dir) if request.calib_dir else "built-in scikit-image and CIFAR-100 photos"
    batch = imgs.calibration_batch(photos, size, request.calib_samples)
    return batch, f"{len(batch)} crops of {min(len(photos), len(batch))} of {len(photos)} photos ({where})"


def _onnx_stages(source: ModelSource, stage_dir: Path, timer: StageTimer) -> tuple[OnnxModel, OnnxModel]:
    raw_path = stage_dir / f"{source.name}.onnx"
    if source.module is not None:
        with timer.stage("PyTorch -> ONNX"):
            raw = export_onnx(source.module, source.input_size, raw_path)
    else:
        with timer.stage("read ONNX"):
            onnx.save(load_onnx(source.onnx_path), str(raw_path))  # one file, external data embedded
            raw = describe_onnx(raw_path)
    with timer.stage("onnxsim"):
        try:
            simplified = simplify_onnx(raw, stage_dir / f"{source.name}_simplified.onnx")
        except OnnxError:
            check_converter_supports(raw.path)  # an unconvertible op is the clearer message, if there is one
            raise
        check_converter_supports(simplified.path)
    return raw, simplified


def _convert(
    onnx_model: OnnxModel, work_dir: Path, modes: list[str], request: ExportRequest, calib: np.ndarray, source
) -> TfliteConversion:
    """Run onnx2tf; on failure keep its log beside the (never created) artifact folder."""
    try:
        return convert_tflite(onnx_model, work_dir, modes, calib, source.mean, source.std)
    except ConversionError as exc:
        if exc.log_path is not None and exc.log_path.is_file():
            kept = request.out_root / f"{source.name}.onnx2tf-error.log"
            shutil.copyfile(exc.log_path, kept)
            exc.log_path = kept
        raise


def _nchw(batch_nhwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(batch_nhwc.transpose(0, 3, 1, 2))


def _equalize(simplified: OnnxModel, stage_dir: Path, source: ModelSource, calib_x: np.ndarray, heldout: np.ndarray):
    """The int8 conversion's input: `simplified` with equalized channel ranges, checked against it in float."""
    path = stage_dir / f"{source.name}_equalized.onnx"
    pairs = equalize_onnx(simplified.path, path, _nchw(calib_x))
    if not pairs:
        path.unlink()
        return None, {"applied": False, "pairs": []}
    reference, equalized = run_onnx(simplified.path, _nchw(heldout)), run_onnx(path, _nchw(heldout))
    summary = {
        "applied": True,
        "pairs": [p.as_dict() for p in pairs],
        "channels_scaled": sum(p.scaled for p in pairs),
        "float_check": {
            "images": len(heldout),
            "sqnr_db_vs_simplified": sqnr_db(reference, equalized),
            "top1_agreement": float(np.mean(reference.argmax(1) == equalized.argmax(1))),
        },
    }
    return describe_onnx(path, f"{simplified.exporter} + range equalization"), summary


def _convert_all(
    simplified: OnnxModel,
    equalized: OnnxModel | None,
    stage_dir: Path,
    request: ExportRequest,
    calib,
    source,
    selection: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[dict[str, Path], dict, Path | None, dict | None]:
    """Every requested .tflite, the converter settings, the int8 graph's float twin (the fp32 file of the same
    run, for bias correction and per-layer diagnosis) and, when an equalized graph is given, the int8 choice:
    int8 is then converted from both graphs and the one closer to float on the `selection` crops (normalized
    images, ONNX Runtime's output on them) is kept."""
    modes = request.modes
    runs = {"plain": (simplified, sorted({*modes, "fp32"}, key=QUANT_MODES.index) if "int8" in modes else modes)}
    if equalized is not None:
        runs["equalized"] = (equalized, ["fp32", "int8"])
    conversions = {
        key: _convert(g, stage_dir / f"work_{key}", m, request, calib, source) for key, (g, m) in runs.items()
    }
    chosen, choice = "plain", None
    if equalized is not None:
        images, reference = selection
        scores = {key: sqnr_db(reference, run_tflite(c.files["int8"], images)) for key, c in conversions.items()}
        chosen = "equalized" if scores["equalized"] > scores["plain"] else "plain"
        choice = {"calibration_crops": len(images), "calibration_sqnr_db": scores, "chosen": chosen}
    twin = None
    if "int8" in modes:
        twin = stage_dir / f"{source.name}_int8_reference_fp32.tflite"
        shutil.copyfile(conversions[chosen].files["fp32"], twin)
    files = {}
    for mode in modes:
        files[mode] = stage_dir / f"{source.name}_{mode}.tflite"
        shutil.move(str(conversions[chosen if mode == "int8" else "plain"].files[mode]), files[mode])
    settings = {runs[key][0].path.name: c.settings for key, c in conversions.items()}
    write_text_atomic(
        stage_dir / "convert.log", "\n".join(c.log_path.read_text(errors="replace") for c in conversions.values())
    )
    for key in conversions:
        shutil.rmtree(stage_dir / f"work_{key}")
    return files, settings, twin, choice


def _narrow_ranges(int8: Path, calib: np.ndarray, images: np.ndarray, reference: np.ndarray) -> dict:
    """Cut every changeable int8 activation range to each of PERCENTILES of its values on the calibration crops
    other than the `images` selection crops (all crops if too few are left), and keep the cut closest to float on
    `images` (ONNX Runtime's output `reference`) if it beats min-max there by MIN_RANGE_GAIN_DB."""
    counted = calib[len(images) :] if len(calib) >= 2 * len(images) else calib
    scores = {"min-max": float(sqnr_db(reference, run_tflite(int8, images)))}
    candidates = {}
    for percentile in PERCENTILES:
        path = int8.with_name(f".{int8.name}.p{percentile:g}")
        candidates[f"{percentile:g}"] = (path, narrow_ranges(int8, counted, percentile, path))
        scores[f"{percentile:g}"] = float(sqnr_db(reference, run_tflite(path, images)))
    best = max(candidates, key=scores.get)
    applied = scores[best] >= scores["min-max"] + MIN_RANGE_GAIN_DB
    summary = {"applied": applied, "counted_crops": len(counted), "selection_crops": len(images)}
    summary.update(calibration_sqnr_db=scores, min_gain_db=MIN_RANGE_GAIN_DB)
    if applied:
        path, change = candidates[best]
        path.replace(int8)
        summary.update(percentile=float(best), tensors=change.tensors, biases_rescaled=change.biases)
        summary["median_step_ratio"] = change.median_step_ratio
    for path, _ in candidates.values():
        path.unlink(missing_ok=True)
    return summary


def _correct_biases(int8: Path, twin: Path, calib: np.ndarray) -> dict:
    """Bias correction of the int8 file in place, kept only if it brings int8 closer to its float twin on the
    calibration photos (the held-out photos stay out of every choice)."""
    candidate = int8.with_name(f".{int8.name}.corrected")
    result = correct_biases(int8, twin, calib, candidate)
    reference = run_tflite(twin, calib)
    before, after = sqnr_db(reference, run_tflite(int8, calib)), sqnr_db(reference, run_tflite(candidate, calib))
    summary = {
        "layers_corrected": result.layers,
        "calibration_sqnr_db_before": before,
        "calibration_sqnr_db_after": after,
        "applied": bool(after > before),
    }
    if after > before:
        candidate.replace(int8)
    else:
        candidate.unlink()
    return summary


def _reach_min_sqnr(int8: Path, twin: Path, calib: np.ndarray, reference: np.ndarray, target: float) -> dict:
    """Fall back the worst int8 layers (by SQNR drop on calibration crops), each with the ops reading its output
    so that tensor stays float, keeping a layer only if it gains on those crops, until int8 reaches `target` dB
    against float there or MAX_FALLBACK_STEPS were tried. The held-out parity then checks the target on photos it
    never saw."""
    baseline = float(sqnr_db(reference, run_tflite(int8, calib)))
    steps = [{"layer": None, "ops_in_float": [], "calibration_sqnr_db": baseline, "kept": True}]
    summary = {"target_db": target, "calibration_crops": len(calib), "steps": steps}
    if baseline >= target:
        return {**summary, "applied": False, "reached": True}
    ops = op_outputs(int8)
    readers: dict[int, set[int]] = {}
    for index, inputs in enumerate(op_inputs(int8)):
        for tensor in inputs:
            readers.setdefault(tensor, set()).add(index)
    paired = {index for index, *_ in paired_layers(twin, int8)}
    worst = sorted(
        (layer for layer in diagnose(twin, int8, calib[:8]).layers if layer.op in BIASED_OPS and layer.drop_db > 0),
        key=lambda layer: -layer.drop_db,
    )
    candidate, trial = int8.with_name(f".{int8.name}.fallback"), int8.with_name(f".{int8.name}.trial")
    chosen: set[int] = set()
    best = baseline
    for layer in worst[:MAX_FALLBACK_STEPS]:
        ops_in_float = chosen | {layer.index} | (readers.get(ops[layer.index][1], set()) & paired)
        fall_back(int8, twin, ops_in_float, trial)
        score = float(sqnr_db(reference, run_tflite(trial, calib)))
        kept = score >= best + MIN_FALLBACK_GAIN_DB  # a layer that does not help is not paid for
        steps.append(
            {"layer": layer.tensor, "ops_in_float": sorted(ops_in_float), "calibration_sqnr_db": score, "kept": kept}
        )
        if kept:
            chosen, best = ops_in_float, score
            trial.replace(candidate)
        if best >= target:
            break
    trial.unlink(missing_ok=True)
    if not chosen:
        return {**summary, "applied": False, "reached": False}
    before = {"bytes": int8.stat().st_size, "host_ms": _host_ms(int8)}
    after = {"bytes": candidate.stat().st_size, "host_ms": _host_ms(candidate)}
    candidate.replace(int8)
    summary.update(applied=True, reached=bool(best >= target), ops_in_float=sorted(chosen))
    return {**summary, "cost": {"before": before, "after": after}}


def _host_ms(model: Path) -> float:
    """Median host latency, 1 thread, on a held-out photo."""
    return measure_host(model, model_input(model)[0], threads=1, warmups=10, runs=50).median_ms


def _optimize(path: Path, images: np.ndarray) -> dict:
    """Apply the .tflite layout pass in place, keeping the result only if outputs stay identical on `images`."""
    candidate = path.with_name(f".{path.name}.optimized")
    try:
        result = optimize_tflite(path, candidate)
        summary = {"islands_rewritten": result.islands, "ops_before": result.ops_before, "ops_after": result.ops_after}
        if result.islands == 0:
            candidate.unlink()
            return {**summary, "applied": False, "verified": "nothing to rewrite"}
        before, after = run_tflite(path, images), run_tflite(candidate, images)
    except (ValueError, RuntimeError) as exc:  # the pass is optional: any trouble keeps the converter's file
        candidate.unlink(missing_ok=True)
        return {
            "islands_rewritten": 0,
            "ops_before": {},
            "ops_after": {},
            "applied": False,
            "verified": f"not optimized: {exc}",
        }
    integer = inspect_tflite(path).outputs[0].dtype != "float32"
    max_diff = float(np.max(np.abs(before.astype(np.float64) - after)))
    limit = 0.0 if integer else FLOAT_ROUNDING * float(np.max(np.abs(before)))
    if not max_diff <= limit:  # NaN never passes
        candidate.unlink()
        return {**summary, "applied": False, "verified": f"outputs changed on {len(images)} photos: kept the original"}
    candidate.replace(path)
    check = "identical" if max_diff == 0 else f"equal to float rounding (max diff {max_diff:.2g})"
    return {**summary, "applied": True, "verified": f"outputs {check} on {len(images)} held-out photos"}


def run_export(source: ModelSource, request: ExportRequest, timer: StageTimer) -> ExportResult:
    """Run every stage for `source`; artifacts land in out_root/<name>/ only if all stages complete."""
    out_dir = request.out_root / source.name
    size = source.input_size
    with staged_dir(out_dir) as stage_dir:
        with timer.stage("load photos"):
            calib, calib_desc = _calibration(request, size)
            heldout_photos = imgs.heldout_photos()
            heldout = imgs.normalize(imgs.heldout_batch(heldout_photos, size), source.mean, source.std)
            calib_x = imgs.normalize(calib, source.mean, source.std)  # what the model sees; `calib` goes to onnx2tf
        if source.random_weights:
            with timer.stage("BatchNorm statistics (random weights)"):
                calibrate_random_weights(source, torch.from_numpy(_nchw(calib_x)))
        raw, simplified = _onnx_stages(source, stage_dir, timer)
        num_classes = simplified.num_classes
        if num_classes is None:
            raise OnnxError(f"the output shape of {source.name} is not static: export it with fixed dimensions")
        labels = labels_for(num_classes, request.labels)
        equalized, equalization = None, {"applied": False, "pairs": [], "reason": "no int8 requested"}
        if "int8" in request.modes and request.equalize:
            with timer.stage("range equalization (int8 graph)"):
                equalized, equalization = _equalize(simplified, stage_dir, source, calib_x, heldout)
        elif "int8" in request.modes:
            equalization["reason"] = "turned off (--no-equalize)"
        selection = None
        if "int8" in request.modes:
            selection = (calib_x[:SELECTION_IMAGES], run_onnx(simplified.path, _nchw(calib_x[:SELECTION_IMAGES])))
        graphs = " (plain and equalized graphs)" if equalized is not None else ""
        with timer.stage(f"onnx2tf -> {', '.join(request.modes)}{graphs}"):
            files, settings, twin, choice = _convert_all(
                simplified, equalized, stage_dir, request, calib, source, selection
            )
        if choice is not None:
            equalization.update(applied=choice["chosen"] == "equalized", selection=choice)
            if not equalization["applied"]:
                equalized.path.unlink()  # not the int8 file's source: do not ship it
        optimization = {}
        if request.optimize:
            with timer.stage("graph optimization"):
                optimization = {mode: _optimize(path, heldout[:8]) for mode, path in files.items()}
                if twin is not None:
                    _optimize(twin, heldout[:8])  # the same rewrite as its int8 graph, so their layers still pair
        ranges = {"applied": False, "reason": "no int8 requested"}
        if twin is not None and request.percentile_ranges:
            with timer.stage("int8 percentile activation ranges"):
                ranges = _narrow_ranges(files["int8"], calib_x, *selection)
        elif twin is not None:
            ranges["reason"] = "turned off (--no-percentile-ranges)"
        bias_correction = {"applied": False, "reason": "no int8 requested"}
        if twin is not None and request.bias_correction:
            with timer.stage("int8 bias correction"):
                bias_correction = _correct_biases(files["int8"], twin, calib_x[:BIAS_CORRECTION_IMAGES])
        elif twin is not None:
            bias_correction["reason"] = "turned off (--no-bias-correction)"
        fallback = None
        if twin is not None and request.min_sqnr is not None:
            with timer.stage(f"int8 float fallback (--min-sqnr {request.min_sqnr:g})"):
                fallback = _reach_min_sqnr(files["int8"], twin, *selection, request.min_sqnr)
        if twin is not None and (not equalization["applied"] or "fp32" not in request.modes):
            twin.unlink()  # kept only when it differs from the fp32 file and a diagnosis will use it
            twin = None
        summaries = {mode: inspect_tflite(path) for mode, path in files.items()}
        with timer.stage("parity"):
            rows = check_parity(
                simplified.path,
                files,
                heldout,
                [p.label for p in heldout_photos],
                {"onnx": request.thresholds["onnx"], **{m: request.thresholds[m] for m in files}},
                torch_model=source.module,
                with_accuracy=num_classes == IMAGENET_CLASSES and not source.random_weights,
            )
        params, macs = source.complexity()
        write_text_atomic(stage_dir / "labels.txt", "\n".join(labels) + "\n")
        contract = preprocess_contract(size, source.mean, source.std, summaries, num_classes)
        write_text_atomic(stage_dir / "preprocess.json", json.dumps(contract, indent=2) + "\n")
        model_info = {
            "name": source.name,
            "source": source.description,
            "weights": source.weights,
            "input_size": size,
            "mean": list(source.mean),
            "std": list(source.std),
            "params": params,
            "macs": macs,
            "onnx_exporter": raw.exporter,
            "opset": raw.opset,
            "onnx_nodes": raw.nodes,
            "onnx_nodes_simplified": simplified.nodes,
            "converter_settings": settings,
            "int8_equalization": equalization,
            "int8_activation_ranges": ranges,
            "int8_bias_correction": bias_correction,
            "int8_float_fallback": fallback,
            "graph_optimization": optimization,
        }
        inputs = {
            "weights_sha256": source.weights_sha256,
            "onnx_sha256": sha256_file(raw.path),
            "calibration": {"description": calib_desc, "sha256": sha256_array(calib)},
            "validation": {
                "description": f"{len(heldout_photos)} held-out photos "
                f"({sum(p.label is not None for p in heldout_photos)} with ImageNet labels)",
                "files": [p.path.name for p in heldout_photos],
                "sha256": sha256_array(heldout),
            },
        }
        artifacts = {
            p.name: sha256_file(p)
            for p in sorted(stage_dir.iterdir())
            if p.suffix in (".tflite", ".onnx") or p.name in ("labels.txt", "preprocess.json")
        }
        write_text_atomic(
            stage_dir / "parity.json",
            json.dumps(parity_json(model_info, inputs, rows, artifacts, request.command), indent=2, allow_nan=False)
            + "\n",
        )
        report = render_report(model_info, inputs, rows, summaries, timer.timings)
        if {"fp32", "int8"} <= files.keys():
            with timer.stage("per-layer int8 diagnosis"):
                images = f"{min(20, len(heldout))} held-out photos"
                reference = twin or files["fp32"]
                diagnosis = diagnose(reference, files["int8"], heldout[:20])
                write_diagnosis(stage_dir, diagnosis, reference, files["int8"], images)
                report += "\n" + report_section(diagnosis, images)
        write_text_atomic(stage_dir / "report.md", report)
    (request.out_root / f"{source.name}.onnx2tf-error.log").unlink(missing_ok=True)  # stale from an earlier failure
    return ExportResult(
        source.name,
        out_dir,
        all(r.passed for r in rows),
        rows,
        summaries,
        dict(timer.timings),
        params,
        macs,
        source.channel_shuffles,
    )
