"""Weight rounding fitted to the float network's output, layer by layer (GPTQ with the float output as target).

Rounding each int8 weight to its nearest level ignores what the layer sees: int8 inputs that already carry the
earlier layers' errors. For every conv and depthwise conv of the int8 file, in depth order, this pass samples output
positions on calibration crops and takes the layer's int8 input there (dequantized, as the kernel sees it) and the
float twin's pre-activation output. It moves the weights to the least-squares optimum for reproducing that float
output from the int8 input, then rounds them one input column at a time, each to the level below or above its
float value, spreading each column's rounding error onto the columns not yet rounded (GPTQ, Frantar et al. 2022).
The bias is the last column, on its int32 grid, so it absorbs what error remains. Scales, zero points and shapes
do not change. A layer keeps its new values only if the model's output on other crops comes closer to the float
twin's; the whole pass is kept only if it gains on the selection crops, which neither fitted nor judged a layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from mobile_vision_export.export.tflite_inspect import inspect_tflite, quantize, tensor_keeping_interpreter, twin_layers
from mobile_vision_export.export.tflite_model import (
    buffer_spans,
    buffer_uses,
    constant_view,
    op_name,
    read_single_graph,
    serialize,
    write_model,
)
from mobile_vision_export.int8.crops import Crops, keep_if_closer
from mobile_vision_export.validate.metrics import sqnr_db
from mobile_vision_export.validate.runners import Run, run_tflite

FIT_IMAGES = 16  # calibration crops each layer is fitted on (32 took twice as long for the same held-out SQNR)
JUDGE_IMAGES = 16  # other calibration crops that decide whether a layer keeps its new values
POSITIONS = 128  # output positions sampled per crop and layer (all of them when the output is smaller)
WINDOW = 6  # layers whose samples one interpreter run collects
DAMPING = 0.01  # added to the input Gram matrix's diagonal, as a fraction of its mean: keeps the fit near float
WEIGHT_LIMIT = 127  # int8 weights are symmetric
BIAS_LIMIT = 2**31 - 1


@dataclass
class _Layer:
    op_index: int
    depthwise: bool
    kernel: tuple[int, int]
    stride: tuple[int, int]
    same_padding: bool
    x_tensor: int  # int8 input
    x_size: tuple[int, int]  # its height and width
    x_scale: float
    x_zero: int
    weights: np.ndarray  # int8 view into the model's buffer (OHWI, or 1HWC for depthwise), written in place
    w_scale: np.ndarray  # per output channel
    bias: np.ndarray  # int32 view, written in place
    buffers: tuple[int, int]  # the weights' and the bias's buffer indices
    f_x_tensor: int  # the float twin's input and constants of the same layer
    f_weights: np.ndarray
    f_bias: np.ndarray


def _layers(model: schema.ModelT, twin: schema.ModelT, float_twin: Path, int8_path: Path) -> list[_Layer]:
    """The int8 graph's conv (not grouped) and depthwise conv layers (depth multiplier 1), without dilation, with
    unshared int8 weights and int32 bias, that the float twin has too."""
    twins = twin_layers(float_twin, int8_path, twin)
    graph, twin_graph = model.subgraphs[0], twin.subgraphs[0]
    uses = buffer_uses(graph)
    layers = []
    for index, op in enumerate(graph.operators):
        kind = op_name(model, op)
        if kind not in ("CONV_2D", "DEPTHWISE_CONV_2D") or index not in twins or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        x_t, w_t, b_t = (graph.tensors[int(t)] for t in op.inputs[:3])
        options = op.builtinOptions
        if (
            w_t.type != schema.TensorType.INT8
            or b_t.type != schema.TensorType.INT32
            or uses[w_t.buffer] != 1
            or uses[b_t.buffer] != 1
            or (options.dilationHFactor, options.dilationWFactor) != (1, 1)
            or int(w_t.shape[3]) != int(x_t.shape[3])  # a grouped conv, or a depth multiplier above 1
        ):
            continue
        f_op = twins[index].twin_op
        f_w, f_b = (twin_graph.tensors[int(t)] for t in f_op.inputs[1:3])
        if f_w.type != schema.TensorType.FLOAT32 or twin.buffers[f_w.buffer].data is None:
            continue
        layers.append(
            _Layer(
                op_index=index,
                depthwise=kind == "DEPTHWISE_CONV_2D",
                kernel=(int(w_t.shape[1]), int(w_t.shape[2])),
                stride=(options.strideH, options.strideW),
                same_padding=options.padding == schema.Padding.SAME,
                x_tensor=int(op.inputs[0]),
                x_size=(int(x_t.shape[1]), int(x_t.shape[2])),
                x_scale=float(x_t.quantization.scale[0]),
                x_zero=int(x_t.quantization.zeroPoint[0]),
                weights=constant_view(model, w_t),
                w_scale=np.asarray(w_t.quantization.scale, np.float64),
                bias=constant_view(model, b_t),
                buffers=(w_t.buffer, b_t.buffer),
                f_x_tensor=int(f_op.inputs[0]),
                f_weights=constant_view(twin, f_w).astype(np.float64),
                f_bias=constant_view(twin, f_b).astype(np.float64),
            )
        )
    return layers


def _output_size(layer: _Layer, height: int, width: int) -> tuple[int, int]:
    (kh, kw), (sh, sw) = layer.kernel, layer.stride
    if layer.same_padding:
        return -(-height // sh), -(-width // sw)
    return (height - kh) // sh + 1, (width - kw) // sw + 1


def _patches(x: np.ndarray, layer: _Layer, positions: np.ndarray) -> np.ndarray:
    """(len(positions), kh*kw*C) input patches of one NHWC image at flat output `positions`, as the kernel pads."""
    (kh, kw), (sh, sw) = layer.kernel, layer.stride
    _, height, width, _ = x.shape
    if layer.same_padding:
        out_h, out_w = _output_size(layer, height, width)
        pad_h, pad_w = max((out_h - 1) * sh + kh - height, 0), max((out_w - 1) * sw + kw - width, 0)
        x = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(x[0], (kh, kw), axis=(0, 1))[::sh, ::sw]
    rows, cols = np.unravel_index(positions, windows.shape[:2])
    return windows[rows, cols].transpose(0, 2, 3, 1).reshape(len(positions), -1)


def gptq_round(x: np.ndarray, target: np.ndarray, w_float: np.ndarray, steps: np.ndarray, limits: np.ndarray):
    """Integer levels q (..., d, O) such that x @ (q * steps) stays close to `target` (..., P, O): the least-squares
    optimum, then GPTQ's column-by-column rounding with error feedback. Each level stays within +-`limits` and at
    the level below or above `w_float / steps` (the nearest-rounding neighbourhood), except where `limits` is
    BIAS_LIMIT (the bias row), which is free. `x` is (..., P, d)."""
    bias = limits >= BIAS_LIMIT
    low = np.where(bias, -limits, np.maximum(np.floor(w_float / steps), -limits))
    high = np.where(bias, limits, np.minimum(np.ceil(w_float / steps), limits))
    xt = np.swapaxes(x, -1, -2)
    gram = xt @ x
    d = gram.shape[-1]
    gram += DAMPING * np.trace(gram, axis1=-2, axis2=-1)[..., None, None] / d * np.eye(d)
    w = w_float + np.linalg.solve(gram, xt @ (target - x @ w_float))
    upper = np.swapaxes(np.linalg.cholesky(np.linalg.inv(gram)), -1, -2)  # the inverse's upper Cholesky factor
    q = np.zeros_like(w)
    for i in range(d):
        q[..., i, :] = np.clip(np.rint(w[..., i, :] / steps[..., i, :]), low[..., i, :], high[..., i, :])
        error = (w[..., i, :] - q[..., i, :] * steps[..., i, :]) / upper[..., i, i][..., None]
        w[..., i + 1 :, :] -= upper[..., i, i + 1 :][..., :, None] * error[..., None, :]
    return q


def _refit(layer: _Layer, x_q: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New int8 weights and int32 bias of `layer` from its int8 input patches (P, kh*kw*C, dequantized) and the
    float twin's pre-activation output (P, O) at the same positions."""
    bias_steps = layer.x_scale * layer.w_scale
    out_channels = len(layer.w_scale)
    if layer.depthwise:  # one small problem per channel: x (C, P, kh*kw + 1), levels (C, kh*kw + 1, 1)
        taps = x_q.shape[1] // out_channels
        x = x_q.reshape(len(x_q), taps, out_channels).transpose(2, 0, 1)
        x = np.concatenate([x, np.ones((out_channels, len(x_q), 1))], axis=2)
        w_float = np.concatenate([layer.f_weights.reshape(taps, out_channels).T, layer.f_bias[:, None]], axis=1)
        steps = np.concatenate([np.repeat(layer.w_scale[:, None], taps, 1), bias_steps[:, None]], axis=1)
        limits = np.full(w_float.shape, WEIGHT_LIMIT)
        limits[:, -1] = BIAS_LIMIT
        q = gptq_round(x, target.T[..., None], w_float[..., None], steps[..., None], limits[..., None])[..., 0]
        return q[:, :-1].T.reshape(layer.weights.shape).astype(np.int8), q[:, -1].astype(np.int32)
    x = np.concatenate([x_q, np.ones((len(x_q), 1))], axis=1)
    w_float = np.concatenate([layer.f_weights.reshape(out_channels, -1).T, layer.f_bias[None]], axis=0)
    steps = np.concatenate([np.broadcast_to(layer.w_scale, (x.shape[1] - 1, out_channels)), bias_steps[None]])
    limits = np.full(w_float.shape, WEIGHT_LIMIT)
    limits[-1] = BIAS_LIMIT
    q = gptq_round(x, target, w_float, steps, limits)
    return q[:-1].T.reshape(layer.weights.shape).astype(np.int8), q[-1].astype(np.int32)


class _Samples:
    """Each layer's sampled float targets and int8 input patches on the fitting crops, collected WINDOW layers per
    interpreter run; the int8 patches are collected again once an earlier layer has changed."""

    def __init__(self, layers: list[_Layer], float_twin: Path, images: np.ndarray, q_images: np.ndarray):
        self.layers, self.float_twin, self.images, self.q_images = layers, float_twin, images, q_images
        rng = np.random.default_rng(0)
        self.targets: dict[int, np.ndarray] = {}
        self.patches: dict[int, np.ndarray] = {}
        self.positions: dict[int, list[np.ndarray]] = {}
        for position, layer in enumerate(layers):
            out_h, out_w = _output_size(layer, *layer.x_size)
            count = out_h * out_w
            self.positions[position] = [
                np.sort(rng.choice(count, size=min(POSITIONS, count), replace=False)) for _ in images
            ]

    def _collect(self, interpreter: Interpreter, images: np.ndarray, start: int, value) -> dict[int, np.ndarray]:
        window = range(start, min(start + WINDOW, len(self.layers)))
        found: dict[int, list[np.ndarray]] = {p: [] for p in window}
        for n, image in enumerate(images):
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
            interpreter.invoke()
            for p in window:
                found[p].append(value(interpreter, self.layers[p], self.positions[p][n]))
        return {p: np.concatenate(rows) for p, rows in found.items()}

    def target(self, position: int) -> np.ndarray:
        if position not in self.targets:
            self.targets = self._collect(
                tensor_keeping_interpreter(self.float_twin), self.images, position, self._float_output
            )
        return self.targets.pop(position)

    def int8_input(self, position: int, model_bytes: bytes) -> np.ndarray:
        if position not in self.patches:
            interpreter = tensor_keeping_interpreter(model_bytes)
            self.patches = self._collect(interpreter, self.q_images, position, self._int8_input)
        return self.patches.pop(position)

    def forget_int8(self) -> None:
        self.patches = {}

    @staticmethod
    def _float_output(interpreter: Interpreter, layer: _Layer, positions: np.ndarray) -> np.ndarray:
        x = _patches(interpreter.get_tensor(layer.f_x_tensor).astype(np.float64), layer, positions)
        if layer.depthwise:
            taps = layer.f_weights.reshape(-1, len(layer.f_bias))
            return (x.reshape(len(x), *taps.shape) * taps).sum(axis=1) + layer.f_bias
        return x @ layer.f_weights.reshape(len(layer.f_bias), -1).T + layer.f_bias

    @staticmethod
    def _int8_input(interpreter: Interpreter, layer: _Layer, positions: np.ndarray) -> np.ndarray:
        x = (interpreter.get_tensor(layer.x_tensor).astype(np.float64) - layer.x_zero) * layer.x_scale
        return _patches(x, layer, positions).astype(np.float32)


@dataclass(frozen=True)
class RefitLayers:
    layers: int  # layers tried
    kept: int  # layers whose new weights stayed
    judge_sqnr_db_before: float  # against the float twin on the judging crops
    judge_sqnr_db_after: float


def refit_layers(
    int8_path: Path, float_twin: Path, fit: np.ndarray, judge: np.ndarray, dst: Path, run: Run = run_tflite
) -> RefitLayers:
    """Write `int8_path` to `dst` with every layer's weights and bias refitted on the normalized crops `fit`, each
    kept only if the model's output on `judge` comes closer to the float twin's."""
    model, twin = read_single_graph(int8_path), read_single_graph(float_twin)
    layers = _layers(model, twin, float_twin, int8_path)
    q_input = inspect_tflite(int8_path).inputs[0]
    fit_q = np.stack([quantize(image.astype(np.float32), q_input) for image in fit])
    samples = _Samples(layers, float_twin, fit.astype(np.float32), fit_q)
    reference = run(float_twin, judge)

    def score(model_bytes: bytes) -> float:
        """The model in `model_bytes` against the float twin on the judging crops."""
        dst.write_bytes(model_bytes)
        return sqnr_db(reference, run(dst, judge))

    current = serialize(model)
    spans = buffer_spans(current)

    def with_layer(layer: _Layer) -> bytes:
        """`current` with `layer`'s weights and bias as they are now: only those bytes change."""
        out = bytearray(current)
        for buffer, values in zip(layer.buffers, (layer.weights, layer.bias)):
            start, length = spans[buffer]
            out[start : start + length] = values.tobytes()
        return bytes(out)

    before = best = score(current)
    kept = 0
    for position, layer in enumerate(layers):
        x_q, target = samples.int8_input(position, current), samples.target(position)
        old = layer.weights.copy(), layer.bias.copy()
        layer.weights[...], layer.bias[...] = _refit(layer, x_q.astype(np.float64), target)
        candidate = with_layer(layer)
        candidate_db = score(candidate)
        if candidate_db > best:
            best, kept, current = candidate_db, kept + 1, candidate
            samples.forget_int8()  # the layers after this one now see other inputs
        else:
            layer.weights[...], layer.bias[...] = old
    write_model(model, dst)
    return RefitLayers(len(layers), kept, float(before), float(best))


@dataclass(frozen=True)
class FittedRounding:
    """What the fitted rounding changed and whether it was kept."""

    applied: bool
    layers: int
    layers_kept: int
    fit_crops: int
    judge_sqnr_db_before: float
    judge_sqnr_db_after: float
    selection_crops: int
    selection_sqnr_db_before: float
    selection_sqnr_db_after: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def markdown(self) -> list[str]:
        verdict = "kept" if self.applied else "not kept (no gain)"
        return [
            "## int8 fitted rounding",
            "",
            f"Weights and bias of {self.layers_kept} of {self.layers} conv layers refitted to the float twin's output "
            f"from their int8 inputs on {self.fit_crops} calibration crops (least squares, then GPTQ rounding), each "
            f"kept only if the output came closer to float on other crops ({self.judge_sqnr_db_before:.2f} -> "
            f"{self.judge_sqnr_db_after:.2f} dB). SQNR on {self.selection_crops} selection crops: "
            f"{self.selection_sqnr_db_before:.2f} -> {self.selection_sqnr_db_after:.2f} dB, {verdict}.",
        ]


def fit_rounding(int8: Path, float_twin: Path, crops: Crops) -> FittedRounding:
    """Refit `int8` in place (see the module docstring), kept only if it comes closer to ONNX Runtime's output on
    the selection crops."""
    candidate = int8.with_name(f".{int8.name}.rounded")
    fit, judge = crops.fit[:FIT_IMAGES], crops.fit[FIT_IMAGES : FIT_IMAGES + JUDGE_IMAGES]
    if len(judge) == 0:  # too few crops to judge on others: judge on the ones fitted
        judge = fit
    refit = refit_layers(int8, float_twin, fit, judge, candidate, crops.run)
    selection = keep_if_closer(int8, candidate, crops)
    return FittedRounding(
        selection.kept,
        refit.layers,
        refit.kept,
        len(fit),
        refit.judge_sqnr_db_before,
        refit.judge_sqnr_db_after,
        selection.crops,
        selection.sqnr_db_before,
        selection.sqnr_db_after,
    )
