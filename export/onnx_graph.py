"""PyTorch -> ONNX, checks on user-supplied ONNX, and onnxsim simplification."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxsim
import torch
from torch import nn

from mobile_vision_export.errors import UserError

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class OnnxError(UserError, ValueError):
    """An ONNX model that cannot go through the pipeline."""


@dataclass(frozen=True)
class OnnxModel:
    """An ONNX file with what the next stages need to know about it."""

    path: Path
    exporter: str
    opset: int
    nodes: int
    input_name: str
    input_size: int
    num_classes: int | None  # from the output shape, when it is static


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def export_onnx(model: nn.Module, input_size: int, path: Path) -> OnnxModel:
    """Export with the TorchScript exporter, which keeps the opset and writes one self-contained file."""
    dummy = torch.zeros(1, 3, input_size, input_size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter announces its own deprecation
            torch.onnx.export(
                model.eval(),
                dummy,
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=OPSET,
                dynamo=False,
                do_constant_folding=True,
            )
    except Exception as exc:  # the exporter raises many types for unsupported modules
        raise OnnxError(
            f"torch.onnx.export failed: {_first_line(exc)}; make the model traceable with "
            f"opset {OPSET} ops, or export it yourself and pass --onnx"
        ) from None
    outputs = len(onnx.load(str(path), load_external_data=False).graph.output)
    if outputs != 1:
        raise OnnxError(f"the model's forward() returns {outputs} tensors: return one tensor (the class logits)")
    return describe_onnx(path, exporter=f"torch.onnx.export (TorchScript, torch {torch.__version__})")


def load_onnx(path: Path) -> onnx.ModelProto:
    """Load an ONNX file (with any external data beside it), or raise OnnxError."""
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise OnnxError(f"cannot read ONNX file {path}: {_first_line(exc)}") from None


def image_input(model: onnx.ModelProto):
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    return inputs[0] if len(inputs) == 1 else None


def fix_input_size(model: onnx.ModelProto, size: int) -> onnx.ModelProto:
    """`model` with its image input fixed at 1x3xSxS: dynamic dimensions (a symbolic batch, height or width, as
    other frameworks export) take these values; a static one that differs is an error."""
    image = image_input(model)
    dims = image.type.tensor_type.shape.dim if image is not None else []
    if len(dims) != 4:
        return model  # describe_onnx names the problem
    for dim, value, what in zip(dims, (1, 3, size, size), ("batch", "channels", "height", "width")):
        if dim.HasField("dim_value") and dim.dim_value not in (value, 0):
            if what in ("height", "width"):
                raise OnnxError(
                    f"input '{image.name}' has a fixed {what} of {dim.dim_value}: --input-size {size} contradicts it "
                    "(leave --input-size out)"
                )
            continue
        dim.Clear()
        dim.dim_value = value
    for output in model.graph.output:  # the simplifier infers them again from the fixed input
        for dim in output.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.Clear()
    return model


def describe_onnx(path: Path, exporter: str = "user-supplied") -> OnnxModel:
    """Check that `path` is a single-image classifier (1x3xSxS float input, static size) and describe it."""
    model = load_onnx(path)
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise OnnxError(
            f"{path} has {len(inputs)} inputs and {len(graph.output)} outputs: "
            "one image in, one tensor out is supported"
        )
    tensor_type = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    if len(dims) == 4 and dims[1] == 3 and (dims[2] is None or dims[3] is None):
        raise OnnxError(
            f"{path} input '{inputs[0].name}' has a dynamic size {dims}: give --input-size S to fix it (batch 1)"
        )
    if len(dims) != 4 or dims[0] not in (1, None) or dims[1] != 3 or dims[2] != dims[3]:
        raise OnnxError(
            f"{path} input '{inputs[0].name}' has shape {dims}: expected [1, 3, S, S] (NCHW RGB, square size)"
        )
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise OnnxError(
            f"{path} input '{inputs[0].name}' is {onnx.TensorProto.DataType.Name(tensor_type.elem_type)}, "
            "not FLOAT: export the model with a float32 input"
        )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    out_dims = [d.dim_value if d.HasField("dim_value") else None for d in graph.output[0].type.tensor_type.shape.dim]
    classes = int(np.prod(out_dims[1:])) if out_dims and None not in out_dims[1:] else None
    return OnnxModel(path, exporter, opset, len(graph.node), inputs[0].name, dims[2], classes)


def simplify_onnx(src: OnnxModel, dst: Path) -> OnnxModel:
    """Run onnxsim (constant folding, shape inference, dead-node removal) and check the result."""
    try:
        simplified, ok = onnxsim.simplify(load_onnx(src.path))
    except Exception as exc:
        raise OnnxError(f"onnxsim failed on {src.path.name}: {_first_line(exc)}") from None
    if not ok:
        raise OnnxError(f"onnxsim could not verify the simplified {src.path.name} against the original")
    onnx.save(simplified, str(dst))
    return describe_onnx(dst, f"{src.exporter} + onnxsim {onnxsim.__version__}")
