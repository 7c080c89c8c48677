"""Percentile activation ranges for a full-integer .tflite.

The converter sizes every int8 activation tensor to the extremes seen during calibration (min-max), so a few
outliers make the step coarse for all other values. This pass runs the int8 model on calibration photos, counts
each activation tensor's int8 codes, narrows the range to the given percentile of those counts and rewrites the
tensor's scale and zero point. The int32 bias of a layer reading a changed tensor is re-expressed in the new input
scale (bias scale = input scale x weight scale), so the layer computes the same function. Tensors that an op
requires to share one quantization (reshape, transpose, pooling, padding, slicing, concatenation) change together;
tensors next to an op this pass does not know, and the model's input and output (the app's contract), never change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from mobile_vision_export.export.tflite_inspect import inspect_tflite, quantize, tensor_keeping_interpreter
from mobile_vision_export.export.tflite_model import (
    BIASED_OPS,
    biased_operands,
    buffer_uses,
    op_name,
    own_buffer,
    read_single_graph,
    write_model,
)
from mobile_vision_export.int8.crops import Crops
from mobile_vision_export.validate.metrics import sqnr_db

PERCENTILES = (99.999, 99.99)  # cuts tried; 99.95 and below clipped real photos' top logits
MIN_GAIN_DB = 1.0  # a cut is kept only if it gains this much on the selection crops (smaller gains did not
# carry over to held-out photos on shufflenet_v2_x0_5)

# Ops whose int8 kernels move values without requantizing: input and output must share scale and zero point.
SHARED_QUANTIZATION_OPS = {
    "RESHAPE",
    "SQUEEZE",
    "EXPAND_DIMS",
    "TRANSPOSE",
    "GATHER",
    "MAX_POOL_2D",
    "AVERAGE_POOL_2D",
    "PAD",
    "SLICE",
    "STRIDED_SLICE",
    "SPLIT",
    "SPLIT_V",
    "CONCATENATION",
    "DEPTH_TO_SPACE",
    "SPACE_TO_DEPTH",
}
# Ops whose int8 kernels requantize from each input's parameters to the output's, so either side may change.
RESCALING_OPS = {
    *BIASED_OPS,  # their biases are re-expressed in a new input scale
    "ADD",
    "SUB",
    "MUL",
    "MEAN",
    "QUANTIZE",
    "DEQUANTIZE",
}


@dataclass(frozen=True)
class RangeChange:
    tensors: int  # activation tensors whose range narrowed
    groups: int  # groups of tensors sharing one quantization that narrowed
    biases: int  # int32 bias tensors re-expressed in a new input scale
    median_step_ratio: float  # new / old scale, median over the changed groups


class _Groups:
    """Union-find over tensor indices."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, t: int) -> int:
        self.parent.setdefault(t, t)
        while self.parent[t] != t:
            self.parent[t] = self.parent[self.parent[t]]
            t = self.parent[t]
        return t

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def _is_activation(graph: schema.SubGraphT, model: schema.ModelT, t: int) -> bool:
    """An int8 tensor with one scale that no buffer holds (computed at run time)."""
    tensor = graph.tensors[t]
    q = tensor.quantization
    constant = model.buffers[tensor.buffer].data is not None and len(model.buffers[tensor.buffer].data) > 0
    return tensor.type == schema.TensorType.INT8 and not constant and q is not None and len(q.scale) == 1


def activation_groups(model: schema.ModelT) -> dict[int, list[int]]:
    """Activation tensors that may change, by group (tensors sharing one quantization change together)."""
    graph = model.subgraphs[0]
    groups, frozen = _Groups(), {int(t) for t in [*graph.inputs, *graph.outputs]}
    activations: set[int] = set()
    for op in graph.operators:
        name = op_name(model, op)
        tensors = [int(t) for t in [*op.inputs, *op.outputs] if t >= 0 and _is_activation(graph, model, int(t))]
        activations.update(tensors)
        if name in SHARED_QUANTIZATION_OPS:
            for t in tensors[1:]:
                groups.union(tensors[0], t)
        elif name not in RESCALING_OPS:
            frozen.update(tensors)
    members: dict[int, list[int]] = {}
    for t in sorted(activations):
        members.setdefault(groups.find(t), []).append(t)
    frozen_roots = {groups.find(t) for t in frozen if t in activations}
    out = {}
    for root, tensors in members.items():
        params = {
            (float(graph.tensors[t].quantization.scale[0]), int(graph.tensors[t].quantization.zeroPoint[0]))
            for t in tensors
        }
        if root not in frozen_roots and len(params) == 1:  # a group the converter gave mixed parameters stays as is
            out[root] = tensors
    return out


def code_counts(int8_path: Path, images_nhwc: np.ndarray) -> dict[int, np.ndarray]:
    """For each changeable activation tensor, how often each of the 256 int8 codes occurs over `images_nhwc`
    (normalized photos): what every cut is computed from, counted once."""
    tensors = [t for group in activation_groups(read_single_graph(int8_path)).values() for t in group]
    interpreter = tensor_keeping_interpreter(int8_path)
    q_input = inspect_tflite(int8_path).inputs[0]
    counts = {t: np.zeros(256, np.int64) for t in tensors}
    for image in images_nhwc:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], quantize(image[None], q_input))
        interpreter.invoke()
        for t in tensors:
            counts[t] += np.bincount(interpreter.get_tensor(t).astype(np.int64).ravel() + 128, minlength=256)
    return counts


def _percentile_codes(counts: np.ndarray, percentile: float, zero_point: int) -> tuple[int, int]:
    """The lowest and highest int8 code kept when (100 - percentile) % of the values are cut off at each signed end;
    the code of 0.0 (the zero point) always stays inside."""
    cumulative = np.cumsum(counts) / counts.sum()
    tail = (100.0 - percentile) / 100.0
    low = int(np.searchsorted(cumulative, tail, side="right")) - 128
    high = int(np.searchsorted(cumulative, 1.0 - tail, side="left")) - 128
    return min(low, zero_point), max(high, zero_point)


def narrow_ranges(int8_path: Path, counts: dict[int, np.ndarray], percentile: float, dst: Path) -> RangeChange:
    """Write `int8_path` to `dst` with every changeable activation range cut to `percentile` of its code `counts`
    (code_counts on calibration photos)."""
    model = read_single_graph(int8_path)
    graph = model.subgraphs[0]
    groups = activation_groups(model)
    old_scale: dict[int, float] = {}  # tensor -> its scale before
    ratios = []
    for tensors in groups.values():
        q = graph.tensors[tensors[0]].quantization
        scale, zero = float(q.scale[0]), int(q.zeroPoint[0])
        total = sum(counts[t] for t in tensors)
        if total.sum() == 0:
            continue
        low, high = _percentile_codes(total, percentile, zero)
        if high - low >= 254 or high == low:  # under one step to gain, or a tensor that is always 0
            continue
        lo, hi = (low - zero) * scale, (high - zero) * scale
        step = (hi - lo) / 255.0
        new_zero = int(np.clip(np.round(-128 - lo / step), -128, 127))
        for t in tensors:
            graph.tensors[t].quantization.scale = np.array([step], np.float32)
            graph.tensors[t].quantization.zeroPoint = np.array([new_zero], np.int64)
            old_scale[t] = scale
        ratios.append(step / scale)
    biases = 0
    uses = buffer_uses(graph)
    for op in graph.operators:
        operands = biased_operands(model, op)
        if operands is None or operands[0] not in old_scale:
            continue
        x, w, b = operands
        bias_t = graph.tensors[b]
        if bias_t.type != schema.TensorType.INT32:
            continue
        old_in, new_in = old_scale[x], float(graph.tensors[x].quantization.scale[0])
        weight_scale = np.asarray(graph.tensors[w].quantization.scale, np.float64)
        old = np.frombuffer(np.asarray(model.buffers[bias_t.buffer].data, np.uint8).tobytes(), np.int32)
        new = np.clip(np.round(old.astype(np.float64) * old_in / new_in), -(2**31), 2**31 - 1).astype(np.int32)
        own_buffer(model, bias_t, uses)  # another tensor may share these values
        model.buffers[bias_t.buffer].data = new.view(np.uint8)
        bias_t.quantization.scale = (new_in * weight_scale).astype(np.float32)  # what the kernel checks against
        biases += 1
    write_model(model, dst)
    return RangeChange(
        tensors=len(old_scale),
        groups=len(ratios),
        biases=biases,
        median_step_ratio=float(np.median(ratios)) if ratios else 1.0,
    )


@dataclass(frozen=True)
class ActivationRanges:
    """What the percentile step tried and kept."""

    applied: bool
    counted_crops: int
    selection_crops: int
    calibration_sqnr_db: dict[str, float] = field(default_factory=dict)  # "min-max" and each percentile tried
    percentile: float | None = None
    change: RangeChange | None = None

    def as_dict(self) -> dict:
        out = {
            "applied": self.applied,
            "counted_crops": self.counted_crops,
            "selection_crops": self.selection_crops,
            "calibration_sqnr_db": self.calibration_sqnr_db,
            "min_gain_db": MIN_GAIN_DB,
        }
        if self.change is not None:
            out.update(percentile=self.percentile, tensors=self.change.tensors, biases_rescaled=self.change.biases)
            out["median_step_ratio"] = self.change.median_step_ratio
        return out

    def markdown(self) -> list[str]:
        scores = ", ".join(f"{cut} {db:.2f} dB" for cut, db in self.calibration_sqnr_db.items())
        if self.change is not None:
            verdict = (
                f"The {self.percentile:g}th-percentile cut is kept: {self.change.tensors} activation tensors narrowed "
                f"(median step x{self.change.median_step_ratio:.2f}), {self.change.biases} biases re-expressed in "
                "their new input scale."
            )
        else:
            verdict = f"No cut beat min-max by {MIN_GAIN_DB:g} dB, so the converter's ranges are kept."
        return [
            "## int8 activation ranges",
            "",
            f"Each changeable activation range was cut to a percentile of its int8 values on {self.counted_crops} "
            f"calibration crops. SQNR against float on {self.selection_crops} other calibration crops: {scores}. "
            f"{verdict}",
        ]


def cut_activation_ranges(int8: Path, crops: Crops) -> ActivationRanges:
    """Cut every changeable range of `int8` (in place) to the one of PERCENTILES, counted on `crops.fit`, that is
    closest to float on `crops.selection`, if it beats min-max there by MIN_GAIN_DB."""
    scores = {"min-max": float(sqnr_db(crops.reference, crops.run(int8, crops.selection)))}
    counts = code_counts(int8, crops.fit)
    candidates = {}
    for percentile in PERCENTILES:
        path = int8.with_name(f".{int8.name}.p{percentile:g}")
        candidates[percentile] = (path, narrow_ranges(int8, counts, percentile, path))
        scores[f"{percentile:g}"] = float(sqnr_db(crops.reference, crops.run(path, crops.selection)))
    best = max(candidates, key=lambda p: scores[f"{p:g}"])
    applied = scores[f"{best:g}"] >= scores["min-max"] + MIN_GAIN_DB
    summary = ActivationRanges(applied, len(crops.fit), len(crops.selection), scores)
    if applied:
        path, change = candidates[best]
        path.replace(int8)
        summary = ActivationRanges(True, len(crops.fit), len(crops.selection), scores, best, change)
    for path, _ in candidates.values():
        path.unlink(missing_ok=True)
    return summary
