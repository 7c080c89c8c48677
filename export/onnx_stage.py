"""PyTorch -> ONNX, user-supplied ONNX checks, and onnxsim simplification."""
from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxsim
import torch
from torch import nn

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class OnnxError(ValueError):
    """An ONNX model that cannot go through the pipeline."""


@dataclass(frozen=True)
class OnnxModel:
    """An ONNX file with what the next stages need to know about it."""

    path: Path
    exporter: str
    opset: int
    nodes: int
    input_name: str
    output_name: str
    input_size: int


def export_onnx(model: nn.Module, input_size: int, path: Path) -> OnnxModel:
    """Export with the TorchScript exporter, which keeps the opset and writes one self-contained file."""
    dummy = torch.zeros(1, 3, input_size, input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its own deprecation
        torch.onnx.export(model.eval(), dummy, str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    return describe_onnx(path, exporter=f"torch.onnx.export (TorchScript, torch {torch.__version__})")


def describe_onnx(path: Path, exporter: str = "user-supplied") -> OnnxModel:
    """Check that `path` is a single-image classifier (1x3xHxW, static) and describe it."""
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise OnnxError(f"cannot read ONNX file {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise OnnxError(f"{path} has {len(inputs)} inputs and {len(graph.output)} outputs: one image in, one tensor out is supported")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] != 3 or dims[2] is None or dims[2] != dims[3]:
        raise OnnxError(f"{path} input '{inputs[0].name}' has shape {dims}: expected [1, 3, S, S] (NCHW RGB, static size); "
                        "re-export with a fixed square input")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxModel(path, exporter, opset, len(graph.node), inputs[0].name, graph.output[0].name, dims[2])


def check_supported_ops(path: Path) -> None:
    """Fail early, naming the op and node, when onnx2tf has no converter for an op in the graph."""
    spec = importlib.util.find_spec("onnx2tf")
    supported = {p.stem for p in (Path(spec.submodule_search_locations[0]) / "ops").glob("*.py")}
    for node in onnx.load(str(path)).graph.node:
        if node.op_type not in supported or node.domain not in ("", "ai.onnx"):
            domain = f" (domain '{node.domain}')" if node.domain else ""
            raise OnnxError(f"the converter cannot handle op '{node.op_type}'{domain} at node '{node.name}': "
                            "replace it in the model or export it with standard ONNX ops")


def simplify_onnx(src: OnnxModel, dst: Path) -> OnnxModel:
    """Run onnxsim (constant folding, shape inference, dead-node removal) and check the result."""
    try:
        simplified, ok = onnxsim.simplify(onnx.load(str(src.path)))
    except Exception as exc:
        raise OnnxError(f"onnxsim failed on {src.path.name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not ok:
        raise OnnxError(f"onnxsim could not verify the simplified {src.path.name} against the original")
    onnx.save(simplified, str(dst))
    return OnnxModel(dst, f"{src.exporter} + onnxsim {onnxsim.__version__}", src.opset, len(simplified.graph.node),
                     src.input_name, src.output_name, src.input_size)
