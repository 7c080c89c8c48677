"""The export's written record: the app contract, parity.json and report.md."""

from __future__ import annotations

import json

from mobile_vision_export.export.contract import preprocess_contract
from mobile_vision_export.export.files import write_text_atomic
from mobile_vision_export.export.provenance import sha256_array
from mobile_vision_export.export.tflite_inspect import TfliteSummary
from mobile_vision_export.export.threads import runtime_threads
from mobile_vision_export.models.weights import sha256_file
from mobile_vision_export.pipeline.int8_steps import STEPS
from mobile_vision_export.pipeline.stages import DIAGNOSIS_IMAGES, Job
from mobile_vision_export.report.diagnose import report_section, sqnr_curve
from mobile_vision_export.report.document import Report
from mobile_vision_export.report.html import Bar, bar_chart, contact_sheet
from mobile_vision_export.report.parity import format_sqnr, parity_json, render_report

SHEET_PHOTOS = 48  # changed answers shown in report.html's contact sheet
WORST_CLASSES = 15


def _model_info(job: Job, params, macs) -> dict:
    source, graphs = job.source, job.graphs
    info = {
        "name": source.name,
        "source": source.description,
        "weights": source.weights,
        "input_size": list(source.input_size),
        "task": graphs.simplified.task,
        "task_reason": graphs.simplified.task_reason,
        "outputs": [{"name": o.name, "onnx_shape": list(o.shape)} for o in graphs.simplified.outputs],
        "mean": list(source.mean),
        "std": list(source.std),
        "normalization_in_graph": None
        if source.folded is None
        else {"mean": list(source.folded[0]), "std": list(source.folded[1])},
        "params": params,
        "macs": macs,
        "channel_shuffles": source.channel_shuffles,
        "onnx_exporter": graphs.raw.exporter,
        "opset": graphs.raw.opset,
        "onnx_nodes": graphs.raw.nodes,
        "onnx_nodes_simplified": graphs.simplified.nodes,
        "converter_settings": job.tflites.settings,
    }
    for step in STEPS:
        summary = job.int8_summaries.get(step.name)
        reason = job.skipped.get(step.title, "not run")
        info[step.key] = summary.as_dict() if summary else {"applied": False, "reason": reason}
    info["graph_optimization"] = job.layout
    return info


def _inputs(job: Job) -> dict:
    photos = job.photos
    return {
        "weights_sha256": job.source.weights_sha256,
        "onnx_sha256": sha256_file(job.graphs.raw.path),
        "calibration": {"description": photos.calib_description, "sha256_uint8_codes": sha256_array(photos.calib)},
        "validation": {
            "description": photos.heldout_description,
            "files": [p.path.name for p in photos.heldout_photos],
            "sha256": sha256_array(photos.heldout),
        },
    }


def write_reports(job: Job, summaries: dict[str, TfliteSummary], timings: dict[str, float], params, macs) -> None:
    work_dir, source = job.work_dir, job.source
    graph = job.graphs.simplified
    contract = preprocess_contract(source.input_size, source.mean, source.std, summaries, graph, source.folded)
    write_text_atomic(work_dir / "preprocess.json", json.dumps(contract, indent=2) + "\n")
    model, inputs = _model_info(job, params, macs), _inputs(job)
    artifacts = {
        p.name: sha256_file(p)
        for p in sorted(work_dir.iterdir())
        if p.suffix in (".tflite", ".onnx") or p.name in ("labels.txt", "preprocess.json")
    }
    record = parity_json(model, inputs, job.rows, artifacts, job.request.command, job.passed)
    record["variants"] = {
        mode: {"size_bytes": s.size_bytes, "ops": s.op_count, "transpose": s.ops.get("TRANSPOSE", 0)}
        for mode, s in summaries.items()
    }
    record["timings_s"] = {stage: round(seconds, 2) for stage, seconds in timings.items()}
    record["runtime_threads"] = runtime_threads()  # fewer when a batch ran exports side by side
    record["gpu_delegate"] = {mode: readiness.as_dict() for mode, readiness in job.gpu.items()}
    if job.accuracy is not None:
        record["accuracy_on_your_photos"] = job.accuracy.as_dict()
    write_text_atomic(work_dir / "parity.json", json.dumps(record, indent=2, allow_nan=False) + "\n")
    steps = [job.accuracy] + [job.int8_summaries.get(step.name) for step in STEPS]
    sections = [section for section in (s.markdown() for s in steps if s) if section]
    if job.gpu:
        sections.append(_gpu_section(job))
    report = render_report(model, inputs, job.rows, summaries, timings, sections, job.failures)
    if job.diagnosis is not None:
        images = f"{min(DIAGNOSIS_IMAGES, len(job.photos.heldout))} held-out photos"
        report += "\n" + report_section(job.diagnosis, images)
    Report(report, _figures(job)).write(work_dir)


def _gpu_section(job: Job) -> list[str]:
    lines = [
        "## GPU delegate readiness",
        "",
        "TensorFlow's analyzer (`tf.lite.experimental.Analyzer`, gpu_compatibility=True) on each file. LiteRT 2.x "
        "runs the GPU through `CompiledModel`; the `Interpreter` API the Android demo uses is CPU-only.",
        "",
        "| variant | ops | GPU delegate |",
        "|---|---:|---|",
    ]
    lines += [f"| {mode} | {r.ops} | {r.summary()} |" for mode, r in job.gpu.items()]
    return lines


def _figures(job: Job) -> dict[str, list[str]]:
    """report.html's plots, by the report.md section they follow."""
    rows = job.rows
    finite = [r.metrics.sqnr_db for r in rows if r.metrics.sqnr_db < float("inf")]
    parity = [
        bar_chart(
            "SQNR of each variant against its reference on the held-out photos (longer is closer)",
            [
                Bar(f"{r.variant} vs {r.reference}", r.metrics.sqnr_db, f"{format_sqnr(r.metrics.sqnr_db)} dB")
                for r in rows
            ],
            max(finite + [1.0]),
        )
    ]
    agreements = [
        Bar(r.variant, r.metrics.top1_agreement, f"{r.metrics.top1_agreement:.1%}")
        for r in rows
        if r.metrics.top1_agreement is not None
    ]
    if agreements:
        parity.append(bar_chart("Top-1 agreement with the reference on the held-out photos", agreements, 1.0))
    figures = {"Parity": parity}
    if job.accuracy is not None:
        figures["Accuracy on your labelled photos"] = _accuracy_figures(job)
    if job.diagnosis is not None:
        figures["Per-layer int8 error"] = [
            f"<figure>{sqnr_curve(job.diagnosis)}<figcaption>SQNR of each int8 layer's "
            "output against float, in graph order (red: largest drops)</figcaption>"
            "</figure>"
        ]
    return figures


def _accuracy_figures(job: Job) -> list[str]:
    rows, names = job.accuracy.rows, job.accuracy.class_names
    reference, photos = rows[0], job.labelled.photos
    figures = [
        bar_chart(
            f"Top-1 accuracy on your {len(photos)} labelled photos",
            [Bar(r.model, r.top1, f"{r.top1:.1%}") for r in rows],
            1.0,
        )
    ]
    int8 = [r for r in rows if r.model == "int8"]
    worst = int8[0] if int8 else max(rows[1:], key=lambda r: r.drop_points, default=None)
    if worst is None:
        return figures
    drops = sorted(((reference.per_class[c] - acc, c) for c, acc in worst.per_class.items()), reverse=True)
    drops = [(d, c) for d, c in drops if d > 0][:WORST_CLASSES]
    if drops:
        figures.append(
            bar_chart(
                f"Classes that lose most top-1 in {worst.model} against {reference.model} (points)",
                [Bar(names[c], d, f"-{100 * d:.0f}") for d, c in drops],
                1.0,
            )
        )
    changed = [k for k in range(len(photos)) if worst.predicted[k] != reference.predicted[k]][:SHEET_PHOTOS]
    captions = [
        f"{photos[k].path.name}: true {names[int(job.labelled.labels[k])]}; {reference.model} "
        f"{names[int(reference.predicted[k])]}; {worst.model} {names[int(worst.predicted[k])]}"
        for k in changed
    ]
    if changed:
        title = f"Photos where {worst.model} answers differently from {reference.model} ({len(changed)} shown)"
        figures.append(contact_sheet(title, [(photos[k].path, caption) for k, caption in zip(changed, captions)]))
    return figures
