"""Read a .tflite flatbuffer: op histogram, input/output tensors and their quantization."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from mobile_vision_export.errors import UserError
from mobile_vision_export.export.tflite_model import INT8_SUFFIX, RUNTIME_VERSION_KEY, op_type_name
from mobile_vision_export.export.threads import runtime_threads

_TYPE_NAMES = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
LAYOUT_OPS = ("TRANSPOSE", "RESHAPE", "GATHER")


class NotTfliteError(UserError, ValueError):
    """A file that is not a TFLite flatbuffer."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: list[int]
    dtype: str
    scale: float | None
    zero_point: int | None


@dataclass(frozen=True)
class TfliteSummary:
    path: Path
    size_bytes: int
    ops: dict[str, int]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    output_names: list[str] = field(default_factory=list)  # each output's signature name: the ONNX output's
    min_runtime_version: str | None = None  # the oldest TFLite runtime the file says it needs

    @property
    def op_count(self) -> int:
        return sum(self.ops.values())


def _tensor_info(tensor) -> TensorInfo:
    q = tensor.Quantization()
    scale = zero = None
    if q is not None and q.ScaleLength() == 1:
        scale, zero = float(q.Scale(0)), int(q.ZeroPoint(0))
    return TensorInfo(
        tensor.Name().decode(),
        [int(d) for d in tensor.ShapeAsNumpy()],
        _TYPE_NAMES.get(tensor.Type(), str(tensor.Type())),
        scale,
        zero,
    )


def inspect_tflite(path: Path) -> TfliteSummary:
    """Summarize the main subgraph of the model at `path`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise NotTfliteError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise NotTfliteError(f"{path} is not a TFLite model (no 'TFL3' identifier)")
    try:
        model = schema.Model.GetRootAs(data, 0)
        graph = model.Subgraphs(0)
        ops: Counter[str] = Counter()
        for i in range(graph.OperatorsLength()):
            code = model.OperatorCodes(graph.Operators(i).OpcodeIndex())
            ops[op_type_name(code.BuiltinCode(), code.DeprecatedBuiltinCode(), code.CustomCode())] += 1
        inputs = [_tensor_info(graph.Tensors(int(i))) for i in graph.InputsAsNumpy()]
        outputs = [_tensor_info(graph.Tensors(int(i))) for i in graph.OutputsAsNumpy()]
        signature = {}
        if model.SignatureDefsLength():
            definition = model.SignatureDefs(0)
            for k in range(definition.OutputsLength()):
                signature[definition.Outputs(k).TensorIndex()] = definition.Outputs(k).Name().decode()
        names = [signature.get(int(i), info.name) for i, info in zip(graph.OutputsAsNumpy(), outputs)]
        if not inputs or not outputs:
            raise ValueError("no input or output tensors")
        _check_buffers(model, len(data))
        runtime = _min_runtime_version(model)
    except Exception:  # the flatbuffer reader fails in many ways on a cut or damaged file
        raise NotTfliteError(f"{path} is a truncated or damaged TFLite file: copy or export it again") from None
    return TfliteSummary(Path(path), len(data), dict(ops.most_common()), inputs, outputs, names, runtime)


def _min_runtime_version(model) -> str | None:
    """The file's `min_runtime_version` metadata; a bad entry is no reason to refuse a file that runs."""
    for k in range(model.MetadataLength()):
        entry = model.Metadata(k)
        if entry.Name() == RUNTIME_VERSION_KEY and entry.Buffer() < model.BuffersLength():
            data = model.Buffers(entry.Buffer()).DataAsNumpy()
            return bytes(data).rstrip(b"\0").decode(errors="replace") if isinstance(data, np.ndarray) else ""
    return None


def _check_buffers(model, size: int) -> None:
    """Every buffer stored outside the flatbuffer (large models) must lie inside the file."""
    for i in range(model.BuffersLength()):
        buffer = model.Buffers(i)
        if buffer.Offset() and buffer.Offset() + buffer.Size() > size:
            raise ValueError(f"buffer {i} ends past the end of the file")


def op_outputs(path: Path) -> list[tuple[str, int, str]]:
    """(op type, first output tensor index, that tensor's name) for every op of the main subgraph, in order."""
    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    graph = model.Subgraphs(0)
    out = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        tensor = int(op.Outputs(0))
        name = op_type_name(code.BuiltinCode(), code.DeprecatedBuiltinCode(), code.CustomCode())
        out.append((name, tensor, graph.Tensors(tensor).Name().decode()))
    return out


def op_inputs(path: Path) -> list[list[int]]:
    """The input tensor indices of every op of the main subgraph, in order (-1 for an absent optional input)."""
    graph = schema.Model.GetRootAs(Path(path).read_bytes(), 0).Subgraphs(0)
    return [[int(t) for t in graph.Operators(i).InputsAsNumpy()] for i in range(graph.OperatorsLength())]


def has_dynamic_range_layers(path: Path) -> bool:
    """Whether an op takes a float32 activation with int8 weights: its kernel quantizes the activation per
    inference, and x86 and ARM kernels may round a value to different codes."""
    graph = schema.Model.GetRootAs(Path(path).read_bytes(), 0).Subgraphs(0)
    for i in range(graph.OperatorsLength()):
        inputs = graph.Operators(i).InputsAsNumpy()
        if len(inputs) > 1 and inputs[0] >= 0 and inputs[1] >= 0:
            x, w = graph.Tensors(int(inputs[0])).Type(), graph.Tensors(int(inputs[1])).Type()
            if x == schema.TensorType.FLOAT32 and w == schema.TensorType.INT8:
                return True
    return False


def graph_edges(path: Path) -> tuple[list[list[int]], dict[int, int]]:
    """Each op's input tensors, and the op producing each tensor (main subgraph)."""
    return op_inputs(path), {tensor: i for i, (_, tensor, _) in enumerate(op_outputs(path))}


def _name_parts(name: str) -> set[str]:
    """The op names the converter fused into one tensor name ("a/Add;b/convolution;Const_5"), constants left out."""
    return {part for part in name.split(";") if part and not part.startswith("Const")}


class LayerPair(NamedTuple):
    """An op present in both the float and the int8 graph of one model."""

    op_index: int  # in the int8 graph
    kind: str  # op type
    float_tensor: int  # the op's output in the float graph
    int8_tensor: int  # the op's output in the int8 graph
    name: str


@dataclass(frozen=True)
class TwinLayer:
    """An int8 op with the float twin's op that computes the same layer."""

    kind: str
    float_tensor: int
    int8_tensor: int
    twin_op: schema.OperatorT  # in the twin's ModelT, with its (float) constants


def paired_layers(float_model: Path, int8_model: Path, float_run_layers: bool = False) -> list[LayerPair]:
    """Each op present in both graphs: by position when the op lists match, otherwise the same-type op with its
    output tensor's name, or the one same-type op sharing a fused name. An int8 output that a uint8 or float one
    took the place of goes by its old name (the QUANTIZE or DEQUANTIZE behind it has that name now, and computes
    no layer). With `float_run_layers` (diagnosis), a layer the int8 file runs in float and that is not paired
    itself is paired through the QUANTIZE that puts its output on the int8 grid under its name."""
    f_ops, q_ops = op_outputs(float_model), op_outputs(int8_model)
    if [op for op, _, _ in f_ops] == [op for op, _, _ in q_ops]:
        return [LayerPair(i, f[0], f[1], q[1], q[2]) for i, (f, q) in enumerate(zip(f_ops, q_ops))]
    by_name = {(op, name): tensor for op, tensor, name in f_ops}
    any_type = {name: (op, tensor) for op, tensor, name in f_ops}
    by_part: dict[tuple[str, str], set[int]] = {}
    for op, tensor, name in f_ops:
        for part in _name_parts(name):
            by_part.setdefault((op, part), set()).add(tensor)
    from_float = _quantizes_of_float(int8_model) if float_run_layers else set()
    pairs, paired_floats = [], set()
    for i, (op, tensor, name) in enumerate(q_ops):
        name = name.removesuffix(INT8_SUFFIX)
        candidates = {by_name[op, name]} if (op, name) in by_name else set()
        if not candidates:
            candidates = set().union(*(by_part.get((op, part), set()) for part in _name_parts(name)))
        if len(candidates) == 1:
            pair = LayerPair(i, op, candidates.pop(), tensor, name)
        elif i in from_float and name in any_type and any_type[name][1] not in paired_floats:
            pair = LayerPair(i, *any_type[name], tensor, name)
        else:
            continue
        pairs.append(pair)
        paired_floats.add(pair.float_tensor)
    return pairs


def _quantizes_of_float(path: Path) -> set[int]:
    """The QUANTIZE ops of the main subgraph that read a float32 tensor."""
    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    graph = model.Subgraphs(0)
    found = set()
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = op_type_name(code.BuiltinCode(), code.DeprecatedBuiltinCode(), code.CustomCode())
        if kind == "QUANTIZE" and graph.Tensors(int(op.Inputs(0))).Type() == schema.TensorType.FLOAT32:
            found.add(i)
    return found


def twin_layers(float_twin: Path, int8_model: Path, twin: schema.ModelT) -> dict[int, TwinLayer]:
    """The paired layers by int8 op index, each with the op of `twin` (the float twin, read) that computes it."""
    producer = {int(op.outputs[0]): op for op in twin.subgraphs[0].operators}
    return {
        p.op_index: TwinLayer(p.kind, p.float_tensor, p.int8_tensor, producer[p.float_tensor])
        for p in paired_layers(float_twin, int8_model)
        if p.float_tensor in producer
    }


def tensor_keeping_interpreter(model: Path | bytes) -> Interpreter:
    """An interpreter of the model at a path (or in bytes) that keeps every intermediate tensor (no delegate, so
    nothing is fused away)."""
    interpreter = Interpreter(
        model_path=None if isinstance(model, bytes) else str(model),
        model_content=model if isinstance(model, bytes) else None,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True,
        num_threads=runtime_threads(),
    )
    interpreter.allocate_tensors()
    return interpreter


def quantize(x: np.ndarray, info: TensorInfo) -> np.ndarray:
    """Float -> the tensor's integer type with its scale and zero point (round half to even, clip)."""
    dtype = np.dtype(info.dtype)
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    return np.clip(np.rint(x / info.scale) + info.zero_point, lo, hi).astype(dtype)


def dequantize(q: np.ndarray, info: TensorInfo) -> np.ndarray:
    return ((q.astype(np.float32) - info.zero_point) * info.scale).astype(np.float32)
