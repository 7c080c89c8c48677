"""parity.json and report.md: what was produced, from what, by which tools, and how well it matches."""

from __future__ import annotations

import math

from mobile_vision_export.export.provenance import TOOL_NAME, tool_versions
from mobile_vision_export.export.tflite_inspect import LAYOUT_OPS, TfliteSummary
from mobile_vision_export.validate.metrics import ParityMetrics
from mobile_vision_export.validate.parity import VariantParity


def _json_number(value: float | None) -> float | None:
    """JSON has no infinity: an exact match (SQNR inf) is written as null, as is a metric that does not apply."""
    return value if value is not None and math.isfinite(value) else None


def parity_json(
    model: dict, inputs: dict, rows: list[VariantParity], artifacts: dict[str, str], command: str, passed: bool
) -> dict:
    return {
        "tool": TOOL_NAME,
        "versions": tool_versions(),
        "command": command,
        "model": model,
        "inputs": inputs,
        "artifacts_sha256": artifacts,
        "passed": passed,
        "parity": [
            {
                "variant": r.variant,
                "reference": r.reference,
                "passed": r.passed,
                "failures": r.failures,
                "metrics": {k: _json_number(v) for k, v in r.metrics.as_dict().items()},
                "thresholds": r.thresholds.as_dict(),
                "accuracy_top1_labelled": r.accuracy_top1,
                "outputs": {
                    name: {k: _json_number(v) if isinstance(v, float) else v for k, v in metrics.items()}
                    for name, metrics in r.outputs.items()
                },
            }
            for r in rows
        ],
    }


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def format_sqnr(value: float | None) -> str:
    """SQNR in dB for a table; identical outputs (inf, or None once through JSON) read "inf"."""
    return "inf" if value is None or value == float("inf") else f"{value:.1f}"


def _changed_ops(before: dict, after: dict) -> str:
    names = sorted(set(before) | set(after))
    changed = [f"{n} {before.get(n, 0)} -> {after.get(n, 0)}" for n in names if before.get(n) != after.get(n)]
    return ", ".join(changed) or "-"


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


def _per_output_lines(rows: list[VariantParity]) -> list[str]:
    """Each output's figures and the task's own metrics, when a row has more than one output or any task metric."""
    plain = set(ParityMetrics.__dataclass_fields__) | {"layout"}
    if not any(len(r.outputs) > 1 or set(m) - plain for r in rows for m in r.outputs.values()):
        return []
    lines = [
        "",
        "### Per output",
        "",
        "| variant | output | layout | SQNR dB | cosine (mean/min) | task metrics |",
        "|---|---|---|---:|---|---|",
    ]
    for r in rows:
        for name, m in r.outputs.items():
            extra = ", ".join(
                f"{k.replace('_', ' ')} {v:.3f}" if isinstance(v, float) else f"{k.replace('_', ' ')} {v}"
                for k, v in m.items()
                if k not in plain
            )
            lines.append(
                f"| {r.variant} | {name} | {m['layout']} | {format_sqnr(m['sqnr_db'])} | "
                f"{m['cosine_mean']:.6f} / {m['cosine_min']:.6f} | {extra or '-'} |"
            )
    return lines


def _dynamic_range_lines(model: dict, summaries: dict[str, TfliteSummary]) -> list[str]:
    """Where variants have dynamic-range layers, that their figures hold for runtimes that quantize as LiteRT does."""
    output = model.get("int8_output") or {}
    int8_hybrid = (model.get("int8_fallback") or {}).get("dynamic_range_ops") or any(
        o.get("how") == "dynamic-range" for o in output.get("outputs", [])
    )
    variants = [v for v in summaries if v == "dynamic" or (v == "int8" and int8_hybrid)]
    if not variants:
        return []
    return [
        "",
        f"Dynamic-range layers ({', '.join(variants)}) quantize their float input at run time, and runtimes differ:"
        f" these figures come from LiteRT {tool_versions().get('ai-edge-litert', '')}, which does it per pixel;"
        " older runtimes (TensorFlow 2.19's interpreter, the Task Library) do it per image and read about 2 dB"
        " further from float on mobilenet_v2. Check these variants in your app's runtime (docs/known-limits.md).",
    ]


def render_report(
    model: dict,
    inputs: dict,
    rows: list[VariantParity],
    summaries: dict[str, TfliteSummary],
    timings: dict[str, float],
    sections: list[list[str]],
    failures: list[str],
) -> str:
    """The human-readable report: first whether the files can ship and, if not, every check that failed; then model,
    sizes and op histograms, parity table, the given `sections` (each a list of markdown lines starting with its
    heading), layout pass, stage timings, versions."""
    if failures:
        lines = [f"# {model['name']}: FAILED, {len(failures)} check{'s' if len(failures) > 1 else ''}", ""]
        lines += [f"- {failure}" for failure in failures] + [""]
    else:
        lines = [f"# {model['name']}: PASSED, every check", ""]
    lines += [
        f"- Source: {model['source']}",
        f"- Weights: {model['weights']}",
        f"- Input: 1x3x{model['input_size'][0]}x{model['input_size'][1]} RGB (NCHW in ONNX), mean {model['mean']}, "
        f"std {model['std']}",
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
            f"{m.cosine_min:.6f} | {format_sqnr(m.sqnr_db)} | {_share(m.top1_agreement)} | {_share(m.top5_overlap)} | "
            f"{acc} | {thr} | {result} |"
        )
    lines += _per_output_lines(rows)
    lines += _dynamic_range_lines(model, summaries)
    lines += ["", "## Op histogram", ""]
    all_ops = sorted({op for s in summaries.values() for op in s.ops}, key=lambda op: (op not in LAYOUT_OPS, op))
    lines += ["| op | " + " | ".join(summaries) + " |", "|---|" + "---:|" * len(summaries)]
    lines += [f"| {op} | " + " | ".join(str(s.ops.get(op, 0)) for s in summaries.values()) + " |" for op in all_ops]
    for section in sections:
        lines += ["", *section]
    lines += _optimization_lines(model.get("graph_optimization") or {})
    lines += ["", "## Stage timings", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {stage} | {sec:.1f} |" for stage, sec in timings.items()]
    lines += ["", "## Versions", ""] + [f"- {k}: {v}" for k, v in tool_versions().items()]
    return "\n".join(lines) + "\n"
