"""The int8 file's input (and quantized output) as uint8, the type clients take: MediaPipe Tasks and the Task
Library accept uint8 or float32 tensors, never int8. The input becomes the camera's pixels as they are (scale
1/255, zero point 0: with the normalization folded into the graph the model reads pixel / 255), and a QUANTIZE op
maps them onto the int8 grid the converter calibrated; a quantized output gets the same grid with its zero point
moved by 128 (an exact shift). Every other op is left as it was."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from mobile_vision_export.export.tflite_model import (
    INT8_SUFFIX,
    add_tensor,
    compact,
    read_single_graph,
    unary_op,
    write_model,
)

PIXEL_SCALE = 1.0 / 255.0


@dataclass(frozen=True)
class IoTypes:
    """What the uint8 rewrite did to the int8 file's input and output."""

    input_was: tuple[float, int]  # the int8 input's scale and zero point, which the QUANTIZE op maps onto
    output: str  # "uint8", or why it stayed as it was
    applied: bool = True

    @property
    def input_shift_only(self) -> bool:
        """The calibrated int8 input grid is the pixel grid itself: the QUANTIZE only moves the zero point."""
        scale, zero = self.input_was
        return abs(scale * 255.0 - 1.0) < 1e-6 and zero == -128

    def as_dict(self) -> dict:
        scale, zero = self.input_was
        return {
            "applied": True,
            "input": {"dtype": "uint8", "scale": PIXEL_SCALE, "zero_point": 0, "int8_scale": scale, "int8_zero": zero},
            "output": self.output,
        }

    def markdown(self) -> list[str]:
        scale, zero = self.input_was
        how = (
            "an exact shift of the zero point"
            if self.input_shift_only
            else f"a requantization onto the calibrated int8 grid (scale {scale:.6g}, zero point {zero})"
        )
        return [
            "## int8 input and output types (--int8-io uint8)",
            "",
            f"The input takes the camera's uint8 RGB pixels as they are (scale 1/255, zero point 0); a QUANTIZE op "
            f"maps them into the int8 graph: {how}. Output: {self.output}.",
        ]


def _uint8_twin(model: schema.ModelT, index: int, name: str) -> int:
    """A new uint8 tensor like int8 tensor `index` (shape, scale), zero point moved by 128."""
    graph = model.subgraphs[0]
    like = graph.tensors[index]
    new = add_tensor(model, like, name)
    tensor = graph.tensors[new]
    tensor.type = schema.TensorType.UINT8
    quantization = schema.QuantizationParametersT()
    quantization.scale = np.array(like.quantization.scale, np.float32)
    quantization.zeroPoint = np.array(like.quantization.zeroPoint, np.int64) + 128
    tensor.quantization = quantization
    return new


def _repoint(model: schema.ModelT, kind: str, old: int, new: int) -> None:
    for signature in model.signatureDefs or []:
        for io in getattr(signature, kind) or []:
            if io.tensorIndex == old:
                io.tensorIndex = new


def uint8_io(int8_path: Path, dst: Path) -> IoTypes:
    """Write `int8_path` to `dst` with a uint8 pixel input and, if the output is int8, a uint8 output."""
    model = read_single_graph(int8_path)
    graph = model.subgraphs[0]
    x = int(graph.inputs[0])
    x_t = graph.tensors[x]
    if x_t.type != schema.TensorType.INT8:
        raise ValueError(f"{int8_path.name}: the input is not int8")
    input_was = (float(x_t.quantization.scale[0]), int(x_t.quantization.zeroPoint[0]))
    pixels = _uint8_twin(model, x, x_t.name.decode())  # keeps the name apps may look the input up by
    x_t.name += INT8_SUFFIX.encode()
    pixel_q = graph.tensors[pixels].quantization
    pixel_q.scale, pixel_q.zeroPoint = np.array([PIXEL_SCALE], np.float32), np.array([0], np.int64)
    graph.operators.insert(0, unary_op(model, schema.BuiltinOperator.QUANTIZE, pixels, x))
    graph.inputs = np.array([pixels], np.int32)
    _repoint(model, "inputs", x, pixels)
    outputs = []
    for position, y in enumerate(int(i) for i in graph.outputs):
        y_t = graph.tensors[y]
        if y_t.type != schema.TensorType.INT8:
            outputs.append(y)
            continue
        out = _uint8_twin(model, y, y_t.name.decode())
        y_t.name += INT8_SUFFIX.encode()
        graph.operators.append(unary_op(model, schema.BuiltinOperator.QUANTIZE, y, out))
        _repoint(model, "outputs", y, out)
        outputs.append(out)
    converted = sum(a != b for a, b in zip(outputs, (int(i) for i in graph.outputs)))
    graph.outputs = np.array(outputs, np.int32)
    if converted:
        output = "uint8 (the int8 outputs' scale, zero point + 128)"
    else:
        output = "float32 (--int8-output float)"
    compact(model)
    write_model(model, dst)
    return IoTypes(input_was, output)
