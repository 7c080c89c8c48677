"""A pass over a .tflite flatbuffer that removes the converter's NCHW islands where that is cheaper.

onnx2tf keeps PyTorch's NCHW semantics where it cannot prove a layout: it transposes an NHWC tensor to NCHW, runs
layout-sensitive ops there (a channel shuffle's 5-D reshape/transpose, channel slices), and transposes back. Such an
island is rewritten to run in NHWC directly: the entry and exit TRANSPOSEs disappear and every op inside gets its
shape, permutation, slice bounds or axis remapped. A channel shuffle becomes RESHAPE -> one 5-D TRANSPOSE -> RESHAPE
in NHWC. Only data-movement ops (and the axes of a global average) are touched and quantization parameters are
kept, so int8 outputs are unchanged bit for bit; float outputs can differ by rounding where a global average now
sums in NHWC order.

By default an island is rewritten only when no TRANSPOSE is left in it (for example a TRANSPOSE to NCHW feeding a
global average). A channel-shuffle island keeps its NCHW form: its NHWC form needs a 5-D TRANSPOSE over tiny inner
blocks, which XNNPACK (LiteRT 2.1) runs slower than the island's large-block transposes (measured in
bench/layout_forms.py). `nhwc_shuffles=True` rewrites those too.

Layouts: a tensor of rank r inside an island has axes (N, c1..ck, H, W) with the spatial axes last; its NHWC form
is (N, H, W, c1..ck), i.e. axis order L(r) = [0, r-2, r-1, 1, ..., r-3].
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from mobile_vision_export.export.tflite_model import compact, op_name, read_single_graph, write_model

TO_NCHW = [0, 3, 1, 2]
TO_NHWC = [0, 2, 3, 1]
_ISLAND_OPS = ("RESHAPE", "TRANSPOSE", "STRIDED_SLICE", "CONCATENATION")


@dataclass(frozen=True)
class OptimizeResult:
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    islands: int


def nhwc_order(rank: int) -> list[int]:
    return [0, rank - 2, rank - 1, *range(1, rank - 2)]


class _Graph:
    """The main subgraph of a ModelT with producer/consumer lookups and constant helpers."""

    def __init__(self, model: schema.ModelT):
        self.model = model
        self.g = model.subgraphs[0]
        self._constants: dict[tuple, int] = {}

    def op_name(self, op) -> str:
        return op_name(self.model, op)

    def consumers(self, tensor: int) -> list:
        return [op for op in self.g.operators if tensor in list(op.inputs)]

    def const(self, tensor: int) -> np.ndarray | None:
        """The values of an int32 constant tensor, or None for anything else."""
        t = self.g.tensors[tensor]
        if t.type != schema.TensorType.INT32:
            return None
        data = self.model.buffers[t.buffer].data if t.buffer else None
        if data is None or len(data) == 0:
            return None
        return np.frombuffer(bytes(bytearray(data)), np.int32).copy()

    def new_const(self, values: list[int]) -> int:
        """An int32 constant tensor holding `values` (shared between identical requests)."""
        key = tuple(values)
        if key not in self._constants:
            buffer = schema.BufferT()
            buffer.data = np.asarray(values, np.int32).view(np.uint8)
            self.model.buffers.append(buffer)
            tensor = schema.TensorT()
            tensor.shape = np.array([len(values)], np.int32)
            tensor.type = schema.TensorType.INT32
            tensor.buffer = len(self.model.buffers) - 1
            tensor.name = f"nhwc_const_{len(self._constants)}".encode()
            self.g.tensors.append(tensor)
            self._constants[key] = len(self.g.tensors) - 1
        return self._constants[key]

    def replace_uses(self, old: int, new: int) -> None:
        for op in self.g.operators:
            op.inputs = np.array([new if t == old else t for t in op.inputs], np.int32)
        self.g.outputs = np.array([new if t == old else t for t in self.g.outputs], np.int32)


def _perm(graph: _Graph, op) -> list[int] | None:
    values = graph.const(op.inputs[1])
    return None if values is None else values.tolist()


def _collect_island(graph: _Graph, entry) -> tuple[list, list] | None:
    """Ops inside the island that starts at `entry` (a TRANSPOSE to NCHW) and its exit TRANSPOSEs back to NHWC;
    None when some op in it has no NHWC form or an island tensor leaves the island another way."""
    inside, exits, frontier, seen = [], [], [entry.outputs[0]], set()
    graph_outputs = set(graph.g.outputs.tolist())
    while frontier:
        tensor = frontier.pop()
        if tensor in seen:
            continue
        if tensor in graph_outputs:
            return None
        seen.add(tensor)
        for op in graph.consumers(tensor):
            if op in inside or op in exits:
                continue
            name = graph.op_name(op)
            if name == "TRANSPOSE" and len(graph.g.tensors[tensor].shape) == 4 and _perm(graph, op) == TO_NHWC:
                if op.outputs[0] in graph_outputs:  # keep the model's output tensors (and signatures) as they are
                    return None
                exits.append(op)
            elif name == "MEAN" and _is_spatial_mean(graph, op):
                exits.append(op)
            elif name in _ISLAND_OPS and _rewritable(graph, op, name):
                inside.append(op)
                frontier.append(op.outputs[0])
            else:
                return None
    for op in inside:  # every data input of an island op must itself be an island tensor
        data_inputs = list(op.inputs) if graph.op_name(op) == "CONCATENATION" else [op.inputs[0]]
        if any(t not in seen for t in data_inputs):
            return None
    return inside, exits


def _is_spatial_mean(graph: _Graph, op) -> bool:
    """A global average over H and W of an NCHW tensor, dropping them: its [N, C] output has no layout."""
    axes = graph.const(op.inputs[1])
    keep_dims = op.builtinOptions is not None and op.builtinOptions.keepDims
    return (
        len(graph.g.tensors[op.inputs[0]].shape) == 4 and axes is not None and sorted(axes) == [2, 3] and not keep_dims
    )


def _rewritable(graph: _Graph, op, name: str) -> bool:
    """Whether `op` keeps the spatial axes last and has constant parameters, so it has an NHWC form."""
    src = graph.g.tensors[op.inputs[0]].shape.tolist()
    dst = graph.g.tensors[op.outputs[0]].shape.tolist()
    if len(src) < 4 or len(dst) < 4 or src[0] != 1 or dst[0] != 1:
        return False
    if name == "TRANSPOSE":
        perm = _perm(graph, op)
        return perm is not None and perm[0] == 0 and perm[-2:] == [len(perm) - 2, len(perm) - 1]
    if name == "RESHAPE":
        return src[-2:] == dst[-2:]
    if name == "STRIDED_SLICE":
        options = op.builtinOptions
        params_known = all(graph.const(t) is not None for t in op.inputs[1:4])
        return params_known and not (options.ellipsisMask or options.newAxisMask or options.shrinkAxisMask)
    if name == "CONCATENATION":
        return all(len(graph.g.tensors[t].shape) == len(src) for t in op.inputs) and op.builtinOptions.axis not in (
            0,
            len(src) - 2,
            len(src) - 1,
            -1,
            -2,
        )
    return False


def _remap_mask(mask: int, order: list[int]) -> int:
    return sum(1 << k for k, axis in enumerate(order) if mask & (1 << axis))


def _rewrite_island(graph: _Graph, entry, inside: list, exits: list) -> None:
    old_shapes = {op.outputs[0]: graph.g.tensors[op.outputs[0]].shape.tolist() for op in inside}
    graph.replace_uses(entry.outputs[0], entry.inputs[0])  # the island now reads the NHWC tensor directly
    for op in inside:
        name = graph.op_name(op)
        out = op.outputs[0]
        src_rank = len(graph.g.tensors[op.inputs[0]].shape)
        shape = old_shapes[out]
        order = nhwc_order(len(shape))
        new_shape = [shape[a] for a in order]
        tensor = graph.g.tensors[out]
        tensor.shape = np.array(new_shape, np.int32)
        tensor.shapeSignature = None
        if name == "TRANSPOSE":
            perm, src_order = _perm(graph, op), nhwc_order(src_rank)
            new_perm = [src_order.index(perm[a]) for a in order]
            op.inputs = np.array([op.inputs[0], graph.new_const(new_perm)], np.int32)
        elif name == "RESHAPE":
            op.inputs = np.array([op.inputs[0], graph.new_const(new_shape)], np.int32)
            if op.builtinOptions is not None:
                op.builtinOptions.newShape = np.array(new_shape, np.int32)
        elif name == "STRIDED_SLICE":
            begin, end, strides = (graph.const(t).tolist() for t in op.inputs[1:4])
            op.inputs = np.array(
                [op.inputs[0], *(graph.new_const([v[a] for a in order]) for v in (begin, end, strides))], np.int32
            )
            options = op.builtinOptions
            options.beginMask = _remap_mask(options.beginMask, order)
            options.endMask = _remap_mask(options.endMask, order)
        elif name == "CONCATENATION":
            axis = op.builtinOptions.axis % len(shape)
            op.builtinOptions.axis = order.index(axis)
    for op in exits:
        if graph.op_name(op) == "MEAN":
            op.inputs = np.array([op.inputs[0], graph.new_const([1, 2])], np.int32)  # average over NHWC's H, W
        else:
            graph.replace_uses(op.outputs[0], op.inputs[0])
    removed = {id(entry), *(id(op) for op in exits if graph.op_name(op) == "TRANSPOSE")}
    graph.g.operators = [op for op in graph.g.operators if id(op) not in removed]


def _histogram(graph: _Graph) -> dict[str, int]:
    return dict(Counter(graph.op_name(op) for op in graph.g.operators).most_common())


def rewrite_layout(src: Path, dst: Path, nhwc_shuffles: bool = False) -> OptimizeResult:
    """Rewrite the NCHW islands of `src` in NHWC and write the result to `dst` (via a temporary file)."""
    model = read_single_graph(src)
    if any(op.intermediates is not None and len(op.intermediates) for op in model.subgraphs[0].operators):
        raise ValueError(f"{src.name} has ops with intermediate tensors; the layout pass does not handle them")
    graph = _Graph(model)
    before = _histogram(graph)
    islands, kept = 0, set()
    changed = True
    while changed:
        changed = False
        for op in list(graph.g.operators):
            if id(op) in kept or graph.op_name(op) != "TRANSPOSE" or len(graph.g.tensors[op.inputs[0]].shape) != 4:
                continue
            if _perm(graph, op) != TO_NCHW:
                continue
            island = _collect_island(graph, op)
            keeps_a_transpose = island is not None and any(graph.op_name(o) == "TRANSPOSE" for o in island[0])
            if island is None or (keeps_a_transpose and not nhwc_shuffles):
                kept.add(id(op))
                continue
            _rewrite_island(graph, op, *island)
            islands += 1
            changed = True
            break
    compact(model)
    write_model(model, dst)
    return OptimizeResult(before, _histogram(graph), islands)
