"""Per-layer int8 error: run the float and the int8 .tflite on the same photos and compare every layer's output."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from mobile_vision_export.errors import UserError
from mobile_vision_export.export.tflite_inspect import (
    LayerPair,
    graph_edges,
    inspect_tflite,
    paired_layers,
    quantize,
    tensor_keeping_interpreter,
)
from mobile_vision_export.export.tflite_model import read_model

JUMP_DB = 6.0  # a layer whose SQNR is this much below the previous layer's is where the error jumps ...
NOISE_FLOOR_DB = 30.0  # ... once the SQNR is below this: the first layers lose ~6 dB each to 8-bit rounding alone


class DiagnoseError(UserError, ValueError):
    """Two models that cannot be compared layer by layer."""


@dataclass(frozen=True)
class LayerError:
    index: int
    op: str
    tensor: str
    sqnr_db: float
    cosine: float
    drop_db: float  # SQNR lost against the worst of the compared layers feeding it (0 for the first)

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Diagnosis:
    layers: list[LayerError]
    first_jump: LayerError | None
    worst: list[LayerError]


def _pairs(float_model: Path, int8_model: Path) -> list[LayerPair]:
    pairs = paired_layers(float_model, int8_model, float_run_layers=True)
    if not pairs:
        raise DiagnoseError(f"{float_model.name} and {int8_model.name} share no layers: export both from one ONNX file")
    return pairs


def _feeding_layers(int8_model: Path, compared: list[int]) -> dict[int, set[int]]:
    """For each compared op, the compared ops whose outputs reach its inputs through ops that are not compared: in
    a graph that branches (a detector's two heads, ShuffleNet's halves) the op before it is not what it reads."""
    inputs, producer = graph_edges(int8_model)
    kept, sources = set(compared), {}

    def from_op(i: int) -> set[int]:  # the compared ops op i stands for
        if i in kept:
            return {i}
        if i not in sources:
            sources[i] = set()
            sources[i] = {s for t in inputs[i] if t in producer for s in from_op(producer[t])}
        return sources[i]

    return {i: {s for t in inputs[i] if t in producer for s in from_op(producer[t])} for i in compared}


def ancestors(int8_model: Path, output: str) -> set[int]:
    """The ops of the int8 graph that `output` (a signature output name) depends on."""
    named = dict(zip(inspect_tflite(int8_model).output_names, read_model(int8_model).subgraphs[0].outputs))
    if output not in named:
        raise DiagnoseError(f"{int8_model.name} has no output '{output}': it has {', '.join(sorted(named))}")
    inputs, producer = graph_edges(int8_model)
    found, todo = set(), [int(named[output])]
    while todo:
        i = producer.get(todo.pop())
        if i is not None and i not in found:
            found.add(i)
            todo.extend(inputs[i])
    return found


def _dequantized(interpreter: Interpreter, index: int, quantization: dict[int, tuple[float, int]]) -> np.ndarray:
    value = interpreter.get_tensor(index).astype(np.float64)
    scale, zero = quantization[index]
    return (value - zero) * scale if scale else value


def diagnose(float_model: Path, int8_model: Path, images_nhwc: np.ndarray, output: str | None = None) -> Diagnosis:
    """Each shared layer's SQNR (dequantized int8 vs float) over `images_nhwc` (normalized float input); with
    `output` (a signature output name), only the layers that output depends on."""
    pairs = _pairs(float_model, int8_model)
    if output is not None:
        wanted = ancestors(int8_model, output)
        pairs = [pair for pair in pairs if pair.op_index in wanted]
    f_int, q_int = tensor_keeping_interpreter(float_model), tensor_keeping_interpreter(int8_model)
    q_input = inspect_tflite(int8_model).inputs[0]
    q_quantization = {t["index"]: t["quantization"] for t in q_int.get_tensor_details()}
    signal, noise, dot, q_norm = (np.zeros(len(pairs)) for _ in range(4))
    for image in images_nhwc:
        x = image[None].astype(np.float32)
        f_int.set_tensor(f_int.get_input_details()[0]["index"], x)
        q_int.set_tensor(
            q_int.get_input_details()[0]["index"], quantize(x, q_input) if q_input.dtype != "float32" else x
        )
        f_int.invoke()
        q_int.invoke()
        for k, (_, _, f_tensor, q_tensor, name) in enumerate(pairs):
            ref, out = f_int.get_tensor(f_tensor).astype(np.float64), _dequantized(q_int, q_tensor, q_quantization)
            if ref.shape != out.shape:
                raise DiagnoseError(
                    f"layer '{name}' has shape {ref.shape} in the float model and {out.shape} in the "
                    "int8 one: diagnose two files converted from the same graph"
                )
            ref, out = ref.ravel(), out.ravel()
            signal[k] += ref @ ref
            noise[k] += (ref - out) @ (ref - out)
            dot[k] += ref @ out
            q_norm[k] += out @ out
    with np.errstate(divide="ignore", invalid="ignore"):
        # identical outputs score +inf; an all-zero float layer with int8 noise scores -inf
        sqnr = np.where(noise > 0, 10 * np.log10(np.maximum(signal, 1e-300) / np.maximum(noise, 1e-300)), np.inf)
        sqnr = np.where((signal == 0) & (noise > 0), -np.inf, sqnr)
        cosine = np.where(signal * q_norm > 0, dot / np.sqrt(signal * q_norm), 1.0)
    upstream = _feeding_layers(int8_model, [pair.op_index for pair in pairs])
    by_op = {pair.op_index: float(sqnr[k]) for k, pair in enumerate(pairs)}
    layers = []
    for k, (index, op, _, _, name) in enumerate(pairs):
        received = [by_op[i] for i in upstream[index] if np.isfinite(by_op[i])]
        if not received or sqnr[k] == np.inf:
            drop = 0.0
        elif sqnr[k] == -np.inf:
            drop = np.inf
        else:
            drop = max(0.0, min(received) - sqnr[k])
        layers.append(LayerError(index, op, name, float(sqnr[k]), float(cosine[k]), float(drop)))
    harmful = [layer for layer in layers if layer.drop_db > 0 and layer.sqnr_db < NOISE_FLOOR_DB]
    first_jump = next((layer for layer in harmful if layer.drop_db >= JUMP_DB), None)
    worst = sorted(harmful, key=lambda layer: -layer.drop_db)[:5]
    return Diagnosis(layers, first_jump, worst)
