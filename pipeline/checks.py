"""The export's input checks, one set for the command line and the Python API (the CLI passes its flags through):
each refuses a value that would crash later, be ignored, or give a silently wrong answer. Messages name the
command-line flag; the API's keyword is the same name with underscores."""

from __future__ import annotations

import math
from pathlib import Path

from mobile_vision_export.errors import UserError
from mobile_vision_export.export.images import hw, size_text
from mobile_vision_export.export.tflite_convert import QUANT_MODES
from mobile_vision_export.pipeline.arguments import input_size_problem

# Calibration crops are held as float32 while the converter runs, once normalized and once as pixel codes: this
# many bytes of them at most (2 GiB: 2,853 crops at 224 pixels; the default 200 take 150 MB).
MAX_CALIBRATION_BYTES = 2 << 30


class RequestError(UserError, ValueError):
    """Options that cannot go together, or a value out of its range."""


def _finite(name: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number, not {value!r}")
    return float(value)


def check_input_size(input_size, flag: str = "--input-size") -> None:
    """S or (H, W) in whole pixels, at most MAX_INPUT_SIZE squared of them."""
    if input_size is None:
        return
    sizes = tuple(input_size) if isinstance(input_size, (tuple, list)) else (input_size,)
    if len(sizes) not in (1, 2) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
        raise RequestError(f"{flag} must be S or (H, W) in whole pixels (224 or (48, 192)), not {input_size!r}")
    if problem := input_size_problem(input_size, f"{flag} {size_text(input_size)}"):
        raise RequestError(problem)


def check_normalization(mean, std) -> None:
    for flag, values in (("--mean", mean), ("--std", std)):
        if values is None:
            continue
        if len(tuple(values)) != 3:
            raise RequestError(f"{flag} takes three numbers R,G,B, not {values!r}")
        for value in values:
            _finite(flag, value)
    if std is not None and any(s <= 0 for s in std):
        raise RequestError(f"--std must be positive, got {','.join(map(str, std))}")


def check_calib_samples(samples, input_size) -> None:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise RequestError(f"--calib-samples must be a whole number of crops of at least 1, not {samples!r}")
    height, width = hw(input_size)
    per_crop = 3 * height * width * (4 + 1)
    if samples * per_crop > MAX_CALIBRATION_BYTES:
        most = MAX_CALIBRATION_BYTES // per_crop
        raise RequestError(
            f"--calib-samples {samples} at {size_text(input_size)} pixels would hold "
            f"{samples * per_crop / 2**30:.1f} GiB of crops: give at most {most} (200 to 1,000 calibrate well)"
        )


def int8_output_for(int8_output: str | None, min_sqnr, min_top1) -> str:
    """The int8 file's outputs: as asked; unasked, float32 when --min-sqnr or --min-top1 sets a target, else int8.
    Under a target the output's own rounding is the first error to take out, as it costs no bytes and no speed
    (mobilenet_v2 ImageNet, --min-top1 0.95: then the last 16 layers in dynamic range reach it, against the whole
    network in dynamic range and its last 8 layers in float32 with int8 logits)."""
    if int8_output is not None:
        return int8_output
    return "float" if min_sqnr is not None or min_top1 is not None else "int8"


def check_request(
    quant: str,
    *,
    min_sqnr=None,
    min_top1=None,
    int8_output: str | None = None,
    int8_io: str = "uint8",
    val_dir: Path | None = None,
    max_accuracy_drop=None,
    thresholds: dict | None = None,
) -> None:
    """Everything about an export request that does not need the model."""
    if quant not in (*QUANT_MODES, "all"):
        raise RequestError(f"unknown quant '{quant}': use one of {', '.join(QUANT_MODES)} or all")
    if int8_output not in (None, "int8", "float"):
        raise RequestError(f"unknown int8_output '{int8_output}': use int8 or float")
    if int8_io not in ("uint8", "int8"):
        raise RequestError(f"unknown int8_io '{int8_io}': use uint8 (pixels, what clients take) or int8")
    int8 = quant in ("int8", "all")
    if _finite("--min-sqnr", min_sqnr) is not None and not int8:
        raise RequestError("--min-sqnr is an int8 target: use it with --quant int8 or --quant all")
    if _finite("--min-top1", min_top1) is not None:
        if not 0 < min_top1 <= 1:
            raise RequestError(f"--min-top1 is a fraction of photos: give a value in (0, 1] (0.95), not {min_top1:g}")
        if not int8:
            raise RequestError("--min-top1 is an int8 target: use it with --quant int8 or --quant all")
    if int8_output == "float" and not int8:
        raise RequestError("--int8-output applies to the int8 file: use it with --quant int8 or --quant all")
    given = thresholds or {}
    for variant, limits in given.items():
        for key, value in limits.items():
            _finite(f"--{key.replace('_', '-')}-{variant}", value)
    if min_sqnr is not None and "min_sqnr" in given.get("int8", {}):
        raise RequestError("give either --min-sqnr (a target with fallback) or --min-sqnr-int8 (a threshold)")
    if min_top1 is not None and "min_top1" in given.get("int8", {}):
        raise RequestError("give either --min-top1 (a target with fallback) or --min-top1-int8 (a threshold)")
    if val_dir is not None and not Path(val_dir).exists():
        raise RequestError(f"--val-dir {val_dir} does not exist: give a folder of class subfolders or a .csv file")
    if _finite("--max-accuracy-drop", max_accuracy_drop) is not None:
        if val_dir is None:
            raise RequestError("--max-accuracy-drop needs --val-dir (the labelled photos it is measured on)")
        if max_accuracy_drop < 0:
            raise RequestError(f"--max-accuracy-drop is in points of top-1 and at least 0, not {max_accuracy_drop:g}")
