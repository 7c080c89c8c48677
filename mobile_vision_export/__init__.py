"""mobile-vision-export: PyTorch or ONNX vision models to validated, quantized .tflite files.

Everything the project installs lives under this one name, so a user's own `models`, `export` or `pipeline`
package never meets ours. The repository keeps its folders at the top (models/, export/, validate/, profiling/,
int8/, report/, pipeline/); pyproject.toml maps them to `mobile_vision_export.<folder>` and, in a source checkout, the
repository root is searched too.
"""

from pathlib import Path

_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "pipeline" / "export.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 (a package's search path)

__all__ = ["export_model"]


def __getattr__(name: str):
    """`from mobile_vision_export import export_model` without importing torch and TensorFlow for anything else."""
    if name == "export_model":
        from mobile_vision_export.pipeline.api import export_model

        return export_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
