"""Empirical bias correction of a full-integer .tflite against its float twin.

Rounding weights and activations to int8 shifts each layer's mean output a little, and the shifts add up along
the network. On calibration photos, this pass measures each conv / depthwise / fully-connected layer's mean error
per output channel against the float graph it was quantized from and folds it into the layer's int32 bias. Only the
bias values change: scales, zero points and weights stay as they are. Later layers see the corrected earlier ones
because the layers are corrected one at a time, in depth order. Only layers without a fused activation are
corrected: behind a ReLU the float output's sign decides which positions count, which biases the measured mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from mobile_vision_export.export.tflite_inspect import (
    inspect_tflite,
    paired_layers,
    quantize,
    tensor_keeping_interpreter,
)
from mobile_vision_export.export.tflite_model import (
    biased_operands,
    buffer_uses,
    read_single_graph,
    write_model,
)
from mobile_vision_export.int8.crops import Crops, keep_if_closer
from mobile_vision_export.validate.metrics import sqnr_db
from mobile_vision_export.validate.runners import Run, run_tflite

IMAGES = 16  # calibration crops the correction measures on


@dataclass(frozen=True)
class BiasShift:
    layers: int  # layers whose bias changed
    max_shift_lsb: int  # largest change of one int32 bias value, in units of its scale


@dataclass
class _Layer:
    op_index: int
    float_tensor: int
    int8_tensor: int
    bias: np.ndarray  # int32 view into the model's buffer, written in place
    bias_scale: np.ndarray
    out_scale: float
    out_zero: int


def _layers(model: schema.ModelT, float_twin: Path, int8_path: Path) -> list[_Layer]:
    """The int8 graph's biased layers without a fused activation that the float twin has too."""
    twins = {pair.op_index: pair for pair in paired_layers(float_twin, int8_path)}
    graph = model.subgraphs[0]
    uses = buffer_uses(graph)
    layers = []
    for index, op in enumerate(graph.operators):
        operands = biased_operands(model, op)
        if operands is None or index not in twins:
            continue
        bias_t, out_t = graph.tensors[operands[2]], graph.tensors[op.outputs[0]]
        if bias_t.type != schema.TensorType.INT32 or uses[bias_t.buffer] != 1 or out_t.quantization is None:
            continue
        buffer = model.buffers[bias_t.buffer]
        if buffer.data is None:
            continue
        buffer.data = np.array(buffer.data, dtype=np.uint8)  # a writable copy the bias view can change
        activation = getattr(op.builtinOptions, "fusedActivationFunction", schema.ActivationFunctionType.NONE)
        if activation != schema.ActivationFunctionType.NONE:
            continue
        bias = buffer.data.view(np.int32)
        layers.append(
            _Layer(
                op_index=index,
                float_tensor=twins[index].float_tensor,
                int8_tensor=twins[index].int8_tensor,
                bias=bias,
                bias_scale=np.asarray(bias_t.quantization.scale, np.float64),
                out_scale=float(out_t.quantization.scale[0]),
                out_zero=int(out_t.quantization.zeroPoint[0]),
            )
        )
    return layers


def _mean_outputs(model: Path, layers: list[_Layer], images: np.ndarray, float_twin: bool) -> list[np.ndarray]:
    """Per layer, the mean of its output per channel over `images`, in one pass: the float twin's output, or the
    int8 model's, dequantized."""
    interpreter = tensor_keeping_interpreter(model)
    q_input = None if float_twin else inspect_tflite(model).inputs[0]
    totals = [0.0] * len(layers)
    for image in images:
        x = image[None].astype(np.float32)
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x if float_twin else quantize(x, q_input))
        interpreter.invoke()
        for i, layer in enumerate(layers):
            if float_twin:
                out = interpreter.get_tensor(layer.float_tensor).astype(np.float64)
            else:
                out = (interpreter.get_tensor(layer.int8_tensor).astype(np.float64) - layer.out_zero) * layer.out_scale
            totals[i] = totals[i] + out.reshape(-1, out.shape[-1]).mean(axis=0)
    return [total / len(images) for total in totals]


def shift_biases(
    int8_path: Path, float_twin: Path, images_nhwc: np.ndarray, dst: Path, run: Run = run_tflite
) -> BiasShift:
    """Write `int8_path` with corrected biases to `dst`; `images_nhwc` are normalized calibration photos. A layer's
    correction is kept only if the model's output on those photos comes closer to the float twin's: under a
    narrowed output range a shifted mean can push values into clipping (mobilenet_v2's last projections: the
    earlier layers' corrections gained 1.5 dB, these three lost 12)."""
    model = read_single_graph(int8_path)
    layers = _layers(model, float_twin, int8_path)
    original = [layer.bias.copy() for layer in layers]
    write_model(model, dst)
    reference = run(float_twin, images_nhwc)
    best = sqnr_db(reference, run(dst, images_nhwc))
    float_means = _mean_outputs(float_twin, layers, images_nhwc, float_twin=True)
    int8_means: dict[int, np.ndarray] = {}  # of the model as it is now; measured again after a kept correction
    for k, layer in enumerate(layers):  # in depth order, each measured after the ones before it are corrected
        if k not in int8_means:
            later = _mean_outputs(dst, layers[k:], images_nhwc, float_twin=False)
            int8_means = {k + i: mean for i, mean in enumerate(later)}
        error = float_means[k] - int8_means[k]
        before = layer.bias.copy()
        shift = np.round(error / layer.bias_scale)
        layer.bias[:] = np.clip(layer.bias.astype(np.int64) + shift.astype(np.int64), -(2**31), 2**31 - 1)
        write_model(model, dst)
        score = sqnr_db(reference, run(dst, images_nhwc))
        if score > best:
            best = score
            int8_means = {}  # the layers after this one now see other inputs
        else:
            layer.bias[:] = before
            write_model(model, dst)
    shifts = [np.abs(layer.bias.astype(np.int64) - o) for layer, o in zip(layers, original)]
    return BiasShift(
        layers=sum(int(s.max() > 0) for s in shifts if s.size),
        max_shift_lsb=int(max((s.max() for s in shifts if s.size), default=0)),
    )


@dataclass(frozen=True)
class BiasCorrection:
    """What the bias correction changed and whether it was kept."""

    applied: bool
    layers_corrected: int
    calibration_sqnr_db_before: float
    calibration_sqnr_db_after: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def markdown(self) -> list[str]:
        verdict = "kept" if self.applied else "not kept (no gain)"
        return [
            "## int8 bias correction",
            "",
            f"Biases of {self.layers_corrected} linear conv/fully-connected layers corrected by their mean error "
            "against the float twin on calibration crops, one layer at a time, each kept only if the output came "
            f"closer to float there. SQNR on other calibration crops: {self.calibration_sqnr_db_before:.2f} "
            f"-> {self.calibration_sqnr_db_after:.2f} dB, {verdict}.",
        ]


def correct_biases(int8: Path, float_twin: Path, crops: Crops) -> BiasCorrection:
    """Correct the biases of `int8` in place against `float_twin` on IMAGES of the crops steps fit on, kept only if
    int8 comes closer to ONNX Runtime's output on the selection crops, which the correction did not see."""
    candidate = int8.with_name(f".{int8.name}.corrected")
    shift = shift_biases(int8, float_twin, crops.fit[:IMAGES], candidate, crops.run)
    selection = keep_if_closer(int8, candidate, crops)
    return BiasCorrection(selection.kept, shift.layers, selection.sqnr_db_before, selection.sqnr_db_after)
