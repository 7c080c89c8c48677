"""Read, compact and write .tflite flatbuffers with the schema's object API (ModelT)."""

from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema


def read_model(path: Path) -> schema.ModelT:
    return schema.ModelT.InitFromObj(schema.Model.GetRootAs(Path(path).read_bytes(), 0))


def write_model(model: schema.ModelT, dst: Path) -> None:
    """Serialize `model` to `dst` through a temporary file, so `dst` is never half-written."""
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    tmp = Path(dst).with_name(f".{Path(dst).name}.tmp")
    tmp.write_bytes(bytes(builder.Output()))
    tmp.replace(dst)


def compact(model: schema.ModelT) -> None:
    """Drop tensors and buffers nothing refers to any more, renumbering the rest."""
    g = model.subgraphs[0]
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
