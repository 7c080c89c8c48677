"""Your own measurements of a named device: once stored, they replace the published calibration for that device.

Each measurement pairs milliseconds measured on the device (with `--adb`, or given with `--measured`) with the
cycle model's uncalibrated milliseconds for the same model file and thread count. A device's correction is the
geometric mean of measured / modelled over all its stored measurements.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from mobile_vision_export.errors import UserError
from mobile_vision_export.export.files import write_text_atomic


class CorrectionsError(UserError, ValueError):
    """A corrections file that cannot be read, or a measurement that makes no sense."""


def corrections_file() -> Path:
    default = Path.home() / ".config" / "mobile-vision-export" / "device_corrections.json"
    return Path(os.environ.get("MVE_DEVICE_CORRECTIONS", default))


def _read(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise CorrectionsError(f"{path} is damaged: delete it (it only holds your stored measurements)") from None


def record(device: str, measurements: list[dict], path: Path | None = None) -> None:
    """Store measurements ({model, sha256, threads, measured_ms, model_ms}); one per model file and thread count,
    a newer one replacing an older one."""
    path = path or corrections_file()
    data = _read(path)
    kept = {(m["sha256"], m["threads"]): m for m in data.get(device, [])}
    for m in measurements:
        if not m["measured_ms"] > 0:
            raise CorrectionsError(f"a measured time must be positive, got {m['measured_ms']} ms")
        kept[(m["sha256"], m["threads"])] = m
    data[device] = list(kept.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def correction(device: str, path: Path | None = None) -> tuple[float, int] | None:
    """(factor, number of measurements) for the device, or None when none is stored."""
    stored = _read(path or corrections_file()).get(device, [])
    if not stored:
        return None
    logs = [math.log(m["measured_ms"] / m["model_ms"]) for m in stored]
    return math.exp(sum(logs) / len(logs)), len(logs)
