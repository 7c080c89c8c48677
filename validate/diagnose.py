"""Per-layer int8 error: run the float and the int8 .tflite on the same photos and compare every layer's output."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from mobile_vision_export.errors import UserError
from mobile_vision_export.export.tflite_inspect import (
    LayerPair,
    inspect_tflite,
    paired_layers,
    quantize,
    tensor_keeping_interpreter,
)

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
    drop_db: float  # SQNR lost against the previous compared layer

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Diagnosis:
    layers: list[LayerError]
    first_jump: LayerError | None
    worst: list[LayerError]


def _pairs(float_model: Path, int8_model: Path) -> list[LayerPair]:
    pairs = paired_layers(float_model, int8_model)
    if not pairs:
        raise DiagnoseError(f"{float_model.name} and {int8_model.name} share no layers: export both from one ONNX file")
    return pairs


def _dequantized(interpreter: Interpreter, index: int, quantization: dict[int, tuple[float, int]]) -> np.ndarray:
    value = interpreter.get_tensor(index).astype(np.float64)
    scale, zero = quantization[index]
    return (value - zero) * scale if scale else value


def diagnose(float_model: Path, int8_model: Path, images_nhwc: np.ndarray) -> Diagnosis:
    """Each shared layer's SQNR (dequantized int8 vs float) over `images_nhwc` (normalized float input)."""
    pairs = _pairs(float_model, int8_model)
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
    layers, previous = [], None
    for k, (index, op, _, _, name) in enumerate(pairs):
        if previous is None or sqnr[k] == np.inf:
            drop = 0.0
        elif sqnr[k] == -np.inf:
            drop = np.inf
        else:
            drop = max(0.0, previous - sqnr[k])
        layers.append(LayerError(index, op, name, float(sqnr[k]), float(cosine[k]), float(drop)))
        previous = sqnr[k] if np.isfinite(sqnr[k]) else previous
    harmful = [layer for layer in layers if layer.drop_db > 0 and layer.sqnr_db < NOISE_FLOOR_DB]
    first_jump = next((layer for layer in harmful if layer.drop_db >= JUMP_DB), None)
    worst = sorted(harmful, key=lambda layer: -layer.drop_db)[:5]
    return Diagnosis(layers, first_jump, worst)
