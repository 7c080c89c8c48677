"""Fallback for chosen layers of a full-integer .tflite: dynamic-range int8 first, float32 if that does not help.

The chosen ops compute on float activations. In dynamic-range form a conv, depthwise conv or fully-connected layer keeps
its int8 weights and its int32 bias becomes the float bias it stood for; the kernel quantizes its float input at run
time (LiteRT 2.1 per pixel, older runtimes per image), as in the converter's dynamic-range variant. In float form every
chosen op runs in float32 with the float twin's weights and biases, stored as float16 behind a DEQUANTIZE as in the
converter's float16 variant (half the bytes of float32; the same emulated A76 instructions). Ops without weights (ADD,
PAD, MEAN, ...) run in float32 either way. Int8 inputs of the chosen ops pass through a DEQUANTIZE, and each output that
a remaining int8 op (or the model output) reads passes through a QUANTIZE to that tensor's exact scale and zero point;
between two chosen ops the tensor stays float. Every other op, tensor and quantization parameter is left as it was, so
the model keeps its int8 input and output.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from mobile_vision_export.export.tflite_inspect import (
    inspect_tflite,
    op_inputs,
    op_outputs,
    paired_layers,
    twin_layers,
)
from mobile_vision_export.export.tflite_model import (
    BIASED_OPS,
    add_float_bias,
    add_opcode,
    add_tensor,
    biased_operands,
    compact,
    make_dynamic_range,
    read_model,
    unary_op,
    write_model,
)
from mobile_vision_export.int8.crops import Crops, outputs_in_order
from mobile_vision_export.validate.diagnose import diagnose
from mobile_vision_export.validate.metrics import expected_agreement, sqnr_db

MAX_STEPS = 12  # worst layers (each with its consumers) tried before giving up on the targets
MIN_GAIN_DB = 0.1  # a layer's new form stays only if it gains at least this much on the judging photos
JUDGE_PHOTOS = 400  # unread calibration photos the steps are judged on, at most


# Tried in this order for each layer. The second keeps the int8 weights but takes the float twin's biases: the
# file's biases were shifted against the int8 activations' error (bias correction), which dynamic-range layers no
# longer have (PP-OCRv4's detector, whole network: 10.1 dB with the file's, 15.1 dB with the twin's), unless the
# tuning trained them with their weight levels (mobilenet_v2, last 16 layers: 23.4 dB with the file's, 21.5 with
# the twin's).
FORMS = ("dynamic-range", "dynamic-range, float biases", "float")


@dataclass(frozen=True)
class Judge:
    """The images the fallback's steps are judged on against the float twin, and what they are."""

    images: np.ndarray
    description: str


@dataclass(frozen=True)
class FallbackRewrite:
    ops: list[int]  # int8 op indices now on float activations
    float16_weights: int  # weight values now stored as float16 (the float twin's, float32 once loaded)


def fall_back(
    int8_path: Path,
    float_twin: Path,
    op_indices: set[int],
    dst: Path,
    dynamic: set[int] = frozenset(),
    float_biases: set[int] = frozenset(),
) -> FallbackRewrite:
    """Write `int8_path` to `dst` with the ops at `op_indices` on float activations: those in `dynamic` (conv,
    depthwise conv, transposed conv, fully-connected) in dynamic-range form, with the bias their int32 bias stands
    for or, in `float_biases`, with `float_twin`'s; the others in float32 with `float_twin`'s weights."""
    model, twin = read_model(int8_path), read_model(float_twin)
    graph, twin_graph = model.subgraphs[0], twin.subgraphs[0]
    twins = twin_layers(float_twin, int8_path, twin)
    missing = sorted(i for i in op_indices if i not in twins)
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
    float16_weights = 0
    for index in chosen:
        op, twin_op = graph.operators[index], twins[index].twin_op
        operands = biased_operands(model, op)
        hybrid = index in dynamic and operands is not None
        new_inputs = []
        for position, t in enumerate(op.inputs):
            t = int(t)
            twin_t = int(twin_op.inputs[position]) if position < len(twin_op.inputs) else -1
            twin_data = twin.buffers[twin_graph.tensors[twin_t].buffer].data if twin_t >= 0 else None
            if t < 0:
                new_inputs.append(t)
            elif hybrid and t == operands[1]:  # int8 weights stay
                new_inputs.append(t)
            elif hybrid and t == operands[2] and not (index in float_biases and twin_data is not None):
                new_inputs.append(add_float_bias(model, op))  # in `float_biases`: the twin's, as any constant below
            elif twin_data is not None and len(twin_data):  # a constant: take the twin's (float) value
                source = twin_graph.tensors[twin_t]
                buffer = schema.BufferT()
                buffer.data = np.array(twin_data, np.uint8)
                if (
                    not hybrid
                    and operands is not None
                    and t in operands[1:]
                    and source.type == schema.TensorType.FLOAT32
                ):
                    new_inputs.append(_float16_weights(model, source, buffer, before[index]))
                    float16_weights += int(np.prod(source.shape)) if t == operands[1] else 0
                else:
                    new_inputs.append(add_tensor(model, source, f"{source.name.decode()}/float", buffer))
            else:
                if t not in float_of:  # made by an op left in int8 (a chosen producer came first and made it)
                    float_of[t] = add_tensor(model, graph.tensors[t], f"{graph.tensors[t].name.decode()}/float")
                    before[index].append(unary_op(model, schema.BuiltinOperator.DEQUANTIZE, t, float_of[t]))
                new_inputs.append(float_of[t])
        out = int(op.outputs[0])
        float_of[out] = add_tensor(model, graph.tensors[out], f"{graph.tensors[out].name.decode()}/float")
        if out in outputs or not consumers.get(out, set()) <= op_indices:
            after[index].append(unary_op(model, schema.BuiltinOperator.QUANTIZE, float_of[out], out))
        replacement = copy.copy(op if hybrid else twin_op)
        replacement.inputs = np.array(new_inputs, np.int32)
        replacement.outputs = np.array([float_of[out]], np.int32)
        if hybrid:
            make_dynamic_range(model, replacement)
        else:
            code = twin.operatorCodes[twin_op.opcodeIndex]
            replacement.opcodeIndex = add_opcode(model, max(code.builtinCode, code.deprecatedBuiltinCode), code.version)
        graph.operators[index] = replacement
    graph.operators = [
        new for index, op in enumerate(graph.operators) for new in [*before.get(index, []), op, *after.get(index, [])]
    ]
    compact(model)
    write_model(model, dst)
    return FallbackRewrite(ops=chosen, float16_weights=float16_weights)


def _float16_weights(model: schema.ModelT, source: schema.TensorT, buffer: schema.BufferT, before: list) -> int:
    """`source`'s float32 values (in `buffer`) stored as float16 and unpacked by a DEQUANTIZE appended to `before`,
    as the converter's float16 variant stores weights and biases; returns the float32 tensor the op reads. Weights
    and bias go together: XNNPACK refuses (TensorFlow 2.19) or slows down (LiteRT 2.1) a float16-weight depthwise
    conv whose bias is float32."""
    name = source.name.decode()
    buffer.data = np.frombuffer(buffer.data.tobytes(), np.float32).astype(np.float16).view(np.uint8)
    half = add_tensor(model, source, f"{name}/float16", buffer)
    model.subgraphs[0].tensors[half].type = schema.TensorType.FLOAT16
    unpacked = add_tensor(model, source, f"{name}/float")
    before.append(unary_op(model, schema.BuiltinOperator.DEQUANTIZE, half, unpacked))
    return unpacked


@dataclass(frozen=True)
class Cost:
    bytes: int
    host_ms: float  # median host latency, 1 thread


@dataclass(frozen=True)
class FallbackStep:
    layer: str | None  # the int8 layer tried (None: int8 as it was, or a tail)
    form: str | None  # one of FORMS
    ops: list[int]  # ops on float activations with this step (the ones kept before it included)
    sqnr_db: float  # against float on the judging photos (several outputs: the worst one's)
    top1_agreement: float | None  # counted; None: not a classifier
    expected_top1: float | None  # validate.metrics.expected_agreement: what the steps are judged by
    kept: bool
    cost: Cost
    tail: int = 0  # the last `tail` layers of the graph tried together


@dataclass(frozen=True)
class Fallback:
    """The layers tried in dynamic-range int8 or float for --min-sqnr / --min-top1, which were kept, and what each
    step cost."""

    min_sqnr_db: float | None
    min_top1: float | None
    top1_aim: float | None  # min_top1 plus one standard error of the int8 file's expected agreement
    judged_on: str
    steps: list[FallbackStep]
    reached: bool
    dynamic_ops: list[int] = field(default_factory=list)
    float_ops: list[int] = field(default_factory=list)
    float_bias_ops: list[int] = field(default_factory=list)  # dynamic_ops with the float twin's biases

    @property
    def applied(self) -> bool:
        return bool(self.dynamic_ops or self.float_ops)

    def as_dict(self) -> dict:
        return {
            "min_sqnr_db": self.min_sqnr_db,
            "min_top1": self.min_top1,
            "top1_aim": self.top1_aim,
            "judged_on": self.judged_on,
            "steps": [{**step.__dict__, "cost": dict(step.cost.__dict__)} for step in self.steps],
            "applied": self.applied,
            "reached": self.reached,
            "dynamic_range_ops": self.dynamic_ops,
            "dynamic_range_float_bias_ops": self.float_bias_ops,
            "float_ops": self.float_ops,
        }

    def _targets(self) -> str:
        targets = [f"{self.min_sqnr_db:g} dB"] if self.min_sqnr_db is not None else []
        if self.min_top1 is not None:
            targets.append(
                f"{self.min_top1:.1%} expected top-1 agreement, aimed at {self.top1_aim:.1%} (one standard error over, "
                "so that the target holds on other photos too)"
            )
        return " and ".join(targets)

    def markdown(self) -> list[str]:
        title = ["## int8 fallback (--min-sqnr / --min-top1)", ""]
        first = self.steps[0]
        if len(self.steps) == 1:
            return title + [
                f"int8 already reaches {first.sqnr_db:.2f} dB{_agreement(first, ' and ')} against "
                f"float on {self.judged_on} (target {self._targets()}): nothing falls back."
            ]
        lines = title + [
            f"Target {self._targets()} against float on {self.judged_on}. The worst layers (largest SQNR drop), "
            "each with the ops reading its output, then the last 1, 2, 4, ... layers of the graph move to float "
            "activations: first in dynamic-range form (int8 weights, the input quantized at run time), then the "
            "same with the float twin's biases, then in float32, each only if the one before did not gain "
            f"{MIN_GAIN_DB:g} dB. A form that gains less is put back: "
            + ("target reached." if self.reached else "target not reached."),
            "",
            "| step | layer tried | form | ops on float activations | SQNR dB | top-1 agreement, expected (counted) | "
            "kept | bytes | host ms (1 thread) |",
            "|---:|---|---|---|---:|---:|---|---:|---:|",
        ]
        for k, step in enumerate(self.steps):
            layer = (
                f"`{step.layer}`"
                if step.layer
                else f"the last {step.tail} layers"
                if step.tail
                else "(none: int8 as it was)"
            )
            ops = _op_ranges(step.ops)
            lines.append(
                f"| {k} | {layer} | {step.form or '-'} | {ops} | {step.sqnr_db:.2f} | "
                f"{_agreement(step) or '-'} | "
                f"{'yes' if step.kept else 'no'} | {step.cost.bytes:,} | {step.cost.host_ms:.2f} |"
            )
        if not self.applied:
            return lines + ["", "No step gained: the int8 file is kept as it was."]
        kept = [step for step in self.steps if step.kept]
        before, after = kept[0].cost, kept[-1].cost
        return lines + [
            "",
            f"Kept: {len(self.dynamic_ops)} ops in dynamic-range int8 ({len(self.float_bias_ops)} with the float "
            f"twin's biases), {len(self.float_ops)} in float32 (weights and biases stored as float16). Cost: "
            f"{before.bytes:,} -> {after.bytes:,} bytes (x{after.bytes / before.bytes:.3f}), host latency "
            f"{before.host_ms:.2f} -> {after.host_ms:.2f} ms (x{after.host_ms / before.host_ms:.3f}). On an x86 host "
            "LiteRT runs dynamic-range conv layers on its built-in kernels; a phone's cost is better read from "
            "`mve-profile` on an emulated ARM core.",
        ]


def _agreement(step: FallbackStep, before: str = "") -> str:
    """The step's top-1 agreement as a table cell ("95.3 % (95.4 %)"), or with `before` as a phrase ("and 95.3 %
    expected top-1 agreement (95.4 % counted)"); "" for no top-1."""
    if step.expected_top1 is None:
        return ""
    if before:
        return f"{before}{step.expected_top1:.1%} expected top-1 agreement ({step.top1_agreement:.1%} counted)"
    return f"{step.expected_top1:.1%} ({step.top1_agreement:.1%})"


def _op_ranges(ops: list[int]) -> str:
    """'#2, #5-#9' for [2, 5, 6, 7, 8, 9]."""
    runs: list[list[int]] = []
    for i in ops:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(f"#{r[0]}" if len(r) == 1 else f"#{r[0]}-#{r[-1]}" for r in runs) or "-"


def reach_targets(
    int8: Path,
    float_twin: Path,
    crops: Crops,
    judge: Judge,
    min_sqnr: float | None,
    min_top1: float | None,
    cost: Callable[[Path], Cost],
    classifier: bool = True,
    ship: Callable[[Path, Path], object] | None = None,
) -> Fallback:
    """Move int8 layers of `int8` (in place) with the ops reading their output to float activations, a form kept only
    if it gains MIN_GAIN_DB against the float twin on `judge`, until `min_sqnr` dB and `min_top1` agreement hold
    there. First the worst layers one at a time (by SQNR drop on 8 selection crops of `crops`), at most MAX_STEPS;
    then the last 1, 2, 4, ... layers of the graph: after the tuning no single layer gains (the layers after it
    were fitted around its error), but the error that builds up towards the output can still be taken out. Each
    time in the order of FORMS; `cost` measures what each file costs. The held-out parity then
    checks the targets on other photos. Several outputs: by the worst one's SQNR, as parity gates them; top-1 agreement
    only for a `classifier`. `ship(src, dst)` is what a later step makes of the file (float outputs): each file is
    judged and costed as it will ship."""
    names = inspect_tflite(int8).output_names
    reference = outputs_in_order(float_twin, judge.images, names)
    shipped = int8.with_name(f".{int8.name}.shipped")

    def measured(path: Path) -> tuple[float, float | None, float | None, float, Cost]:
        """SQNR, counted and expected top-1 agreement, the latter's standard error, and the cost."""
        if ship is not None:
            ship(path, shipped)
            path = shipped
        out = outputs_in_order(path, judge.images, names)
        sqnr = min(float(sqnr_db(ref, got)) for ref, got in zip(reference, out))  # as parity gates: the worst
        if not classifier:
            return sqnr, None, None, 0.0, cost(path)
        top1 = [y.reshape(len(y), -1).argmax(1) for y in (out[0], reference[0])]
        counted = float(np.mean(top1[0] == top1[1]))
        return sqnr, counted, *expected_agreement(reference[0], out[0]), cost(path)

    best, counted, agreement, error, paid = measured(int8)
    # an agreement that reaches the target only within its own error misses it on other photos as often as not
    # (mobilenet_v2 ImageNet, counted: 95.1 % on the judging photos, 94.8 % on the held-out ones)
    aim = None if min_top1 is None else min_top1 + error

    def reached(sqnr: float, expected: float | None) -> bool:
        return (min_sqnr is None or sqnr >= min_sqnr) and (aim is None or expected >= aim)

    steps = [FallbackStep(None, None, [], best, counted, agreement, True, paid)]
    if reached(best, agreement):
        shipped.unlink(missing_ok=True)
        return Fallback(min_sqnr, min_top1, aim, judge.description, steps, reached=True)
    ops = op_outputs(int8)
    readers: dict[int, set[int]] = {}
    for index, inputs in enumerate(op_inputs(int8)):
        for tensor in inputs:
            readers.setdefault(tensor, set()).add(index)
    paired = sorted(index for index, *_ in paired_layers(float_twin, int8))
    candidate, trial = int8.with_name(f".{int8.name}.fallback"), int8.with_name(f".{int8.name}.trial")
    dynamic: set[int] = set()
    float_biases: set[int] = set()
    chosen: set[int] = set()

    def attempt(layer: str | None, form: str, group: set[int], tail: int = 0) -> bool:
        nonlocal chosen, dynamic, float_biases, best, agreement
        weighted = {i for i in group if ops[i][0] in BIASED_OPS} - (chosen - dynamic)  # float stays float
        tried = chosen | group
        if form == "float":
            tried_dynamic, tried_biases = dynamic - group, float_biases - group
        else:
            tried_dynamic = dynamic | weighted
            tried_biases = float_biases | weighted if form == "dynamic-range, float biases" else float_biases - weighted
        if (tried, tried_dynamic, tried_biases) == (chosen, dynamic, float_biases):
            return False
        fall_back(int8, float_twin, tried, trial, tried_dynamic, tried_biases)
        sqnr, counted, expected, _, paid = measured(trial)
        kept = sqnr >= best + MIN_GAIN_DB  # a form that does not help is not paid for
        steps.append(FallbackStep(layer, form, sorted(tried), sqnr, counted, expected, kept, paid, tail))
        if kept:
            chosen, dynamic, float_biases, best, agreement = tried, tried_dynamic, tried_biases, sqnr, expected
            trial.replace(candidate)
        return kept

    layers = diagnose(float_twin, int8, crops.selection[:8]).layers
    worst = sorted((la for la in layers if la.op in BIASED_OPS and la.drop_db > 0), key=lambda la: -la.drop_db)
    for layer in worst[:MAX_STEPS]:
        if reached(best, agreement):
            break
        group = {layer.index} | (readers.get(ops[layer.index][1], set()) & set(paired))
        for form in FORMS:  # each only if the one before did not gain
            if attempt(layer.tensor, form, group):
                break
    tails = sorted({min(2**k, len(paired)) for k in range(len(paired).bit_length() + 1)})
    for form in FORMS:
        for length in tails:
            if reached(best, agreement):
                break
            attempt(None, form, set(paired[-length:]), tail=length)
    trial.unlink(missing_ok=True)
    shipped.unlink(missing_ok=True)
    if not chosen:
        return Fallback(min_sqnr, min_top1, aim, judge.description, steps, reached=False)
    candidate.replace(int8)
    return Fallback(
        min_sqnr,
        min_top1,
        aim,
        judge.description,
        steps,
        reached(best, agreement),
        sorted(dynamic),
        sorted(chosen - dynamic),
        sorted(float_biases),
    )
