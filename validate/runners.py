"""Run the same images through PyTorch, ONNX Runtime and the TFLite interpreter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from ai_edge_litert.interpreter import Interpreter
from torch import nn

from mobile_vision_export.export.onnx_graph import TensorSpec, match_outputs
from mobile_vision_export.export.tflite_inspect import dequantize, inspect_tflite, quantize
from mobile_vision_export.export.threads import runtime_threads

Run = Callable[[Path, np.ndarray], np.ndarray]  # a .tflite's output(s) on normalized NHWC images, N x values


def run_torch(model: nn.Module, batch_nchw: np.ndarray) -> np.ndarray:
    """PyTorch on NCHW input; outputs flattened to N x classes (ONNX export already checked it is one tensor)."""
    with torch.no_grad():
        return np.concatenate([model.eval()(torch.from_numpy(x[None])).numpy().reshape(1, -1) for x in batch_nchw])


def run_onnx(path: Path, batch_nchw: np.ndarray) -> np.ndarray:
    """ONNX Runtime on the CPU, graph optimizations off: the float reference."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = runtime_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[None]})[0] for x in batch_nchw]).reshape(len(batch_nchw), -1)


def run_tflite(path: Path, batch_nhwc: np.ndarray) -> np.ndarray:
    """LiteRT on normalized NHWC float input; int8 input/output are quantized and dequantized here."""
    summary = inspect_tflite(path)
    in_info, out_info = summary.inputs[0], summary.outputs[0]
    interpreter = Interpreter(model_path=str(path), num_threads=runtime_threads())
    interpreter.allocate_tensors()
    in_index = interpreter.get_input_details()[0]["index"]
    out_index = interpreter.get_output_details()[0]["index"]
    outputs = []
    for x in batch_nhwc:
        x = x[None].astype(np.float32)
        interpreter.set_tensor(in_index, quantize(x, in_info) if in_info.dtype != "float32" else x)
        interpreter.invoke()
        y = interpreter.get_tensor(out_index)
        outputs.append(dequantize(y, out_info) if out_info.dtype != "float32" else y.astype(np.float32))
    return np.concatenate(outputs).reshape(len(batch_nhwc), -1)


def run_torch_outputs(model: nn.Module, batch_nchw: np.ndarray) -> list[np.ndarray]:
    """PyTorch on NCHW input: every output forward() returns, in its order, each N x its own shape."""
    with torch.no_grad():
        per_image = []
        for x in batch_nchw:
            returned = model.eval()(torch.from_numpy(x[None]))
            per_image.append([t.numpy() for t in (returned if isinstance(returned, (tuple, list)) else [returned])])
    return [np.concatenate(outputs) for outputs in zip(*per_image)]


def run_onnx_outputs(path: Path, batch_nchw: np.ndarray) -> dict[str, np.ndarray]:
    """ONNX Runtime (the float reference): every output by name, each N x its ONNX shape."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = runtime_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name, names = session.get_inputs()[0].name, [o.name for o in session.get_outputs()]
    per_image = [session.run(None, {name: x[None]}) for x in batch_nchw]
    return {n: np.concatenate([outputs[k] for outputs in per_image]) for k, n in enumerate(names)}


def run_tflite_outputs(
    path: Path, batch_nhwc: np.ndarray, specs: tuple[TensorSpec, ...] | None = None
) -> dict[str, np.ndarray]:
    """LiteRT: every output by the name its signature gives it (the ONNX output's name), dequantized, each N x its
    TFLite shape (4-D outputs NHWC)."""
    summary = inspect_tflite(path)
    in_info = summary.inputs[0]
    interpreter = Interpreter(model_path=str(path), num_threads=runtime_threads())
    interpreter.allocate_tensors()
    signature = next(iter(interpreter._get_full_signature_list().values()), {"outputs": {}})
    by_index = {index: name for name, index in signature["outputs"].items()}
    details = interpreter.get_output_details()
    if specs is not None:  # the ONNX output each one is, where the converter renamed them
        found = match_outputs([(by_index.get(d["index"], d["name"]), list(d["shape"])) for d in details], specs)
        by_index.update({d["index"]: name for d, name in zip(details, found) if name is not None})
    infos = {info.name: info for info in summary.outputs}
    results: dict[str, list[np.ndarray]] = {}
    for x in batch_nhwc:
        x = x[None].astype(np.float32)
        interpreter.set_tensor(
            interpreter.get_input_details()[0]["index"], quantize(x, in_info) if in_info.dtype != "float32" else x
        )
        interpreter.invoke()
        for detail in details:
            y, info = interpreter.get_tensor(detail["index"]), infos[detail["name"]]
            y = dequantize(y, info) if info.dtype != "float32" else y.astype(np.float32)
            results.setdefault(by_index.get(detail["index"], detail["name"]), []).append(y)
    return {name: np.concatenate(ys) for name, ys in results.items()}
