"""Float fallback for chosen layers of a full-integer .tflite.

The chosen ops run in float32 with the float twin's weights. Their int8 inputs pass through a DEQUANTIZE, and each
output that a remaining int8 op (or the model output) reads passes through a QUANTIZE to that tensor's exact scale
and zero point; between two chosen ops the tensor stays float. Every other op, tensor and quantization parameter is
left as it was, so the model keeps its int8 input and output.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from export.tflite_inspect import op_inputs, op_outputs, paired_layers
from export.tflite_model import BIASED_OPS, add_opcode, add_tensor, compact, read_model, unary_op, write_model
from int8.crops import Crops
from profiling.host import measure_host
from profiling.run import model_input
from validate.diagnose import diagnose
from validate.metrics import sqnr_db
from validate.runners import run_tflite

MAX_STEPS = 8  # worst layers (each with its consumers) tried in float before giving up on the target
MIN_GAIN_DB = 0.1  # a layer stays in float only if it gains at least this much on the selection crops


@dataclass(frozen=True)
class FallbackRewrite:
    ops: list[int]  # int8 op indices now in float
    float_weights: int  # constant values now stored as float32


def fall_back(int8_path: Path, float_twin: Path, op_indices: set[int], dst: Path) -> FallbackRewrite:
    """Write `int8_path` to `dst` with the ops at `op_indices` running in float (weights from `float_twin`)."""
    model, twin = read_model(int8_path), read_model(float_twin)
    graph, twin_graph = model.subgraphs[0], twin.subgraphs[0]
    twin_producer = {int(op.outputs[0]): op for op in twin_graph.operators}
    by_output = {index: f_tensor for index, _, f_tensor, _, _ in paired_layers(float_twin, int8_path)}
    missing = sorted(i for i in op_indices if i not in by_output)
    if missing:
        raise ValueError(f"ops {missing} of {int8_path.name} have no counterpart in {float_twin.name}")
    chosen = sorted(op_indices)
    consumers: dict[int, set[int]] = {}
    for index, op in enumerate(graph.operators):
        for t in op.inputs:
            consumers.setdefault(int(t), set()).add(index)
    outputs = {int(t) for t in graph.outputs}
    float_of: dict[int, int] = {}  # int8 activation tensor -> its float stand-in
    before: dict[int, list] = {i: [] for i in chosen}
    after: dict[int, list] = {i: [] for i in chosen}
    float_weights = 0
    for index in chosen:
        op, twin_op = graph.operators[index], twin_producer[by_output[index]]
        new_inputs = []
        for position, t in enumerate(op.inputs):
            t = int(t)
            twin_t = int(twin_op.inputs[position]) if position < len(twin_op.inputs) else -1
            twin_data = twin.buffers[twin_graph.tensors[twin_t].buffer].data if twin_t >= 0 else None
            if t < 0:
                new_inputs.append(t)
            elif twin_data is not None and len(twin_data):  # a constant: take the twin's (float) value
                source = twin_graph.tensors[twin_t]
                buffer = schema.BufferT()
                buffer.data = np.array(twin_data, np.uint8)
                new_inputs.append(add_tensor(model, source, f"{source.name.decode()}/float", buffer))
                float_weights += int(np.prod(source.shape)) if source.type == schema.TensorType.FLOAT32 else 0
            else:
                if t not in float_of:  # made by an op left in int8 (a chosen producer came first and made it)
                    float_of[t] = add_tensor(model, graph.tensors[t], f"{graph.tensors[t].name.decode()}/float")
                    before[index].append(unary_op(model, schema.BuiltinOperator.DEQUANTIZE, t, float_of[t]))
                new_inputs.append(float_of[t])
        out = int(op.outputs[0])
        float_of[out] = add_tensor(model, graph.tensors[out], f"{graph.tensors[out].name.decode()}/float")
        if out in outputs or not consumers.get(out, set()) <= op_indices:
            after[index].append(unary_op(model, schema.BuiltinOperator.QUANTIZE, float_of[out], out))
        replacement = copy.copy(twin_op)
        code = twin.operatorCodes[twin_op.opcodeIndex]
        replacement.opcodeIndex = add_opcode(model, max(code.builtinCode, code.deprecatedBuiltinCode), code.version)
        replacement.inputs = np.array(new_inputs, np.int32)
        replacement.outputs = np.array([float_of[out]], np.int32)
        graph.operators[index] = replacement
    graph.operators = [
        new for index, op in enumerate(graph.operators) for new in [*before.get(index, []), op, *after.get(index, [])]
    ]
    compact(model)
    write_model(model, dst)
    return FallbackRewrite(ops=chosen, float_weights=float_weights)


@dataclass(frozen=True)
class FallbackStep:
    layer: str | None  # the int8 layer tried (None: int8 as converted)
    ops_in_float: list[int]
    calibration_sqnr_db: float
    kept: bool


@dataclass(frozen=True)
class Cost:
    bytes: int
    host_ms: float  # median host latency, 1 thread


@dataclass(frozen=True)
class FloatFallback:
    """The layers tried in float for --min-sqnr, which were kept, and what they cost."""

    target_db: float
    calibration_crops: int
    steps: list[FallbackStep]
    reached: bool
    ops_in_float: list[int] = field(default_factory=list)
    cost_before: Cost | None = None
    cost_after: Cost | None = None

    @property
    def applied(self) -> bool:
        return bool(self.ops_in_float)

    def as_dict(self) -> dict:
        out = {
            "target_db": self.target_db,
            "calibration_crops": self.calibration_crops,
            "steps": [dict(step.__dict__) for step in self.steps],
            "applied": self.applied,
            "reached": self.reached,
        }
        if self.applied:
            out["ops_in_float"] = self.ops_in_float
            out["cost"] = {"before": dict(self.cost_before.__dict__), "after": dict(self.cost_after.__dict__)}
        return out

    def markdown(self) -> list[str]:
        title = ["## int8 float fallback (--min-sqnr)", ""]
        if len(self.steps) == 1:
            return title + [
                f"int8 already reaches {self.steps[0].calibration_sqnr_db:.2f} dB against float on "
                f"{self.calibration_crops} calibration crops (target {self.target_db:g} dB): nothing falls back."
            ]
        lines = title + [
            f"Target {self.target_db:g} dB against float on {self.calibration_crops} calibration crops. The worst "
            "layers (largest SQNR drop), each with the ops reading its output, run in float with DEQUANTIZE / "
            f"QUANTIZE around them; a layer that does not gain {MIN_GAIN_DB:g} dB is put back: "
            + ("target reached." if self.reached else "target not reached."),
            "",
            "| step | layer tried | ops in float | calibration SQNR dB | kept |",
            "|---:|---|---|---:|---|",
        ]
        for k, step in enumerate(self.steps):
            layer = f"`{step.layer}`" if step.layer else "(none: int8 as converted)"
            ops = ", ".join(f"#{i}" for i in step.ops_in_float) or "-"
            lines.append(f"| {k} | {layer} | {ops} | {step.calibration_sqnr_db:.2f} | {'yes' if step.kept else 'no'} |")
        if not self.applied:
            return lines + ["", "No step improved on the converted int8: it is kept as it was."]
        before, after = self.cost_before, self.cost_after
        return lines + [
            "",
            f"Cost: {before.bytes:,} -> {after.bytes:,} bytes (x{after.bytes / before.bytes:.3f}), host latency "
            f"{before.host_ms:.2f} -> {after.host_ms:.2f} ms (1 thread, x{after.host_ms / before.host_ms:.3f}).",
        ]


def _cost(model: Path) -> Cost:
    image = model_input(model)[0]
    return Cost(model.stat().st_size, measure_host(model, image, threads=1, warmups=10, runs=50).median_ms)


def reach_min_sqnr(int8: Path, float_twin: Path, crops: Crops, target: float) -> FloatFallback:
    """Fall back the worst int8 layers of `int8` (in place; by SQNR drop on the selection crops), each with the ops
    reading its output so that tensor stays float, keeping a layer only if it gains there, until int8 reaches
    `target` dB against float there or MAX_STEPS were tried. The held-out parity then checks the target on photos
    it never saw."""
    images, reference = crops.selection, crops.reference
    baseline = float(sqnr_db(reference, run_tflite(int8, images)))
    steps = [FallbackStep(None, [], baseline, True)]
    if baseline >= target:
        return FloatFallback(target, len(images), steps, reached=True)
    ops = op_outputs(int8)
    readers: dict[int, set[int]] = {}
    for index, inputs in enumerate(op_inputs(int8)):
        for tensor in inputs:
            readers.setdefault(tensor, set()).add(index)
    paired = {index for index, *_ in paired_layers(float_twin, int8)}
    layers = diagnose(float_twin, int8, images[:8]).layers
    worst = sorted((la for la in layers if la.op in BIASED_OPS and la.drop_db > 0), key=lambda la: -la.drop_db)
    candidate, trial = int8.with_name(f".{int8.name}.fallback"), int8.with_name(f".{int8.name}.trial")
    chosen: set[int] = set()
    best = baseline
    for layer in worst[:MAX_STEPS]:
        ops_in_float = chosen | {layer.index} | (readers.get(ops[layer.index][1], set()) & paired)
        fall_back(int8, float_twin, ops_in_float, trial)
        score = float(sqnr_db(reference, run_tflite(trial, images)))
        kept = score >= best + MIN_GAIN_DB  # a layer that does not help is not paid for
        steps.append(FallbackStep(layer.tensor, sorted(ops_in_float), score, kept))
        if kept:
            chosen, best = ops_in_float, score
            trial.replace(candidate)
        if best >= target:
            break
    trial.unlink(missing_ok=True)
    if not chosen:
        return FloatFallback(target, len(images), steps, reached=False)
    before, after = _cost(int8), _cost(candidate)
    candidate.replace(int8)
    return FloatFallback(target, len(images), steps, bool(best >= target), sorted(chosen), before, after)
