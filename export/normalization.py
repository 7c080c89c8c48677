"""The per-channel input normalization (x - mean) / std, folded into the graph as its first op: a 1x1 convolution
whose 3x3 weight matrix is diagonal (1/std) with bias -mean/std. The exported files then take pixel / 255 (0..1) for
float and the camera's own uint8 pixels for int8, which is what clients such as MediaPipe Tasks accept (one scalar
mean/std, uint8 or float32 inputs). With per-channel int8 weights each channel's multiplier stays exact. A dense 1x1
conv, not a depthwise one: XNNPACK runs a 3-channel depthwise conv a pixel at a time (3.5 M more emulated A76
instructions on shufflenet_v2_x0_5 int8), a 1x1 conv as one small GEMM."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # mean, std of an input that is already what the graph wants


def _weights(mean, std) -> tuple[np.ndarray, np.ndarray]:
    scale = 1.0 / np.asarray(std, np.float64)
    weight = np.diag(scale).astype(np.float32).reshape(3, 3, 1, 1)
    return weight, (-np.asarray(mean, np.float64) * scale).astype(np.float32)


class FoldedNormalization(nn.Module):
    """`model` behind its input normalization, as one module taking 0..1 RGB."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.normalize = nn.Conv2d(3, 3, 1, bias=True)
        weight, bias = _weights(mean, std)
        with torch.no_grad():
            self.normalize.weight.copy_(torch.from_numpy(weight))
            self.normalize.bias.copy_(torch.from_numpy(bias))
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


def prepend_normalization(model: onnx.ModelProto, mean, std) -> onnx.ModelProto:
    """`model` (one image input, NCHW) with the normalization as its first node, reading 0..1 RGB."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    (image,) = [i for i in graph.input if i.name not in initializers]
    normalized = f"{image.name}_normalized"
    for node in graph.node:
        node.input[:] = [normalized if name == image.name else name for name in node.input]
    weight, bias = _weights(mean, std)
    graph.initializer.extend(
        [
            numpy_helper.from_array(weight, "input_normalization_w"),
            numpy_helper.from_array(bias, "input_normalization_b"),
        ]
    )
    conv = helper.make_node(
        "Conv",
        [image.name, "input_normalization_w", "input_normalization_b"],
        [normalized],
        name="input_normalization",
        kernel_shape=[1, 1],
    )
    graph.node.insert(0, conv)
    return model
