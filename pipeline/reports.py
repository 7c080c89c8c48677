"""The export's written record: the app contract, parity.json and report.md."""

from __future__ import annotations

import json

from export.contract import preprocess_contract
from export.files import write_text_atomic
from export.tflite_inspect import TfliteSummary
from models.weights import sha256_file
from pipeline.stages import DIAGNOSIS_IMAGES, Job
from validate.diagnose_report import report_section
from validate.report import parity_json, render_report, sha256_array

# parity.json key and report order of each int8 step's summary
INT8_STEPS = (
    ("int8_equalization", "equalization", "range equalization (int8 graph)"),
    ("int8_activation_ranges", "ranges", "int8 percentile activation ranges"),
    ("int8_bias_correction", "bias_correction", "int8 bias correction"),
    ("int8_float_fallback", "fallback", "int8 float fallback"),
    ("int8_output", "output", "int8 output in float"),
)


def _model_info(job: Job, params, macs) -> dict:
    source, graphs = job.source, job.graphs
    info = {
        "name": source.name,
        "source": source.description,
        "weights": source.weights,
        "input_size": source.input_size,
        "mean": list(source.mean),
        "std": list(source.std),
        "params": params,
        "macs": macs,
        "onnx_exporter": graphs.raw.exporter,
        "opset": graphs.raw.opset,
        "onnx_nodes": graphs.raw.nodes,
        "onnx_nodes_simplified": graphs.simplified.nodes,
        "converter_settings": job.tflites.settings,
    }
    for key, attribute, stage in INT8_STEPS:
        summary = getattr(job, attribute)
        info[key] = summary.as_dict() if summary else {"applied": False, "reason": job.skipped.get(stage, "not run")}
    info["graph_optimization"] = job.layout
    return info


def _inputs(job: Job) -> dict:
    photos = job.photos
    labelled = sum(p.label is not None for p in photos.heldout_photos)
    return {
        "weights_sha256": job.source.weights_sha256,
        "onnx_sha256": sha256_file(job.graphs.raw.path),
        "calibration": {"description": photos.calib_description, "sha256": sha256_array(photos.calib)},
        "validation": {
            "description": f"{len(photos.heldout_photos)} held-out photos ({labelled} with ImageNet labels)",
            "files": [p.path.name for p in photos.heldout_photos],
            "sha256": sha256_array(photos.heldout),
        },
    }


def write_reports(job: Job, summaries: dict[str, TfliteSummary], timings: dict[str, float], params, macs) -> None:
    stage_dir, source = job.stage_dir, job.source
    num_classes = job.graphs.simplified.num_classes
    contract = preprocess_contract(source.input_size, source.mean, source.std, summaries, num_classes)
    write_text_atomic(stage_dir / "preprocess.json", json.dumps(contract, indent=2) + "\n")
    model, inputs = _model_info(job, params, macs), _inputs(job)
    artifacts = {
        p.name: sha256_file(p)
        for p in sorted(stage_dir.iterdir())
        if p.suffix in (".tflite", ".onnx") or p.name in ("labels.txt", "preprocess.json")
    }
    record = parity_json(model, inputs, job.rows, artifacts, job.request.command, job.passed)
    if job.accuracy is not None:
        record["accuracy_on_your_photos"] = job.accuracy.as_dict()
    write_text_atomic(stage_dir / "parity.json", json.dumps(record, indent=2, allow_nan=False) + "\n")
    steps = [job.accuracy] + [getattr(job, attribute) for _, attribute, _ in INT8_STEPS]
    sections = [section for section in (s.markdown() for s in steps if s) if section]
    report = render_report(model, inputs, job.rows, summaries, timings, sections, job.passed)
    if job.diagnosis is not None:
        images = f"{min(DIAGNOSIS_IMAGES, len(job.photos.heldout))} held-out photos"
        report += "\n" + report_section(job.diagnosis, images)
    write_text_atomic(stage_dir / "report.md", report)
