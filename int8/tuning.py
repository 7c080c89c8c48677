"""int8 parameters trained end to end against the float twin's output: weight levels, biases, activation scales.

The steps before this one choose each layer's rounding and each tensor's range on their own; none sees what the
layers after it make of its error. This step builds a torch replica of the int8 graph, as the int8 kernels compute
it: every op's output rounded to its tensor's int8 grid and clamped to it (a fused ReLU or ReLU6 by the clamp),
weights on their per-channel int8 levels, biases on their int32 grid (input scale x weight scale). It then trains,
with straight-through gradients on the float twin's logits for the calibration crops and their mirror images
(Adam, mean squared error):
- each weight's level, within the level just below or above the float weight (as the fitted rounding);
- each bias, on its int32 grid;
- each activation scale (learned step size, Esser et al. 2020), one per group of tensors that must share it; zero
  points, the model's input and its output stay as they are.
Float ops between a DEQUANTIZE and a QUANTIZE (the converter's L2 norm) are computed in float, as the file does.
The learned levels, biases and scales are written into the file, each bias re-expressed in its input's new scale.
The result is kept only if the model's output on the selection crops, which it never trained on, comes closer to
ONNX Runtime's; a training whose replica has not come closer on them by the last of CHECKS stops there and pays a
third of the time (shufflenet_v2_x0_5 with random weights, which the training overfits from the start). Graphs with
an op the replica does not have, or above MAX_MACS, are left as they are. When the tuning is kept it has fitted the
weight levels itself, and the fitted rounding after it does not run.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ai_edge_litert import schema_py_generated as schema

from mobile_vision_export.export.reproducible import pinned
from mobile_vision_export.export.tflite_inspect import inspect_tflite, twin_layers
from mobile_vision_export.export.tflite_model import (
    BIASED_OPS,
    add_zero_bias,
    biased_operands,
    buffer_uses,
    constant_view,
    multiply_accumulates,
    op_name,
    own_buffer,
    read_single_graph,
    write_model,
)
from mobile_vision_export.int8.activation_ranges import SHARED_QUANTIZATION_OPS, activation_groups
from mobile_vision_export.int8.crops import Crops, joined, keep_if_closer, output_scales, outputs_in_order
from mobile_vision_export.validate.metrics import sqnr_db

STEPS = 120  # Adam steps (mobilenet_v2, ImageNet, held-out photos: 80 steps gave 0.5 dB less, 200 about the same)
BATCH = 8  # calibration crops per step
LEVEL_LR = 0.015  # weight levels and biases, in units of their int8 / int32 step
SCALE_LR = 0.015  # log of each activation scale (without learned scales the step gained 3.1 dB less)
MAX_MACS = 2e9  # multiply-accumulates per image above which the step is skipped (xception, 8.4 G: about an hour)
THREADS = 2  # fixed: sums split over another thread count change last bits, and with them rounding decisions
SEED = 0
CHECKS = (20, 40)  # steps after which the replica's output on the selection crops is compared with its start
MIN_EARLY_GAIN_DB = 0.1  # gained at one of CHECKS, or the training stops there (random mobilenet_v2: +0.25 dB, kept)

RELU, RELU6 = schema.ActivationFunctionType.RELU, schema.ActivationFunctionType.RELU6


class _RoundSTE(torch.autograd.Function):
    """round() whose gradient is the identity (straight-through)."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def _round(x: torch.Tensor) -> torch.Tensor:
    return _RoundSTE.apply(x)


def _round_away(x: torch.Tensor) -> torch.Tensor:
    """Halves away from zero, as the kernels' fixed-point arithmetic rounds."""
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


class _FakeQuant(torch.autograd.Function):
    """x on an int8 grid of step `scale`, its codes (minus the zero point) clamped to [low, high]. Gradients:
    straight through inside the clamp and none outside; for the scale, learned step size's (round(x/s) - x/s
    inside, the clamped code outside). Keeps only x for the backward pass, and touches each value a few times."""

    @staticmethod
    def forward(ctx, x, scale, low: int, high: int):
        ctx.save_for_backward(x, scale)
        ctx.low, ctx.high = low, high
        return torch.round(x / scale).clamp_(low, high).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        x, scale = ctx.saved_tensors
        v = x / scale
        code = torch.round(v)
        clamped = code.clamp(ctx.low, ctx.high)
        grad_x = grad * (clamped == code)
        grad_scale = torch.dot(grad.reshape(-1), clamped.reshape(-1)) - torch.dot(grad_x.reshape(-1), v.reshape(-1))
        return grad_x, grad_scale.reshape(scale.shape), None, None


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x_nchw: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], value: float = 0.0):
    top, bottom = _same_padding(x_nchw.shape[2], kernel[0], stride[0])
    left, right = _same_padding(x_nchw.shape[3], kernel[1], stride[1])
    return F.pad(x_nchw, (left, right, top, bottom), value=value)


def _depthwise(x_nhwc: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride, dilation) -> torch.Tensor:
    """A depthwise convolution (weights 1 x H x W x channels x multiplier) as a sum over its taps, for torch
    without oneDNN (export.reproducible), which runs it as one convolution per channel: mobilenet_v2's tuning took
    4.7x as long as with oneDNN, 2.8x this way."""
    _, kh, kw, channels = w.shape
    if channels != x_nhwc.shape[3]:
        x_nhwc = x_nhwc.repeat_interleave(channels // x_nhwc.shape[3], dim=3)
    rows = (x_nhwc.shape[1] - (kh - 1) * dilation[0] - 1) // stride[0] * stride[0] + 1
    cols = (x_nhwc.shape[2] - (kw - 1) * dilation[1] - 1) // stride[1] * stride[1] + 1
    y = b
    for i in range(kh):
        for j in range(kw):
            top, left = i * dilation[0], j * dilation[1]
            tap = x_nhwc[:, top : top + rows : stride[0], left : left + cols : stride[1]]
            y = y + tap * w[0, i, j]
    return y


_BINARY = {
    "ADD": torch.add,
    "SUB": torch.sub,
    "MUL": torch.mul,
    "DIV": torch.div,
    "MAXIMUM": torch.maximum,
    "MINIMUM": torch.minimum,
}
_UNARY = {
    "RELU": torch.relu,
    "RELU6": lambda x: x.clamp(0, 6),
    "RELU_0_TO_1": lambda x: x.clamp(0, 1),
    "RELU_N1_TO_1": lambda x: x.clamp(-1, 1),
    "HARD_SWISH": lambda x: x * (x + 3).clamp(0, 6) / 6,
    "SQUARE": torch.square,
    "SQRT": lambda x: torch.sqrt(x.clamp(min=1e-12)),  # finite gradients at 0 (an L2 norm's zero vector)
    "RSQRT": lambda x: torch.rsqrt(x.clamp(min=1e-12)),
}
_REQUANTIZING = ("RELU", "RELU6", "RELU_0_TO_1", "RELU_N1_TO_1")  # kernels: z_out + requantized (q_in - z_in)
_FUSED_FLOAT = {  # a fused activation on a float output
    getattr(schema.ActivationFunctionType, name): _UNARY[name] for name in ("RELU", "RELU6", "RELU_N1_TO_1")
}


def _transpose_conv(x_nhwc: torch.Tensor, w: torch.Tensor, b: torch.Tensor, shape, options) -> torch.Tensor:
    """TFLite's TRANSPOSE_CONV (weights O x H x W x I): the full transposed convolution, cropped to the output
    shape by the padding the kernel computes (as for the forward conv from the output back to the input); rows
    beyond the full output (ONNX's output padding) hold the bias alone."""
    stride = (options.strideH, options.strideW)
    y = F.conv_transpose2d(x_nhwc.permute(0, 3, 1, 2), w.permute(3, 0, 1, 2), stride=stride)
    for axis, (size, kernel, step) in enumerate(zip(shape[1:3], w.shape[1:3], stride), start=2):
        size, kernel = int(size), int(kernel)
        forward = -(-size // step) if options.padding == schema.Padding.SAME else (size - kernel + step) // step
        before = max((forward - 1) * step + kernel - size, 0) // 2
        short = before + size - y.shape[axis]
        if short > 0:
            y = F.pad(y, [0, short] if axis == 3 else [0, 0, 0, short])
        y = y.narrow(axis, before, size)
    return (y + b.reshape(1, -1, 1, 1)).permute(0, 2, 3, 1)


def _source_rows(size: int, out: int, kind: str, align_corners: bool, half_pixel: bool):
    """TFLite's resize sampling along one axis: (lower index, upper index, weight of the upper) per output row;
    nearest neighbour takes the lower with weight 0."""
    scale = (size - 1) / (out - 1) if align_corners and out > 1 else size / out
    dst = np.arange(out, dtype=np.float64)
    src = (dst + 0.5) * scale - (0.5 if kind == "RESIZE_BILINEAR" else 0.0) if half_pixel else dst * scale
    if kind == "RESIZE_NEAREST_NEIGHBOR":
        index = np.minimum(np.round(src) if align_corners else np.floor(src), size - 1).astype(int)
        return index, index, np.zeros(out)
    floor = np.floor(src)
    lower = np.clip(floor, 0, size - 1).astype(int)
    upper = np.minimum(np.ceil(src), size - 1).astype(int)
    return lower, upper, src - floor


def _resize(x_nhwc: torch.Tensor, size: tuple[int, int], kind: str, options) -> torch.Tensor:
    """RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR with the kernels' sampling (align corners, half pixel centres)."""
    align, half = bool(options.alignCorners), bool(options.halfPixelCenters)
    for axis, out in ((1, size[0]), (2, size[1])):
        lower, upper, weight = _source_rows(x_nhwc.shape[axis], out, kind, align, half)
        shape = [1, 1, 1, 1]
        shape[axis] = out
        w = torch.tensor(weight, dtype=x_nhwc.dtype).reshape(shape)
        low = x_nhwc.index_select(axis, torch.from_numpy(lower))
        x_nhwc = low + (x_nhwc.index_select(axis, torch.from_numpy(upper)) - low) * w
    return x_nhwc


@dataclass
class _Layer:
    """A conv, depthwise conv or fully-connected op's trainable constants and where they are written back."""

    weights: np.ndarray  # int8 view into the model's buffer
    bias: np.ndarray  # int32 view
    weight_scale: torch.Tensor  # broadcastable to the weights
    bias_scale: np.ndarray  # per output channel, at the input's original scale
    low: torch.Tensor  # the level range each weight may take
    high: torch.Tensor
    x_tensor: int
    bias_tensor: schema.TensorT
    levels: torch.nn.Parameter  # float, rounded in the forward pass
    bias_units: torch.nn.Parameter  # the bias in units of bias_scale


class Replica(torch.nn.Module):
    """The int8 graph of a single-subgraph .tflite in torch, NHWC as in the file; see the module docstring."""

    OPS = (
        *BIASED_OPS,
        "ADD",
        "SUB",
        "MUL",
        "DIV",
        "MAXIMUM",
        "MINIMUM",
        "SQUARE",
        "SQRT",
        "RSQRT",
        "SUM",
        "HARD_SWISH",
        "RELU6",
        "RELU_0_TO_1",
        "RELU_N1_TO_1",
        "QUANTIZE",
        "DEQUANTIZE",
        "RESIZE_BILINEAR",
        "RESIZE_NEAREST_NEIGHBOR",
        "PAD",
        "MEAN",
        "RELU",
        "LOGISTIC",
        "TANH",
        "SOFTMAX",
        "LEAKY_RELU",
        "PRELU",
        "MAX_POOL_2D",
        "AVERAGE_POOL_2D",
        "CONCATENATION",
        "RESHAPE",
        "TRANSPOSE",
        "STRIDED_SLICE",
    )

    def __init__(self, model: schema.ModelT, float_weights: dict[int, np.ndarray]):
        """`float_weights`: the float twin's weights of each biased op, by op index (others keep their levels)."""
        super().__init__()
        self.model, self.graph = model, model.subgraphs[0]
        graph = self.graph
        self.kinds = [op_name(model, op) for op in graph.operators]
        self.scale0: dict[int, float] = {}
        self.zero: dict[int, int] = {}
        for index, tensor in enumerate(graph.tensors):
            q = tensor.quantization
            if tensor.type == schema.TensorType.INT8 and q is not None and q.scale is not None and len(q.scale) == 1:
                self.scale0[index], self.zero[index] = float(q.scale[0]), int(q.zeroPoint[0])
        self.groups = list(activation_groups(model).values())
        self.group_of = {t: k for k, tensors in enumerate(self.groups) for t in tensors}
        self.log_scales = torch.nn.Parameter(torch.zeros(len(self.groups)))
        self.layers: dict[int, _Layer] = {}
        self.uses = buffer_uses(graph)
        self._params = torch.nn.ParameterList()
        self.constants: dict[int, np.ndarray] = {}
        for index, op in enumerate(graph.operators):
            if self.kinds[index] in BIASED_OPS:
                if biased_operands(model, op) is None:  # a zero bias to train
                    add_zero_bias(model, op)
                self.layers[index] = self._layer(index, op, float_weights.get(index))

    def _layer(self, index: int, op: schema.OperatorT, float_weights: np.ndarray | None) -> _Layer:
        graph = self.graph
        x_index, w_index, b_index = biased_operands(self.model, op)
        w_t, b_t = graph.tensors[w_index], graph.tensors[b_index]
        for t in (w_t, b_t):  # the converter shares equal constants (zero biases), which training makes differ
            own_buffer(self.model, t, self.uses)
        weights, bias = constant_view(self.model, w_t), constant_view(self.model, b_t)
        scale = np.asarray(w_t.quantization.scale, np.float64)
        depthwise = self.kinds[index] == "DEPTHWISE_CONV_2D"
        shape = (1, 1, 1, -1) if depthwise else (-1,) + (1,) * (weights.ndim - 1)
        scale = scale.reshape(shape) if len(scale) > 1 else scale.reshape((1,) * weights.ndim)
        current = weights.astype(np.float64)
        if float_weights is None or float_weights.shape != weights.shape:  # no twin to bound the levels: fixed
            low = high = current
        else:
            level = float_weights / scale
            low = np.minimum(np.maximum(np.floor(level), -127), current)
            high = np.maximum(np.minimum(np.ceil(level), 127), current)
        bias_scale = np.broadcast_to(scale.reshape(-1), bias.shape) * self.scale0[x_index]
        layer = _Layer(
            weights,
            bias,
            torch.tensor(scale, dtype=torch.float32),
            bias_scale,
            torch.tensor(low, dtype=torch.float32),
            torch.tensor(high, dtype=torch.float32),
            x_index,
            b_t,
            torch.nn.Parameter(torch.tensor(current, dtype=torch.float32)),
            torch.nn.Parameter(torch.tensor(bias.astype(np.float64), dtype=torch.float32)),
        )
        self._params.extend([layer.levels, layer.bias_units])
        return layer

    def level_parameters(self) -> list[torch.nn.Parameter]:
        return list(self._params)

    def scale(self, t: int) -> torch.Tensor:
        k = self.group_of.get(t)
        base = torch.tensor(self.scale0[t], dtype=torch.float32)
        return base if k is None else base * torch.exp(self.log_scales[k])

    def _quantize(self, x: torch.Tensor, t: int, low: int = -128, high: int = 127) -> torch.Tensor:
        zero = self.zero[t]
        return _FakeQuant.apply(x, self.scale(t), low - zero, high - zero)

    def _constants(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.layers[index]
        levels = torch.clamp(_round(layer.levels), layer.low, layer.high)
        ratio = self.scale(layer.x_tensor) / self.scale0[layer.x_tensor]  # the input's scale now / at the start
        step = torch.tensor(layer.bias_scale, dtype=torch.float32) * ratio
        return levels * layer.weight_scale, _round(layer.bias_units / ratio) * step

    def _output(self, y: torch.Tensor, op: schema.OperatorT) -> torch.Tensor:
        """The op's output on its int8 grid, clamped by its fused activation as the int8 kernels do (a float
        output, between a DEQUANTIZE and a QUANTIZE, only clamped)."""
        activation = getattr(op.builtinOptions, "fusedActivationFunction", 0) if op.builtinOptions else 0
        t = int(op.outputs[0])
        if t not in self.zero:
            return _FUSED_FLOAT.get(activation, lambda v: v)(y)
        z, low, high = self.zero[t], -128, 127
        if activation in (RELU, RELU6):
            low = max(low, z)
        if activation == RELU6:
            high = min(high, z + int(torch.round(6.0 / self.scale(t)).item()))
        return self._quantize(y, t, low, high)

    def _requantized(self, x: torch.Tensor, t_in: int, t_out: int) -> torch.Tensor:
        """x moved so that rounding it onto t_out's grid gives the kernel's code. The kernel multiplies the input
        code by the scale ratio's mantissa in fixed point, rounding to an integer, then shifts right, rounding
        again; below a ratio of 1/2 that second rounding moves codes (a ReLU whose output shares a concatenation's
        range, ratio 0.3: a tenth of its codes)."""
        if t_in not in self.zero or t_out not in self.zero:
            return x
        s_in, s_out = self.scale(t_in), self.scale(t_out)
        mantissa, exponent = math.frexp(float(s_in / s_out))
        if exponent >= 0:  # no right shift: one rounding
            return x
        with torch.no_grad():
            code = _round_away(_round_away(torch.round(x / s_in) * mantissa) / 2.0**-exponent)
            shift = code - torch.round(x / s_out)
        return x + shift * s_out

    def _operand(self, tensors: dict[int, torch.Tensor], t: int) -> torch.Tensor:
        """An op's input: computed, or a constant (dequantized, per channel where it is quantized so)."""
        if t in tensors:
            return tensors[t]
        tensor, values = self.graph.tensors[t], self._values(t).astype(np.float32)
        q = tensor.quantization
        if tensor.type != schema.TensorType.FLOAT32 and q is not None and q.scale is not None and len(q.scale):
            shape = [1] * values.ndim
            if len(q.scale) > 1:  # per channel, along the quantized dimension
                shape[q.quantizedDimension] = -1
            scale, zero = np.reshape(q.scale, shape), np.reshape(q.zeroPoint, shape)
            values = ((values - zero) * scale).astype(np.float32)
        return torch.from_numpy(values)

    def _values(self, t: int) -> np.ndarray:
        """A constant input of an op without weights (paddings, axes, permutation, slice bounds)."""
        if t not in self.constants:
            self.constants[t] = constant_view(self.model, self.graph.tensors[t])
        return self.constants[t]

    def forward(self, x_nhwc: torch.Tensor, given: dict[int, torch.Tensor] | None = None) -> list[torch.Tensor]:
        """The int8 graph's outputs (dequantized, in the graph's output order, each as the file lays it out) for
        normalized NHWC images. Tensors in `given` (dequantized) stand in for what the replica computes for them:
        the interpreter's, to check one op at a time."""
        graph = self.graph
        first = int(graph.inputs[0])
        tensors = {first: self._quantize(x_nhwc, first)}
        given = given or {}
        for index, op in enumerate(graph.operators):
            kind, options = self.kinds[index], op.builtinOptions
            x = self._operand(tensors, int(op.inputs[0]))
            if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                w, b = self._constants(index)
                stride = (options.strideH, options.strideW)
                dilation = (options.dilationHFactor, options.dilationWFactor)
                x = x.permute(0, 3, 1, 2)
                if options.padding == schema.Padding.SAME:
                    span = ((w.shape[1] - 1) * dilation[0] + 1, (w.shape[2] - 1) * dilation[1] + 1)
                    x = _pad_same(x, span, stride)
                if kind == "DEPTHWISE_CONV_2D" and not torch.backends.mkldnn.enabled:
                    y = _depthwise(x.permute(0, 2, 3, 1), w, b, stride, dilation)
                else:
                    if kind == "CONV_2D":  # grouped when the weights hold fewer input channels than x
                        w, groups = w.permute(0, 3, 1, 2), x.shape[1] // w.shape[3]
                    else:  # 1 x H x W x (channels x depth multiplier)
                        w, groups = w.permute(3, 0, 1, 2), x.shape[1]
                    y = F.conv2d(x, w, b, stride=stride, dilation=dilation, groups=groups).permute(0, 2, 3, 1)
            elif kind == "TRANSPOSE_CONV":
                w, b = self._constants(index)
                x = self._operand(tensors, int(op.inputs[2]))
                y = _transpose_conv(x, w, b, graph.tensors[op.outputs[0]].shape, options)
            elif kind == "FULLY_CONNECTED":
                w, b = self._constants(index)
                y = x.reshape(x.shape[0], -1) @ w.reshape(w.shape[0], -1).T + b
            elif kind in _BINARY:
                y = _BINARY[kind](x, self._operand(tensors, int(op.inputs[1])))
            elif kind in _UNARY:
                y = _UNARY[kind](
                    self._requantized(x, int(op.inputs[0]), int(op.outputs[0])) if kind in _REQUANTIZING else x
                )
            elif kind in ("QUANTIZE", "DEQUANTIZE"):  # onto the output's grid, or off the int8 grid into float
                y = x
            elif kind in ("MEAN", "SUM"):
                axes = [int(a) for a in self._values(op.inputs[1]).reshape(-1)]
                reduce = torch.mean if kind == "MEAN" else torch.sum
                y = reduce(x, dim=axes, keepdim=bool(options.keepDims))
            elif kind.startswith("RESIZE_"):
                y = _resize(x, tuple(int(d) for d in graph.tensors[op.outputs[0]].shape[1:3]), kind, options)
            elif kind == "LOGISTIC":  # its output grid is the kernel's (1/256, -128): frozen in activation_groups
                y = torch.sigmoid(x)
            elif kind == "TANH":  # the kernel's grid (1/128, 0), frozen as LOGISTIC's
                y = torch.tanh(x)
            elif kind == "SOFTMAX":  # the kernel's grid (1/256, -128)
                y = torch.softmax(x * options.beta, dim=-1)
            elif kind == "LEAKY_RELU":
                y = F.leaky_relu(x, options.alpha)
            elif kind == "PRELU":
                y = torch.where(x >= 0, x, x * self._operand(tensors, int(op.inputs[1])))
            elif kind == "PAD":
                y = F.pad(x, [int(v) for pair in self._values(op.inputs[1])[::-1] for v in pair])
            elif kind in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
                y = self._pool(kind, x, options)
            elif kind == "CONCATENATION":
                y = torch.cat([tensors[int(t)] for t in op.inputs], dim=options.axis)
            elif kind == "RESHAPE":
                y = x.reshape(x.shape[0], *[int(d) for d in graph.tensors[op.outputs[0]].shape[1:]])
            elif kind == "TRANSPOSE":
                y = x.permute(*[int(a) for a in self._values(op.inputs[1])])
            else:  # STRIDED_SLICE without masks other than begin/end (checked in `unsupported`)
                y = self._slice(x, op)
            out = int(op.outputs[0])
            first = int(op.inputs[0])
            passes_grid = (
                kind in SHARED_QUANTIZATION_OPS
                and self.group_of.get(out) == self.group_of.get(first)
                and (self.scale0.get(out), self.zero.get(out)) == (self.scale0.get(first), self.zero.get(first))
            )
            tensors[out] = y if passes_grid else self._output(y, op)  # already on the grid it would round to
            if out in given:
                tensors[out] = given[out]
        return [tensors[int(t)] for t in graph.outputs]

    @staticmethod
    def _pool(kind: str, x: torch.Tensor, options) -> torch.Tensor:
        kernel, stride = (options.filterHeight, options.filterWidth), (options.strideH, options.strideW)
        x = x.permute(0, 3, 1, 2)
        same = options.padding == schema.Padding.SAME
        if kind == "MAX_POOL_2D":
            y = F.max_pool2d(_pad_same(x, kernel, stride, float("-inf")) if same else x, kernel, stride)
        else:  # the average over the window's cells inside the image, as TFLite divides
            total = F.avg_pool2d(_pad_same(x, kernel, stride) if same else x, kernel, stride, divisor_override=1)
            ones = torch.ones_like(x[:1, :1])
            cells = F.avg_pool2d(_pad_same(ones, kernel, stride) if same else ones, kernel, stride, divisor_override=1)
            y = total / cells
        return y.permute(0, 2, 3, 1)

    def _slice(self, x: torch.Tensor, op: schema.OperatorT) -> torch.Tensor:
        begin, end, strides = (self._values(op.inputs[i]).reshape(-1) for i in (1, 2, 3))
        options = op.builtinOptions
        index = []
        for axis in range(x.dim()):
            start = None if options.beginMask >> axis & 1 else int(begin[axis])
            stop = None if options.endMask >> axis & 1 else int(end[axis])
            index.append(slice(start, stop, int(strides[axis])))
        return x[tuple(index)]

    def write_back(self) -> None:
        """The learned scales, levels and biases into the model (biases in their input's new scale)."""
        with torch.no_grad():
            for k, tensors in enumerate(self.groups):
                for t in tensors:
                    scale = self.scale0[t] * float(torch.exp(self.log_scales[k]))
                    self.graph.tensors[t].quantization.scale = np.array([scale], np.float32)
            for layer in self.layers.values():
                layer.weights[...] = torch.clamp(torch.round(layer.levels), layer.low, layer.high).numpy()
                ratio = float(self.scale(layer.x_tensor)) / self.scale0[layer.x_tensor]
                units = np.round(layer.bias_units.numpy().astype(np.float64) / ratio)
                layer.bias[...] = np.clip(units, -(2**31), 2**31 - 1).astype(np.int32)
                quantization = layer.bias_tensor.quantization  # what the kernels check against
                quantization.scale = (np.asarray(quantization.scale, np.float64) * ratio).astype(np.float32)


def unsupported(model: schema.ModelT) -> str | None:
    """Why the replica cannot stand for this graph, or None."""
    graph = model.subgraphs[0]
    kinds = {op_name(model, op) for op in graph.operators}
    missing = sorted(kinds - set(Replica.OPS))
    if missing:
        return f"ops the replica does not have: {', '.join(missing)}"
    for op in graph.operators:
        name = op_name(model, op)
        if name in BIASED_OPS:
            operands = biased_operands(model, op)
            w_t = graph.tensors[op.inputs[BIASED_OPS[name][1]]]
            b_t = None if operands is None else graph.tensors[operands[2]]
            if w_t.type != schema.TensorType.INT8 or (b_t is not None and b_t.type != schema.TensorType.INT32):
                return f"a {name} whose weights are not int8 or whose bias is not int32"
        if name == "STRIDED_SLICE":
            o = op.builtinOptions
            if o.ellipsisMask or o.newAxisMask or o.shrinkAxisMask:
                return "a STRIDED_SLICE with ellipsis, new-axis or shrink masks"
    for t in [*graph.inputs, *graph.outputs]:
        tensor = graph.tensors[t]
        if tensor.type != schema.TensorType.INT8:
            return "an input or output that is not int8"
    return None


def _float_weights(int8_path: Path, float_twin: Path) -> dict[int, np.ndarray]:
    """The float twin's weights of each biased op of the int8 graph, by its op index."""
    twin = read_single_graph(float_twin)
    graph = twin.subgraphs[0]
    out = {}
    for index, layer in twin_layers(float_twin, int8_path, twin).items():
        if layer.kind not in BIASED_OPS:
            continue
        w_t = graph.tensors[layer.twin_op.inputs[BIASED_OPS[layer.kind][1]]]
        if w_t.type != schema.TensorType.FLOAT32 or twin.buffers[w_t.buffer].data is None:
            continue
        out[index] = constant_view(twin, w_t).astype(np.float64)
    return out


@dataclass(frozen=True)
class Tuning:
    """What the end-to-end tuning did and whether it was kept."""

    applied: bool
    skipped: str | None  # why it did not run
    steps: int = 0
    batch: int = 0
    fit_crops: int = 0
    scale_groups: int = 0
    layers: int = 0
    scale_ratio_range: tuple[float, float] = (1.0, 1.0)  # smallest and largest new / old activation scale
    weights_changed: int = 0  # weight values whose level moved
    fit_loss_start: float = 0.0  # the first and last batches' error, relative to the float logits' variance
    fit_loss_end: float = 0.0
    seconds: float = 0.0
    selection_crops: int = 0
    selection_sqnr_db_before: float = 0.0
    selection_sqnr_db_after: float = 0.0
    replica_checks: list[tuple[int, float]] = field(default_factory=list)  # (step, replica's selection SQNR dB)
    stopped_early: bool = False

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def markdown(self) -> list[str]:
        if self.skipped is not None:
            return ["## int8 tuning", "", f"Not run: {self.skipped}."]
        if self.stopped_early:
            (_, first), *checks = self.replica_checks
            return [
                "## int8 tuning",
                "",
                f"Stopped after {self.steps} steps of {self.batch} crops ({self.seconds:.0f} s), nothing written: the "
                f"replica's SQNR on the selection crops went from {first:.2f} dB to "
                + ", ".join(f"{db:.2f} dB at step {step}" for step, db in checks)
                + f", never {MIN_EARLY_GAIN_DB:g} dB above its start. The training fits the calibration crops "
                "without coming closer on crops it does not see.",
            ]
        verdict = "kept" if self.applied else "not kept (no gain)"
        low, high = self.scale_ratio_range
        return [
            "## int8 tuning",
            "",
            f"A torch replica of the int8 graph trained {self.steps} steps of {self.batch} crops (of "
            f"{self.fit_crops} calibration crops and their mirror images) against the float twin's logits, in "
            f"{self.seconds:.0f} s: "
            f"{self.scale_groups} activation scales (now x{low:.2f} to x{high:.2f}), the weight levels and biases of "
            f"{self.layers} layers ({self.weights_changed} weights moved a level). Error on the training batches "
            f"{self.fit_loss_start:.4f} -> {self.fit_loss_end:.4f} of the logits' variance. SQNR on "
            f"{self.selection_crops} selection crops: {self.selection_sqnr_db_before:.2f} -> "
            f"{self.selection_sqnr_db_after:.2f} dB, {verdict}.",
        ]


def _twin_outputs(float_twin: Path, images: np.ndarray, names: list[str]) -> list[torch.Tensor]:
    """The float twin's outputs on `images`, in the int8 graph's output order, each flattened as the file lays it out
    (a map: NHWC), which is how the replica computes them."""
    return [torch.from_numpy(y.reshape(len(images), -1)) for y in outputs_in_order(float_twin, images, names)]


@contextmanager
def _arithmetic():
    """THREADS threads, and torch without oneDNN when the process's arithmetic is pinned (export.reproducible)."""
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(THREADS)
    torch.backends.mkldnn.enabled = onednn and not pinned()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = onednn


def train(int8_path: Path, float_twin: Path, crops: Crops, dst: Path, steps: int | None = None) -> Tuning:
    """Write `int8_path` to `dst` with its parameters trained on `crops.fit` (not judged). Stops early, writing
    nothing, if by the last of CHECKS the replica's output on the selection crops has not come MIN_EARLY_GAIN_DB
    closer to ONNX Runtime's at any check."""
    steps = STEPS if steps is None else steps
    model = read_single_graph(int8_path)
    float_weights = _float_weights(int8_path, float_twin)
    replica = Replica(model, float_weights)
    before = {i: layer.weights.copy() for i, layer in replica.layers.items()}
    # and their mirror images (mobilenet_v2 ImageNet, two seeds: +0.2/+0.35 dB on natural held-out photos,
    # +0.1/+0.15 dB on unread calibration photos; no cost but the float twin's outputs on them)
    fit = np.concatenate([crops.fit, crops.fit[:, :, ::-1]]).astype(np.float32)
    names = inspect_tflite(int8_path).output_names  # the float twin's outputs carry the same signature names
    target = _twin_outputs(float_twin, fit, names)
    selection_target = [t.numpy() for t in _twin_outputs(float_twin, crops.selection, names)]
    scales = output_scales(selection_target)
    fit = torch.from_numpy(fit)
    optimizer = torch.optim.Adam(
        [
            {"params": replica.level_parameters(), "lr": LEVEL_LR},
            {"params": [replica.log_scales], "lr": SCALE_LR},
        ]
    )
    rng = np.random.default_rng(SEED)
    losses, checks = [], []
    start = time.monotonic()
    with _arithmetic():
        selection = torch.from_numpy(crops.selection.astype(np.float32))

        def closeness() -> float:
            with torch.no_grad():  # a batch at a time: the replica holds every tensor of the graph until its end
                parts = [replica(part) for part in selection.split(BATCH)]
            out = [torch.cat([outputs[k] for outputs in parts]).flatten(1).numpy() for k in range(len(names))]
            return float(sqnr_db(joined(selection_target, scales), joined(out, scales)))

        first = closeness()
        for step in range(1, steps + 1):
            batch = rng.choice(len(fit), min(BATCH, len(fit)), replace=False)
            outputs = replica(fit[batch])
            loss = sum(((y.flatten(1) - t[batch]) ** 2).mean() / t[batch].var() for y, t in zip(outputs, target))
            loss = loss / len(outputs)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if step in CHECKS:
                checks.append((step, closeness()))
                if step == max(CHECKS) and max(db for _, db in checks) < first + MIN_EARLY_GAIN_DB:
                    break
    stopped = len(losses) < steps
    if not stopped:
        replica.write_back()
        write_model(model, dst)
    ratios = torch.exp(replica.log_scales.detach()).numpy()
    moved = sum(int(np.sum(layer.weights != before[i])) for i, layer in replica.layers.items())
    return Tuning(
        applied=False,
        skipped=None,
        steps=len(losses),
        batch=min(BATCH, len(fit)),
        fit_crops=len(crops.fit),
        scale_groups=len(replica.groups),
        layers=sum(1 for i in replica.layers if i in float_weights),
        scale_ratio_range=(float(ratios.min()), float(ratios.max())) if len(ratios) else (1.0, 1.0),
        weights_changed=moved,
        fit_loss_start=float(np.mean(losses[:10])),
        fit_loss_end=float(np.mean(losses[-10:])),
        seconds=time.monotonic() - start,
        replica_checks=[(0, first), *checks],
        stopped_early=stopped,
    )


def tune(int8: Path, float_twin: Path, crops: Crops) -> Tuning:
    """Train `int8` in place (see the module docstring), kept only if it comes closer to ONNX Runtime's output on
    the selection crops."""
    model = read_single_graph(int8)
    reason = unsupported(model)
    macs = multiply_accumulates(model)
    if reason is None and macs > MAX_MACS:
        reason = f"{macs / 1e9:.1f} G multiply-accumulates per image, above the {MAX_MACS / 1e9:g} G this step takes"
    if reason is not None:
        return Tuning(False, reason)
    candidate = int8.with_name(f".{int8.name}.tuned")
    summary = train(int8, float_twin, crops, candidate)
    if summary.stopped_early:
        return summary
    selection = keep_if_closer(int8, candidate, crops)
    return replace(
        summary,
        applied=selection.kept,
        selection_crops=selection.crops,
        selection_sqnr_db_before=selection.sqnr_db_before,
        selection_sqnr_db_after=selection.sqnr_db_after,
    )
