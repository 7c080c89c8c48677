"""The export's stages. Each takes the `Job` so far and returns it with what the stage made; `pipeline.run` lists
them in order (the int8 steps are in `pipeline.int8_steps`)."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import torch

from mobile_vision_export.export import images as imgs
from mobile_vision_export.export.contract import LabelsError, labels_for, preprocess_contract
from mobile_vision_export.export.files import write_text_atomic
from mobile_vision_export.export.layout_pass import rewrite_layout
from mobile_vision_export.export.metadata import (
    LABELS_FILE,
    MetadataError,
    SsdDecoding,
    disagreements,
    read_metadata,
    write_metadata,
)
from mobile_vision_export.export.normalization import prepend_normalization
from mobile_vision_export.export.onnx_graph import (
    OnnxError,
    OnnxModel,
    describe_onnx,
    export_onnx,
    fix_input_size,
    load_onnx,
    match_outputs,
    read_anchors,
    simplify_onnx,
    with_task,
)
from mobile_vision_export.export.tflite_convert import (
    QUANT_MODES,
    ConversionError,
    TfliteConversion,
    check_converter_supports,
    convert_tflite,
)
from mobile_vision_export.export.tflite_inspect import TfliteSummary, inspect_tflite
from mobile_vision_export.export.tflite_model import rename_outputs
from mobile_vision_export.export.wording import plural
from mobile_vision_export.int8.crops import Crops
from mobile_vision_export.pipeline.request import ExportRequest
from mobile_vision_export.pipeline.sources import ModelSource, calibrate_random_weights
from mobile_vision_export.report.diagnose import write_diagnosis
from mobile_vision_export.validate.diagnose import Diagnosis, diagnose
from mobile_vision_export.validate.gpu import GpuReadiness, gpu_readiness
from mobile_vision_export.validate.labelled import (
    LabelledAccuracy,
    LabelledSet,
    accuracy,
    check_disjoint,
    read_labelled,
)
from mobile_vision_export.validate.parity import VariantParity, check_parity
from mobile_vision_export.validate.runners import run_onnx, run_tflite, run_tflite_outputs, run_torch

log = logging.getLogger(__name__)
IMAGENET_CLASSES = 1000
FEW_CALIBRATION_PHOTOS = 20  # fewer distinct photos than this gets a warning (the built-in set has 548)
FLOAT_ROUNDING = 1e-5  # relative output change a layout rewrite of a float model may make: summation order (a mean over
# 32x32 positions moved 1.1e-6 of its largest value; a wrong layout moves it by order 1)
LAYOUT_CHECK_IMAGES = 8  # held-out photos a layout rewrite must leave unchanged
DIAGNOSIS_IMAGES = 20


@dataclass(frozen=True)
class Photos:
    calib: np.ndarray  # NHWC uint8 pixel codes (every crop is a code / 255): what onnx2tf calibrates on
    calib_x: np.ndarray  # the same, normalized: what the model sees
    calib_description: str
    calibration: imgs.CalibrationSet
    heldout_photos: list[imgs.Photo]
    heldout: np.ndarray  # normalized NHWC
    unread: list[imgs.Photo]  # calibration photos no calibration crop comes from: what the int8 fallback judges on
    heldout_description: str  # what the held-out photos are: the built-in set, or the user's (--val-dir)


@dataclass(frozen=True)
class Graphs:
    raw: OnnxModel
    simplified: OnnxModel
    equalized: OnnxModel | None = None  # the int8 conversion's input when equalization applies


@dataclass(frozen=True)
class Tflites:
    files: dict[str, Path]  # mode -> .tflite
    settings: dict  # converter settings per ONNX graph converted
    float_twin: Path | None  # the float file converted from the int8 file's graph, while an int8 step needs it

    def summaries(self) -> dict[str, TfliteSummary]:
        return {mode: inspect_tflite(path) for mode, path in self.files.items()}


@dataclass(frozen=True)
class Job:
    source: ModelSource
    request: ExportRequest
    work_dir: Path
    photos: Photos | None = None
    graphs: Graphs | None = None
    crops: Crops | None = None  # int8 only
    tflites: Tflites | None = None
    layout: dict[str, dict] = field(default_factory=dict)
    int8_summaries: dict[str, object] = field(default_factory=dict)  # int8 step name -> its summary
    rows: list[VariantParity] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    labelled: LabelledSet | None = None  # --val-dir
    accuracy: LabelledAccuracy | None = None
    diagnosis: Diagnosis | None = None
    gpu: dict[str, GpuReadiness] = field(default_factory=dict)  # variant -> what the GPU delegate would refuse
    skipped: dict[str, str] = field(default_factory=dict)  # stage -> why it did not run

    @property
    def failures(self) -> list[str]:
        """Every check that failed, one line each: parity per variant, then accuracy on the user's photos."""
        parity = [f"parity: {r.variant} vs {r.reference}: {failure}" for r in self.rows for failure in r.failures]
        return parity + [f"accuracy: {failure}" for failure in (self.accuracy.failures if self.accuracy else [])]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def int8_file(self) -> Path:
        return self.tflites.files["int8"]


def nchw(batch_nhwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(batch_nhwc.transpose(0, 3, 1, 2))


def load_photos(job: Job) -> Job:
    """Every photo set of the export, made once: the calibration crops, the held-out photos and the calibration
    photos no crop comes from."""
    request, source, size = job.request, job.source, job.source.input_size
    calibration = imgs.calibration_set(request.calib_dir)
    photos, samples = calibration.photos, request.calib_samples
    if len(photos) < FEW_CALIBRATION_PHOTOS:
        log.warning(
            "calibration on %s: int8 ranges fitted to so few scenes clip what the camera sees elsewhere; give %d or "
            "more varied photos with --calib-dir",
            plural(len(photos), "photo"),
            FEW_CALIBRATION_PHOTOS,
        )
    make = lambda: imgs.calibration_batch(photos, size, samples)  # noqa: E731
    calib = calibration.crops(photos, make, "calibration", size, samples)
    heldout_photos = imgs.heldout_photos()
    heldout_crop = lambda: imgs.heldout_batch(heldout_photos, size)  # noqa: E731
    heldout = imgs.normalize(imgs.cached_crops(heldout_photos, heldout_crop, "held-out", size), source.mean, source.std)
    used = plural(min(len(photos), len(calib)), "photo").split(" ", 1)[0]
    description = f"{len(calib)} crops of {used} of {plural(len(photos), 'photo')} ({calibration.where})"
    calib_x = imgs.normalize(calib, source.mean, source.std)
    codes = imgs.pixel_codes(calib)  # a quarter of the memory while the converters run
    unread = imgs.unread_photos(photos, samples)
    labelled = sum(p.label is not None for p in heldout_photos)
    where = f"{len(heldout_photos)} held-out photos ({labelled} with ImageNet labels)"
    return replace(job, photos=Photos(codes, calib_x, description, calibration, heldout_photos, heldout, unread, where))


def estimate_batchnorm(job: Job) -> Job:
    """A random-weight model outputs (almost) its last bias until its BatchNorm statistics come from photos."""
    calibrate_random_weights(job.source, torch.from_numpy(nchw(job.photos.calib_x)))
    return job


def to_onnx(job: Job) -> Job:
    source, path = job.source, job.work_dir / f"{job.source.name}.onnx"
    if source.module is not None:
        raw = export_onnx(source.module, source.input_size, path)
    else:
        graph = fix_input_size(load_onnx(source.onnx_path), source.input_size)
        if source.folded is not None:
            graph = prepend_normalization(graph, *source.folded)
        onnx.save(graph, str(path))  # one file, external data embedded
        raw = describe_onnx(path)
    return replace(job, graphs=Graphs(raw, raw))


def simplify(job: Job) -> Job:
    raw = job.graphs.raw
    try:
        simplified = simplify_onnx(raw, job.work_dir / f"{job.source.name}_simplified.onnx")
    except OnnxError:
        check_converter_supports(raw.path)  # an unconvertible op is the clearer message, if there is one
        raise
    check_converter_supports(simplified.path)
    simplified = with_task(simplified, job.request.task, job.request.detection)
    dynamic = [o.name for o in simplified.outputs if not o.static]
    if dynamic:
        raise OnnxError(
            f"the shape of output '{dynamic[0]}' of {job.source.name} is not static even with the input fixed: "
            "export it with fixed dimensions"
        )
    return replace(job, graphs=Graphs(raw, simplified))


def name_classes(job: Job) -> Job:
    """A classifier's class names, checked before the long conversion; a segmenter's if --labels gives them. Top-1
    targets need classes too."""
    graph, given = job.graphs.simplified, job.request.labels
    if job.request.min_top1 is not None and graph.task != "classify":
        raise LabelsError(
            f"--min-top1 is a classifier's target, but {job.source.name} has {graph.task_reason}: give --min-sqnr"
        )
    if graph.task == "classify":
        return replace(job, labels=labels_for(graph.num_classes, given))
    if graph.task == "segment" and given is not None:
        return replace(job, labels=labels_for(int(graph.outputs[0].shape[1]), given))
    if given is not None:
        raise LabelsError(f"--labels names classes, but {job.source.name} has {graph.task_reason}: leave --labels out")
    return job


def read_labelled_photos(job: Job) -> Job:
    """The user's labelled photos, refused if calibration saw any of them. A model that is not a classifier needs
    no labels: its photos replace the built-in held-out ones, so parity and the task's metrics are measured on
    what the app will see."""
    graph, where, calibration = job.graphs.simplified, job.request.val_dir, job.photos.calibration
    if graph.task != "classify":
        if not where.is_dir():
            raise LabelsError(f"--val-dir {where} is not a folder: for {graph.task_reason}, give a folder of photos")
        photos = imgs.photos_in_dir(where, fix="add JPEG or PNG photos to the --val-dir folder")
        check_disjoint(photos, calibration.photos, calibration.user_owned)
        x = imgs.normalize(imgs.heldout_batch(photos, job.source.input_size), job.source.mean, job.source.std)
        what = f"{plural(len(photos), 'photo')} of yours ({where})"
        return replace(job, photos=replace(job.photos, heldout_photos=photos, heldout=x, heldout_description=what))
    labelled = read_labelled(where, job.labels)
    check_disjoint(labelled.photos, calibration.photos, calibration.user_owned)
    return replace(job, labelled=labelled)


def measure_accuracy(job: Job) -> Job:
    """Top-1/top-5 of PyTorch (else ONNX Runtime), ONNX Runtime and every .tflite on the user's labelled photos."""
    source, labels = job.source, job.labelled.labels
    x = imgs.normalize(imgs.heldout_batch(job.labelled.photos, source.input_size), source.mean, source.std)
    outputs = {}
    if source.module is not None:
        outputs["pytorch"] = run_torch(source.module, nchw(x))
    outputs["onnxruntime"] = run_onnx(job.graphs.simplified.path, nchw(x))
    outputs.update({mode: run_tflite(path, x) for mode, path in job.tflites.files.items()})
    names = list(outputs)
    reference = accuracy(names[0], outputs[names[0]], labels)
    ref = outputs[names[0]]
    rows = [reference] + [accuracy(name, outputs[name], labels, reference, ref) for name in names[1:]]
    summary = LabelledAccuracy(job.labelled.description, rows, job.labels, job.request.max_accuracy_drop)
    return replace(job, accuracy=summary)


def hold_out_selection_crops(job: Job) -> Job:
    """The calibration crops that judge the int8 choices, with ONNX Runtime's output on them."""
    graph = job.graphs.simplified
    return replace(job, crops=Crops.judged_by_onnx(job.photos.calib_x, graph.path, graph.outputs))


def _convert(job: Job, graph: OnnxModel, key: str, modes: list[str]) -> TfliteConversion:
    """Run onnx2tf; on failure keep its log beside the (never created) artifact folder."""
    try:
        return convert_tflite(
            graph, job.work_dir / f"work_{key}", modes, job.photos.calib, job.source.mean, job.source.std
        )
    except ConversionError as exc:
        if exc.log_path is not None and exc.log_path.is_file():
            kept = job.request.out_root / f"{job.source.name}.onnx2tf-error.log"
            shutil.copyfile(exc.log_path, kept)
            exc.log_path = kept
        raise


def convert_title(job: Job) -> str:
    graph = " (int8 from the equalized graph)" if job.graphs.equalized is not None else ""
    return f"onnx2tf -> {', '.join(job.request.modes)}{graph}"


def _name_outputs(path: Path, specs) -> None:
    """The ONNX outputs' names on the file's outputs: converters that start from a SavedModel call them Identity,
    Identity_1, ...; apps and the parity look them up by the ONNX name."""
    summary = inspect_tflite(path)
    rename_outputs(path, match_outputs([(n, o.shape) for n, o in zip(summary.output_names, summary.outputs)], specs))


def convert(job: Job) -> Job:
    """Every requested .tflite. int8 comes from the equalized graph when the equalization stage scaled anything
    (it chose each pair's scaling by simulating that pair in int8), else from the plain one; the fp32 file converted
    from int8's graph is kept as its float twin. The float variants always come from the plain graph."""
    modes, graphs = job.request.modes, job.graphs
    int8_graph = "equalized" if graphs.equalized is not None else "plain"
    if "int8" in modes and int8_graph == "plain":
        plain_modes = sorted({*modes, "fp32"}, key=QUANT_MODES.index)
    else:
        plain_modes = [mode for mode in modes if mode != "int8"]
    runs = {"plain": (graphs.simplified, plain_modes)} if plain_modes else {}
    if int8_graph == "equalized":  # the equalization stage runs only for int8
        runs["equalized"] = (graphs.equalized, ["fp32", "int8"])
    # one after the other: side by side, two converters held two copies of TensorFlow (mobilenet_v2 --quant all:
    # 3.3 GB for the export's processes); each stops its converter if it fails or the export is interrupted
    conversions = {key: _convert(job, graph, key, modes) for key, (graph, modes) in runs.items()}
    float_twin = None
    if "int8" in modes:
        float_twin = job.work_dir / f"{job.source.name}_int8_float_twin.tflite"
        shutil.copyfile(conversions[int8_graph].files["fp32"], float_twin)
    files = {}
    for mode in modes:
        files[mode] = job.work_dir / f"{job.source.name}_{mode}.tflite"
        shutil.move(str(conversions[int8_graph if mode == "int8" else "plain"].files[mode]), files[mode])
    # the work folder is gone once the export finishes: records name the model folder instead
    final = str(job.request.out_root / job.source.name)
    for path in [*files.values(), *([float_twin] if float_twin else [])]:
        _name_outputs(path, graphs.simplified.outputs)
    settings = {runs[key][0].path.name: c.settings for key, c in conversions.items()}
    settings = json.loads(json.dumps(settings, ensure_ascii=False).replace(str(job.work_dir), final))
    log = "\n".join(c.log_path.read_text(errors="replace") for c in conversions.values())
    (job.work_dir / "convert.log").write_text(log.replace(str(job.work_dir), final))
    for key in conversions:
        shutil.rmtree(job.work_dir / f"work_{key}")
    return replace(job, tflites=Tflites(files, settings, float_twin))


def _optimize(path: Path, images: np.ndarray) -> dict:
    """Apply the .tflite layout pass in place, keeping the result only if outputs stay identical on `images`."""
    candidate = path.with_name(f".{path.name}.optimized")
    try:
        result = rewrite_layout(path, candidate)
        summary = {"islands_rewritten": result.islands, "ops_before": result.ops_before, "ops_after": result.ops_after}
        if result.islands == 0:
            candidate.unlink()
            return {**summary, "applied": False, "verified": "nothing to rewrite"}
        before, after = run_tflite_outputs(path, images), run_tflite_outputs(candidate, images)
    except (ValueError, RuntimeError) as exc:  # the pass is optional: any trouble keeps the converter's file
        candidate.unlink(missing_ok=True)
        summary = {"islands_rewritten": 0, "ops_before": {}, "ops_after": {}, "applied": False}
        return {**summary, "verified": f"not optimized: {exc}"}
    if before.keys() != after.keys():
        candidate.unlink()
        return {**summary, "applied": False, "verified": "the rewrite renamed the outputs: kept the original"}
    original = inspect_tflite(path)
    integer = {name: t.dtype != "float32" for name, t in zip(original.output_names, original.outputs)}
    diffs = {name: float(np.max(np.abs(y.astype(np.float64) - after[name]))) for name, y in before.items()}
    max_diff = max(diffs.values())
    limits = {name: 0.0 if integer[name] else FLOAT_ROUNDING * float(np.max(np.abs(y))) for name, y in before.items()}
    if not all(diffs[name] <= limits[name] for name in before):  # NaN never passes
        candidate.unlink()
        return {**summary, "applied": False, "verified": f"outputs changed on {len(images)} photos: kept the original"}
    candidate.replace(path)
    check = "identical" if max_diff == 0 else f"equal to float rounding (max diff {max_diff:.2g})"
    return {**summary, "applied": True, "verified": f"outputs {check} on {len(images)} held-out photos"}


def optimize_layout(job: Job) -> Job:
    images = job.photos.heldout[:LAYOUT_CHECK_IMAGES]
    layout = {mode: _optimize(path, images) for mode, path in job.tflites.files.items()}
    if job.tflites.float_twin is not None:
        _optimize(job.tflites.float_twin, images)  # the same rewrite as its int8 graph, so their layers still pair
    return replace(job, layout=layout)


def drop_float_twin(job: Job) -> Job:
    """The float twin ships only when it differs from the fp32 file and the diagnosis uses it."""
    twin = job.tflites.float_twin
    equalization = job.int8_summaries.get("equalization")
    if equalization is not None and equalization.applied and "fp32" in job.tflites.files:
        return job
    twin.unlink()
    return replace(job, tflites=replace(job.tflites, float_twin=None))


VARIANT_TEXT = {
    "fp32": "float32",
    "fp16": "float16 weights",
    "dynamic": "dynamic-range int8 (int8 weights, float activations)",
    "int8": "full-integer int8 (int8 weights and activations)",
}


def ssd_decoding(graph: OnnxModel) -> SsdDecoding | None:
    """What MediaPipe's ObjectDetector needs to decode a detector's SSD offsets itself: only TensorFlow's order
    (anchor-yxhw), the one it reads. Anchors are taken as relative to the input image when every value lies within
    [-2, 2], otherwise as the input's pixels, and divided by its size."""
    detection = graph.detection
    if graph.task != "detect" or detection.box_format != "anchor-yxhw":
        return None
    anchors = read_anchors(detection.anchors)
    if np.abs(anchors).max() > 2:
        height, width = graph.input_size
        anchors = anchors / np.array([width, height, width, height], np.float64)
    rows = tuple(tuple(float(v) for v in row) for row in anchors)
    return SsdDecoding(detection.boxes, detection.scores, rows, detection.box_scales)


def embed_metadata(job: Job) -> Job:
    """labels.txt, and TFLite Metadata (normalization, image size, every output, labels if any) inside every
    .tflite, read back with the official reader and checked against the contract preprocess.json will state."""
    source, labels_file = job.source, job.work_dir / LABELS_FILE
    if job.labels:
        write_text_atomic(labels_file, "\n".join(job.labels) + "\n")
    graph = job.graphs.simplified
    caveat = " Random weights: for testing the export only." if source.random_weights else ""
    what = f"{len(job.labels)} classes" if job.labels else f"task {graph.task}, {len(graph.outputs)} output(s)"
    packed = labels_file if job.labels else None
    contract = preprocess_contract(
        source.input_size, source.mean, source.std, job.tflites.summaries(), graph, source.folded
    )
    detector = ssd_decoding(graph)
    for mode, path in job.tflites.files.items():
        description = f"{source.name}, {VARIANT_TEXT[mode]}, from {source.description}; {what}.{caveat}"
        write_metadata(path, f"{source.name} ({mode})", description, contract, mode, packed, detector)
        problems = disagreements(read_metadata(path), contract, job.labels)
        if problems:
            raise MetadataError(f"{path.name}: its metadata disagrees with preprocess.json ({problems[0]})")
    return job


def check_gpu_delegate(job: Job) -> Job:
    return replace(job, gpu={mode: gpu_readiness(path) for mode, path in job.tflites.files.items()})


def parity(job: Job) -> Job:
    source, request, files = job.source, job.request, job.tflites.files
    rows = check_parity(
        job.graphs.simplified,
        files,
        job.photos.heldout,
        [p.label for p in job.photos.heldout_photos],
        {"onnx": request.thresholds["onnx"], **{m: request.thresholds[m] for m in files}},
        torch_model=source.module,
        with_accuracy=job.graphs.simplified.num_classes == IMAGENET_CLASSES and not source.random_weights,
    )
    return replace(job, rows=rows)


def diagnose_int8(job: Job) -> Job:
    files = job.tflites.files
    heldout = job.photos.heldout[:DIAGNOSIS_IMAGES]
    reference = job.tflites.float_twin or files["fp32"]
    diagnosis = diagnose(reference, files["int8"], heldout)
    write_diagnosis(job.work_dir, diagnosis, reference, files["int8"], f"{len(heldout)} held-out photos")
    return replace(job, diagnosis=diagnosis)
