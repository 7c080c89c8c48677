"""Float outputs out of a full-integer .tflite (`--int8-output float`).

An int8 output tensor spends 256 levels on the output's whole range (MobileNetV2's logits: a step of about 0.125),
which flips near-ties between the top classes (or a class map's pixels). Here each output that a fully-connected or
convolution layer produces keeps that layer's int8 weights but runs it as a dynamic-range (hybrid) layer, as in
the converter's dynamic-range variant: its int8 input is dequantized, the kernel requantizes it at run time, and
the int32 bias becomes the float bias it stood for (bias x input scale x weight scale), so the output comes out in
float32 without the output rounding. The input stays int8 and every other op is unchanged. An output that comes
from another op (a sigmoid, a reshape) gets a DEQUANTIZE after it: float32, with the int8 step unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from mobile_vision_export.export.tflite_model import (
    INT8_SUFFIX,
    add_float_bias,
    add_tensor,
    compact,
    make_dynamic_range,
    op_name,
    read_single_graph,
    unary_op,
    write_model,
)

HYBRID_OPS = ("FULLY_CONNECTED", "CONV_2D")  # ops with a dynamic-range kernel for int8 weights and float input


@dataclass(frozen=True)
class FloatedOutput:
    """How one output of the int8 file became float32."""

    name: str
    layer: str  # the op producing the output
    how: str  # "dynamic-range" (that op's output is now float), "float" (it already ran in float), "dequantize"
    output_step: float  # the int8 output step removed, or kept ("dequantize")

    def sentence(self) -> str:
        if self.how == "dynamic-range":
            return (
                f"`{self.name}`: its layer ({self.layer}) runs as a dynamic-range layer (int8 weights, its input "
                f"requantized at run time), float32 without the int8 output step of {self.output_step:.4g}."
            )
        if self.how == "float":
            return (
                f"`{self.name}`: its layer already runs in float (--min-sqnr), float32 without the int8 output step "
                f"of {self.output_step:.4g}."
            )
        return (
            f"`{self.name}` comes from {self.layer}, which has no dynamic-range kernel: a DEQUANTIZE turns it into "
            f"float32 and the int8 step of {self.output_step:.4g} remains."
        )


@dataclass(frozen=True)
class FloatOutput:
    """How the int8 file's outputs became float32, in the graph's output order."""

    outputs: tuple[FloatedOutput, ...]

    def as_dict(self) -> dict:
        return {"outputs": [dict(o.__dict__) for o in self.outputs]}

    def markdown(self) -> list[str]:
        lines = ["## int8 outputs in float (--int8-output float, the default under --min-sqnr or --min-top1)", ""]
        return lines + [f"- {o.sentence()}" for o in self.outputs] + ["", "The input stays int8."]


def _in_float(model: schema.ModelT, out: int, names: dict[int, str]) -> tuple[int, FloatedOutput]:
    """Make graph output `out` float32; returns the new output tensor and what was done."""
    graph = model.subgraphs[0]
    index, op = next((i, o) for i, o in enumerate(graph.operators) if out in [int(t) for t in o.outputs])
    out_t = graph.tensors[out]
    step, layer = float(out_t.quantization.scale[0]), op_name(model, op)
    float_out = add_tensor(model, out_t, out_t.name.decode())  # keeps the name apps may look the output up by
    out_t.name += INT8_SUFFIX.encode()
    if layer == "QUANTIZE" and graph.tensors[int(op.inputs[0])].type == schema.TensorType.FLOAT32:
        # the output layer already runs in float (--min-sqnr): take its float output
        how, float_out = "float", int(op.inputs[0])
        graph.tensors[float_out].name = graph.tensors[out].name.removesuffix(INT8_SUFFIX.encode())
        del graph.operators[index]
    elif layer in HYBRID_OPS and len(op.inputs) == 3 and op.inputs[2] >= 0:
        how = "dynamic-range"
        x_index = int(op.inputs[0])
        float_bias = add_float_bias(model, op)
        float_x = add_tensor(model, graph.tensors[x_index], f"{graph.tensors[x_index].name.decode()}/float")
        op.inputs = np.array([float_x, int(op.inputs[1]), float_bias], np.int32)
        op.outputs = np.array([float_out], np.int32)
        make_dynamic_range(model, op)
        graph.operators.insert(index, unary_op(model, schema.BuiltinOperator.DEQUANTIZE, x_index, float_x))
    else:
        how = "dequantize"
        graph.operators.insert(index + 1, unary_op(model, schema.BuiltinOperator.DEQUANTIZE, out, float_out))
    return float_out, FloatedOutput(names.get(out, out_t.name.decode()), layer, how, step)


def float_output(int8_path: Path, dst: Path) -> FloatOutput:
    """Write `int8_path` to `dst` with every output in float32 (see the module docstring)."""
    model = read_single_graph(int8_path)
    graph = model.subgraphs[0]
    signature = [io for sig in model.signatureDefs or [] for io in sig.outputs or []]
    names = {int(io.tensorIndex): io.name.decode() for io in signature}
    done, outputs = [], []
    for out in [int(t) for t in graph.outputs]:
        float_out, what = _in_float(model, out, names)
        outputs.append(float_out)
        done.append(what)
        for io in signature:
            if io.tensorIndex == out:
                io.tensorIndex = float_out
    graph.outputs = np.array(outputs, np.int32)
    compact(model)
    write_model(model, dst)
    return FloatOutput(tuple(done))
