"""Float logits out of a full-integer .tflite (`--int8-output float`).

An int8 output tensor spends 256 levels on the whole logit range (MobileNetV2: a step of about 0.125), which flips
near-ties between the top classes. Here the fully-connected layer that produces the model's output keeps its int8
weights but runs as a dynamic-range (hybrid) layer, as in the converter's dynamic-range variant: its int8 input is
dequantized, the kernel requantizes it at run time, and the int32 bias becomes the float bias it stood for (bias x
input scale x weight scale), so the logits come out in float32 without the output rounding. The input stays int8
and every other op is unchanged. When the output comes from another op, a DEQUANTIZE after it gives float32 logits
with the int8 step unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from mobile_vision_export.export.tflite_model import (
    add_float_bias,
    add_tensor,
    compact,
    op_name,
    read_single_graph,
    unary_op,
    write_model,
)


@dataclass(frozen=True)
class FloatOutput:
    """How the int8 file's output became float32."""

    layer: str  # the op producing the output
    how: str  # "dynamic-range" (that op's output is now float), "float" (it already ran in float), "dequantize"
    output_step: float  # the int8 output step removed, or kept ("dequantize")

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def markdown(self) -> list[str]:
        if self.how == "dynamic-range":
            what = (
                f"The output layer ({self.layer}) runs as a dynamic-range layer: int8 weights, its input requantized "
                f"at run time, float32 logits without the int8 output step of {self.output_step:.4g}."
            )
        elif self.how == "float":
            what = (
                "The output layer already runs in float (--min-sqnr): its float32 result is the output, without the "
                f"int8 output step of {self.output_step:.4g}."
            )
        else:
            what = (
                f"The output comes from {self.layer}, not a fully-connected layer: a DEQUANTIZE turns it into "
                f"float32 and the int8 step of {self.output_step:.4g} remains."
            )
        return ["## int8 output in float (--int8-output float)", "", f"{what} The input stays int8."]


def float_output(int8_path: Path, dst: Path) -> FloatOutput:
    """Write `int8_path` to `dst` with float32 logits (see the module docstring)."""
    model = read_single_graph(int8_path)
    graph = model.subgraphs[0]
    out = int(graph.outputs[0])
    index, op = next((i, o) for i, o in enumerate(graph.operators) if out in [int(t) for t in o.outputs])
    out_t = graph.tensors[out]
    step, layer = float(out_t.quantization.scale[0]), op_name(model, op)
    float_out = add_tensor(model, out_t, out_t.name.decode())  # keeps the name apps may look the output up by
    out_t.name += b"/int8"
    if layer == "QUANTIZE":  # the output layer already runs in float (--min-sqnr): take its float output
        how, float_out = "float", int(op.inputs[0])
        del graph.operators[index]
    elif layer == "FULLY_CONNECTED" and len(op.inputs) == 3 and op.inputs[2] >= 0:
        how = "dynamic-range"
        x_index, w_index = int(op.inputs[0]), int(op.inputs[1])
        float_bias = add_float_bias(model, op)
        float_x = add_tensor(model, graph.tensors[x_index], f"{graph.tensors[x_index].name.decode()}/float")
        op.inputs = np.array([float_x, w_index, float_bias], np.int32)
        op.outputs = np.array([float_out], np.int32)
        op.builtinOptions.asymmetricQuantizeInputs = True
        graph.operators.insert(index, unary_op(model, schema.BuiltinOperator.DEQUANTIZE, x_index, float_x))
    else:
        how = "dequantize"
        graph.operators.insert(index + 1, unary_op(model, schema.BuiltinOperator.DEQUANTIZE, out, float_out))
    graph.outputs = np.array([float_out], np.int32)
    for signature in model.signatureDefs or []:
        for io in signature.outputs or []:
            if io.tensorIndex == out:
                io.tensorIndex = float_out
    compact(model)
    write_model(model, dst)
    return FloatOutput(layer, how, step)
