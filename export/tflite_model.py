"""The one home of .tflite flatbuffer plumbing: read, inspect, compact and write with the schema's object API."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

# ops with int8 weights and an int32 bias: where their input, weights and bias are among the op's inputs
BIASED_OPS = {
    "CONV_2D": (0, 1, 2),
    "DEPTHWISE_CONV_2D": (0, 1, 2),
    "FULLY_CONNECTED": (0, 1, 2),
    "TRANSPOSE_CONV": (2, 1, 3),  # its first input is the output shape
}
# appended to the name of an int8 tensor that a uint8 or float32 tensor takes the place of as the model's input or
# output (the uint8 I/O and float-output steps): the new tensor keeps the name apps look it up by
INT8_SUFFIX = "/int8"
_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def op_type_name(builtin_code: int, deprecated_code: int, custom_code: bytes | None = None) -> str:
    """The name of an operator code ('CONV_2D', 'CUSTOM:name', ...); newer models keep the code in the wider field."""
    builtin = max(builtin_code, deprecated_code)
    if builtin == schema.BuiltinOperator.CUSTOM:
        return f"CUSTOM:{(custom_code or b'?').decode()}"
    return _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")


def op_name(model: schema.ModelT, op: schema.OperatorT) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    return op_type_name(code.builtinCode, code.deprecatedBuiltinCode, code.customCode)


def add_opcode(model: schema.ModelT, builtin: int, version: int = 1) -> int:
    """The index of the operator code for `builtin` at `version`, added if the model has none. The version is the
    one TFLite's converter gives the op's types: older runtimes refuse a version they lack rather than run a kernel
    that does not handle the op (a per-channel dynamic-range layer written as an int8 one would run wrong)."""
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin and code.version == version:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def add_tensor(model: schema.ModelT, like: schema.TensorT, name: str, buffer: schema.BufferT | None = None) -> int:
    """A new tensor shaped like `like`: float32 without data, or holding `buffer` with `like`'s type and
    quantization; returns its index in the main subgraph."""
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


def biased_operands(model: schema.ModelT, op: schema.OperatorT) -> tuple[int, int, int] | None:
    """The input, weights and bias tensors of a biased op (BIASED_OPS); None for other ops and one without bias."""
    positions = BIASED_OPS.get(op_name(model, op))
    if positions is None or len(op.inputs) <= positions[2] or op.inputs[positions[2]] < 0:
        return None
    x, w, b = (int(op.inputs[p]) for p in positions)
    return x, w, b


def add_zero_bias(model: schema.ModelT, op: schema.OperatorT) -> int:
    """Give a biased op without bias an int32 zero bias on its kernel's grid (input scale x weight scale), so its
    bias can be trained and written like any other. Returns the new tensor's index."""
    graph, name = model.subgraphs[0], op_name(model, op)
    x_at, w_at, b_at = BIASED_OPS[name]
    x, w = graph.tensors[op.inputs[x_at]], graph.tensors[op.inputs[w_at]]
    weight_scale = np.asarray(w.quantization.scale, np.float64)
    channels = int(w.shape[-1] if name == "DEPTHWISE_CONV_2D" else w.shape[0])
    tensor = schema.TensorT()
    tensor.shape, tensor.type = np.array([channels], np.int32), schema.TensorType.INT32
    tensor.name = f"{w.name.decode()}/bias".encode()
    tensor.quantization = schema.QuantizationParametersT()
    scale = np.broadcast_to(float(x.quantization.scale[0]) * weight_scale, (channels,))
    tensor.quantization.scale = scale.astype(np.float32)
    tensor.quantization.zeroPoint = np.zeros(channels, np.int64)
    model.buffers.append(schema.BufferT())
    model.buffers[-1].data = np.zeros(channels, np.int32).view(np.uint8)
    tensor.buffer = len(model.buffers) - 1
    graph.tensors.append(tensor)
    inputs = [int(t) for t in op.inputs] + [-1] * max(0, b_at + 1 - len(op.inputs))
    inputs[b_at] = len(graph.tensors) - 1
    op.inputs = np.array(inputs, np.int32)
    return inputs[b_at]


def add_float_bias(model: schema.ModelT, op: schema.OperatorT) -> int:
    """A new float32 constant holding what the int32 bias of `op` (a conv or fully-connected layer) stands for:
    bias x input scale x per-channel weight scale, as a dynamic-range layer takes it. Returns its index."""
    graph = model.subgraphs[0]
    x, w, bias = (graph.tensors[t] for t in biased_operands(model, op))
    values = np.frombuffer(bytes(bytearray(model.buffers[bias.buffer].data)), np.int32).astype(np.float64)
    scale = float(x.quantization.scale[0]) * np.asarray(w.quantization.scale, np.float64)
    buffer = schema.BufferT()
    buffer.data = (values * scale).astype(np.float32).view(np.uint8)
    index = add_tensor(model, bias, f"{bias.name.decode()}/float", buffer)
    graph.tensors[index].type, graph.tensors[index].quantization = schema.TensorType.FLOAT32, None
    return index


# Op versions as TFLite's converter writes them (tensorflow/lite/tools/versioning/op_version.cc).
_DEQUANTIZE_VERSIONS = {schema.TensorType.INT8: 2, schema.TensorType.INT16: 3, schema.TensorType.FLOAT16: 3}
_HYBRID_VERSIONS = {  # float input, int8 weights (asymmetric input quantization): (per tensor, per channel)
    "CONV_2D": (2, 5),
    "DEPTHWISE_CONV_2D": (4, 6),
    "FULLY_CONNECTED": (9, 12),
}


# The oldest TFLite runtime with each (op, version) the rewrites here write, from the converter's table
# (tensorflow/lite/tools/versioning/runtime_version.cc); the converter's own ops are in its value already.
_MIN_RUNTIME = {
    ("CONV_2D", 2): "1.14.0",
    ("CONV_2D", 5): "2.4.0",
    ("DEPTHWISE_CONV_2D", 4): "2.2.0",
    ("DEPTHWISE_CONV_2D", 6): "2.3.0",
    ("FULLY_CONNECTED", 9): "2.3.0",
    ("DEQUANTIZE", 2): "1.14.0",
    ("DEQUANTIZE", 3): "1.15.0",
    ("QUANTIZE", 1): "1.14.0",
    ("QUANTIZE", 2): "1.15.0",
}
RUNTIME_VERSION_KEY = b"min_runtime_version"  # the metadata entry naming the oldest runtime for the file


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _runtime_buffer(model: schema.ModelT) -> schema.BufferT | None:
    entry = next((m for m in model.metadata or [] if m.name == RUNTIME_VERSION_KEY), None)
    return None if entry is None or entry.buffer >= len(model.buffers) else model.buffers[entry.buffer]


def min_runtime_version(model: schema.ModelT) -> str | None:
    """The oldest TFLite runtime the file says it runs on (its `min_runtime_version` metadata), if it says."""
    buffer = _runtime_buffer(model)
    if buffer is None:
        return None
    return bytes(bytearray(buffer.data if buffer.data is not None else b"")).rstrip(b"\0").decode(errors="replace")


def raise_min_runtime_version(model: schema.ModelT) -> None:
    """Raise the file's `min_runtime_version` metadata to what its rewritten ops need: the converter computed it
    for its own ops, and a tool that reads it should not offer the file to a runtime without these kernels."""
    current = min_runtime_version(model)
    if current is None:
        return
    buffer = _runtime_buffer(model)
    needed = [
        _MIN_RUNTIME.get((op_type_name(c.builtinCode, c.deprecatedBuiltinCode), c.version)) for c in model.operatorCodes
    ]
    highest = max([current, *filter(None, needed)], key=_version_key)
    if highest != current:
        size = max(16, len(buffer.data) if buffer.data is not None else 0)
        buffer.data = np.frombuffer(highest.encode().ljust(size, b"\0"), np.uint8).copy()


def make_dynamic_range(model: schema.ModelT, op: schema.OperatorT) -> None:
    """Turn `op` (BIASED_OPS), already reading a float input and a float bias (add_float_bias, made while it still
    read its per-channel weights), into a dynamic-range op on its int8 weights: asymmetric input quantization, and
    the op version TFLite's converter gives those types."""
    weights_at = BIASED_OPS[op_name(model, op)][1]
    inputs = np.array(op.inputs, np.int32)
    inputs[weights_at] = _dynamic_range_weights(model, op)
    op.inputs = inputs
    if hasattr(op.builtinOptions, "asymmetricQuantizeInputs"):
        op.builtinOptions.asymmetricQuantizeInputs = True
    op.opcodeIndex = add_opcode(model, getattr(schema.BuiltinOperator, op_name(model, op)), hybrid_version(model, op))


def _dynamic_range_weights(model: schema.ModelT, op: schema.OperatorT) -> int:
    """The weight tensor `op` reads in dynamic-range form. A fully-connected layer's per-channel int8 weights go onto
    one per-tensor grid (the widest channel's scale), as the converter's dynamic-range variant writes them here:
    runtimes without per-channel dynamic-range fully-connected kernels (op version 12; the Task Library's TFLite)
    refuse the layer otherwise."""
    w_index = biased_operands(model, op)[1]
    weights = model.subgraphs[0].tensors[w_index]
    q = weights.quantization
    if op_name(model, op) != "FULLY_CONNECTED" or q is None or len(q.scale) < 2 or q.quantizedDimension != 0:
        return w_index
    scales = np.asarray(q.scale, np.float64)
    levels = np.frombuffer(bytes(bytearray(model.buffers[weights.buffer].data)), np.int8).reshape(len(scales), -1)
    scale = float(scales.max())
    buffer = schema.BufferT()
    buffer.data = np.clip(np.rint(levels * (scales[:, None] / scale)), -127, 127).astype(np.int8).ravel().view(np.uint8)
    index = add_tensor(model, weights, f"{weights.name.decode()}/per_tensor", buffer)
    quantization = schema.QuantizationParametersT()
    quantization.scale, quantization.zeroPoint = np.array([scale], np.float32), np.array([0], np.int64)
    model.subgraphs[0].tensors[index].quantization = quantization
    return index


def hybrid_version(model: schema.ModelT, op: schema.OperatorT) -> int:
    """The op version of `op` (BIASED_OPS) as a dynamic-range op with its int8 weights. A transposed conv keeps its
    int8 version: its version follows its bias and activation, not its types."""
    name = op_name(model, op)
    if name not in _HYBRID_VERSIONS:
        return model.operatorCodes[op.opcodeIndex].version
    weights = model.subgraphs[0].tensors[biased_operands(model, op)[1]]
    per_channel = weights.quantization is not None and len(weights.quantization.scale) > 1
    return _HYBRID_VERSIONS[name][per_channel]


def unary_op(model: schema.ModelT, builtin: int, source: int, target: int) -> schema.OperatorT:
    """A new one-input, one-output op (QUANTIZE, DEQUANTIZE) from tensor `source` to `target`."""
    tensors = model.subgraphs[0].tensors
    if builtin == schema.BuiltinOperator.DEQUANTIZE:
        version = _DEQUANTIZE_VERSIONS.get(tensors[source].type, 1)
    else:
        version = 2 if tensors[target].type == schema.TensorType.INT16 else 1
    op = schema.OperatorT()
    op.opcodeIndex = add_opcode(model, builtin, version)
    op.inputs = np.array([source], np.int32)
    op.outputs = np.array([target], np.int32)
    return op


def read_model(path: Path) -> schema.ModelT:
    return schema.ModelT.InitFromObj(schema.Model.GetRootAs(Path(path).read_bytes(), 0))


def read_single_graph(path: Path) -> schema.ModelT:
    """`read_model`, refusing models with more than one subgraph (the passes here rewrite only the main one)."""
    model = read_model(path)
    if len(model.subgraphs) != 1:
        count = len(model.subgraphs)
        raise ValueError(f"{Path(path).name} has {count} subgraphs; only single-graph models are handled")
    return model


def buffer_uses(graph: schema.SubGraphT) -> Counter[int]:
    """How many tensors refer to each buffer: a shared buffer must be copied before one tensor's values change."""
    return Counter(t.buffer for t in graph.tensors)


_NUMPY_TYPES = {
    schema.TensorType.INT8: np.int8,
    schema.TensorType.UINT8: np.uint8,
    schema.TensorType.INT32: np.int32,
    schema.TensorType.INT64: np.int64,
    schema.TensorType.FLOAT32: np.float32,
    schema.TensorType.FLOAT16: np.float16,
}


def constant_view(model: schema.ModelT, tensor: schema.TensorT) -> np.ndarray:
    """A constant tensor's values as a view into its buffer, made writable: writing the view changes the model."""
    buffer = model.buffers[tensor.buffer]
    buffer.data = np.array(buffer.data, dtype=np.uint8)
    return buffer.data.view(_NUMPY_TYPES[tensor.type]).reshape([int(d) for d in tensor.shape])


def own_buffer(model: schema.ModelT, tensor: schema.TensorT, uses: Counter[int]) -> None:
    """Give `tensor` a copy of its buffer if other tensors share it (`uses`, from buffer_uses, is kept up to date),
    so that changing its values changes only it."""
    if uses[tensor.buffer] <= 1:
        return
    uses[tensor.buffer] -= 1
    data = model.buffers[tensor.buffer].data
    model.buffers.append(schema.BufferT())
    model.buffers[-1].data = None if data is None else np.array(data, dtype=np.uint8)
    tensor.buffer = len(model.buffers) - 1
    uses[tensor.buffer] = 1


def serialize(model: schema.ModelT) -> bytes:
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def buffer_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, length) of each buffer's bytes inside the serialized model `data` ((0, 0) for an empty buffer), so a
    constant can be rewritten in place, at the same length, without packing the model again."""
    model = schema.Model.GetRootAs(data, 0)
    spans = []
    for index in range(model.BuffersLength()):
        table = model.Buffers(index)._tab
        field = table.Offset(4)  # Buffer.data
        spans.append((table.Vector(field), table.VectorLen(field)) if field else (0, 0))
    return spans


def write_model(model: schema.ModelT, dst: Path) -> None:
    """Serialize `model` to `dst` through a temporary file, so `dst` is never half-written, with the runtime version
    its ops need."""
    raise_min_runtime_version(model)
    tmp = Path(dst).with_name(f".{Path(dst).name}.tmp")
    tmp.write_bytes(serialize(model))
    tmp.replace(dst)


def compact(model: schema.ModelT) -> None:
    """Drop tensors, buffers and operator codes nothing refers to any more, renumbering the rest (a runtime may
    resolve every operator code in the file, used or not)."""
    g = model.subgraphs[0]
    if len(model.subgraphs) == 1:
        codes = sorted({int(op.opcodeIndex) for op in g.operators})
        model.operatorCodes = [model.operatorCodes[i] for i in codes]
        code_map = {old: new for new, old in enumerate(codes)}
        for op in g.operators:
            op.opcodeIndex = code_map[int(op.opcodeIndex)]
    used = sorted(
        {int(t) for op in g.operators for t in [*op.inputs, *op.outputs] if t >= 0}
        | {int(t) for t in g.inputs}
        | {int(t) for t in g.outputs}
    )
    remap = {old: new for new, old in enumerate(used)}
    g.tensors = [g.tensors[i] for i in used]
    for op in g.operators:
        op.inputs = np.array([remap[t] if t >= 0 else t for t in op.inputs], np.int32)
        op.outputs = np.array([remap[t] for t in op.outputs], np.int32)
    g.inputs = np.array([remap[t] for t in g.inputs], np.int32)
    g.outputs = np.array([remap[t] for t in g.outputs], np.int32)
    for signature in model.signatureDefs or []:
        for io in [*(signature.inputs or []), *(signature.outputs or [])]:
            io.tensorIndex = remap[io.tensorIndex]
    metadata_buffers = [int(b) for b in (model.metadataBuffer if model.metadataBuffer is not None else [])]
    used_buffers = sorted(
        {0, *(t.buffer for t in g.tensors), *(m.buffer for m in model.metadata or []), *metadata_buffers}
    )
    buffer_map = {old: new for new, old in enumerate(used_buffers)}
    model.buffers = [model.buffers[i] for i in used_buffers]
    for t in g.tensors:
        t.buffer = buffer_map[t.buffer]
    for m in model.metadata or []:
        m.buffer = buffer_map[m.buffer]
    if metadata_buffers:
        model.metadataBuffer = np.array([buffer_map[b] for b in metadata_buffers], np.int32)


def rename_outputs(path: Path, names: list[str | None]) -> bool:
    """Give the main signature's outputs, in the graph's output order, the `names` that are not None (the ONNX
    outputs' names, which apps look them up by); a file without a signature (the converter writes some variants
    without one) gets them as its output tensors' names. Rewrite `path` only if one changes."""
    model = read_model(path)
    graph = model.subgraphs[0]
    by_tensor = {int(io.tensorIndex): io for sig in model.signatureDefs or [] for io in sig.outputs or []}
    changed = False
    for tensor, name in zip(graph.outputs, names):
        if name is None:
            continue
        named = by_tensor.get(int(tensor)) if model.signatureDefs else graph.tensors[int(tensor)]
        if named is not None and named.name.decode() != name:
            named.name, changed = name.encode(), True
    if changed:
        write_model(model, path)
    return changed


def multiply_accumulates(model: schema.ModelT) -> int:
    """Multiply-accumulates per image of the conv and fully-connected ops."""
    graph = model.subgraphs[0]
    total = 0
    for op in graph.operators:
        name = op_name(model, op)
        if name in BIASED_OPS:
            x, w = (graph.tensors[op.inputs[p]].shape for p in BIASED_OPS[name][:2])
            if name == "TRANSPOSE_CONV":  # every input value meets every weight
                total += int(np.prod(x[1:-1])) * int(np.prod(w))
                continue
            out = graph.tensors[op.outputs[0]].shape
            per_output = int(np.prod(w[1:])) if name != "DEPTHWISE_CONV_2D" else int(np.prod(w[1:3]))
            total += int(np.prod(out[1:])) * per_output
    return total
