"""Float fallback for chosen layers of a full-integer .tflite.

The chosen ops run in float32 with the float twin's weights. Their int8 inputs pass through a DEQUANTIZE, and each
output that a remaining int8 op (or the model output) reads passes through a QUANTIZE to that tensor's exact scale
and zero point; between two chosen ops the tensor stays float. Every other op, tensor and quantization parameter is
left as it was, so the model keeps its int8 input and output.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from export.tflite_inspect import paired_layers
from export.tflite_model import compact, read_model, write_model


@dataclass(frozen=True)
class Fallback:
    ops: list[int]  # int8 op indices now in float
    float_weights: int  # constant values now stored as float32


def _opcode(model: schema.ModelT, builtin: int, version: int = 1) -> int:
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin and code.version >= version:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _new_tensor(model: schema.ModelT, like: schema.TensorT, name: str, buffer: schema.BufferT | None = None) -> int:
    tensor = schema.TensorT()
    tensor.shape = np.array(like.shape, np.int32)
    tensor.shapeSignature = None if like.shapeSignature is None else np.array(like.shapeSignature, np.int32)
    tensor.type = like.type if buffer is not None else schema.TensorType.FLOAT32
    tensor.name = name.encode()
    tensor.buffer = 0
    if buffer is not None:
        model.buffers.append(buffer)
        tensor.buffer = len(model.buffers) - 1
        tensor.quantization = like.quantization
    graph = model.subgraphs[0]
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _simple_op(model: schema.ModelT, builtin: int, source: int, target: int) -> schema.OperatorT:
    op = schema.OperatorT()
    op.opcodeIndex = _opcode(model, builtin)
    op.inputs = np.array([source], np.int32)
    op.outputs = np.array([target], np.int32)
    return op


def fall_back(int8_path: Path, twin_path: Path, op_indices: set[int], dst: Path) -> Fallback:
    """Write `int8_path` to `dst` with the ops at `op_indices` running in float (weights from `twin_path`)."""
    model, twin = read_model(int8_path), read_model(twin_path)
    graph, twin_graph = model.subgraphs[0], twin.subgraphs[0]
    twin_producer = {int(op.outputs[0]): op for op in twin_graph.operators}
    by_output = {index: f_tensor for index, _, f_tensor, _, _ in paired_layers(twin_path, int8_path)}
    missing = sorted(i for i in op_indices if i not in by_output)
    if missing:
        raise ValueError(f"ops {missing} of {int8_path.name} have no counterpart in {twin_path.name}")
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
                new_inputs.append(_new_tensor(model, source, f"{source.name.decode()}/float", buffer))
                float_weights += int(np.prod(source.shape)) if source.type == schema.TensorType.FLOAT32 else 0
            else:
                if t not in float_of:  # made by an op left in int8 (a chosen producer came first and made it)
                    float_of[t] = _new_tensor(model, graph.tensors[t], f"{graph.tensors[t].name.decode()}/float")
                    before[index].append(_simple_op(model, schema.BuiltinOperator.DEQUANTIZE, t, float_of[t]))
                new_inputs.append(float_of[t])
        out = int(op.outputs[0])
        float_of[out] = _new_tensor(model, graph.tensors[out], f"{graph.tensors[out].name.decode()}/float")
        if out in outputs or not consumers.get(out, set()) <= op_indices:
            after[index].append(_simple_op(model, schema.BuiltinOperator.QUANTIZE, float_of[out], out))
        replacement = copy.copy(twin_op)
        code = twin.operatorCodes[twin_op.opcodeIndex]
        replacement.opcodeIndex = _opcode(model, max(code.builtinCode, code.deprecatedBuiltinCode), code.version)
        replacement.inputs = np.array(new_inputs, np.int32)
        replacement.outputs = np.array([float_of[out]], np.int32)
        graph.operators[index] = replacement
    graph.operators = [
        new for index, op in enumerate(graph.operators) for new in [*before.get(index, []), op, *after.get(index, [])]
    ]
    compact(model)
    write_model(model, dst)
    return Fallback(ops=chosen, float_weights=float_weights)
