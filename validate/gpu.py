"""GPU delegate readiness of each .tflite, from TensorFlow's own analyzer (what tf.lite.experimental.Analyzer runs
with gpu_compatibility=True): which ops the GPU delegate would refuse, and why. Its native module is loaded from the
installed TensorFlow by path: importing the `tensorflow` package would cost seconds and hundreds of MB."""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

_OP = re.compile(r"^\s+Op#(\d+) (\w+)\(")
_WARNING = "GPU COMPATIBILITY WARNING: "


@dataclass(frozen=True)
class GpuReadiness:
    """One file's ops and those the GPU delegate would leave to the CPU (op index, type, reason)."""

    ops: int
    refused: list[tuple[int, str, str]] = field(default_factory=list)
    runtime: str = ""

    @property
    def compatible(self) -> bool:
        return not self.refused

    def as_dict(self) -> dict:
        return {
            "ops": self.ops,
            "compatible": self.compatible,
            "refused": [{"op": i, "type": t, "reason": r} for i, t, r in self.refused],
            "analyzer": self.runtime,
        }

    def summary(self) -> str:
        if self.compatible:
            return f"all {self.ops} ops run on the GPU delegate"
        kinds = sorted({f"{t} ({r})" for _, t, r in self.refused})
        return f"{len(self.refused)} of {self.ops} ops would fall back to the CPU: " + "; ".join(kinds[:3])


def parse_analysis(text: str) -> GpuReadiness:
    """The analyzer's report of one model (its op lines, each followed by any warning about it)."""
    ops, refused, current = 0, [], None
    for line in text.splitlines():
        if match := _OP.match(line):
            ops += 1
            current = (int(match.group(1)), match.group(2))
        elif line.startswith(_WARNING) and current is not None and "Subgraph#" not in line:
            refused.append((*current, line[len(_WARNING) :].strip()))
    runtime = next((m.group(1) for m in re.finditer(r"TFLite runtime version ([\d.]*\d)", text)), "")
    return GpuReadiness(ops, refused, f"TensorFlow Lite analyzer {runtime}".strip())


@functools.cache
def _analyzer():
    spec = importlib.util.find_spec("tensorflow")  # finds the package without importing it
    folder = Path(spec.origin).parent / "lite" / "python" / "analyzer_wrapper"
    (path,) = folder.glob("_pywrap_analyzer_wrapper*.so")
    loader = importlib.machinery.ExtensionFileLoader("_pywrap_analyzer_wrapper", str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def gpu_readiness(model: Path) -> GpuReadiness:
    return parse_analysis(_analyzer().ModelAnalyzer(str(model), True, True))
