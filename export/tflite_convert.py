"""ONNX -> TFLite with onnx2tf (run as a subprocess, offline), one file per quantization mode."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from mobile_vision_export.errors import UserError
from mobile_vision_export.export.images import from_pixel_codes
from mobile_vision_export.export.onnx_graph import OnnxError, OnnxModel

QUANT_MODES = ("fp32", "fp16", "dynamic", "int8")
# onnx2tf's output suffix for each mode.
_SUFFIX = {"fp32": "float32", "fp16": "float16", "dynamic": "dynamic_range_quant", "int8": "full_integer_quant"}
# onnx2tf fetches this sample file for any 3-channel image input, even for float conversions, unless it exists.
ONNX2TF_SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"


class ConversionError(UserError, RuntimeError):
    """onnx2tf failed; the message names the node when the log does."""

    def __init__(self, message: str, log_path: Path | None = None):
        super().__init__(message)
        self.log_path = log_path

    def __str__(self) -> str:
        return super().__str__() + (f" (log: {self.log_path})" if self.log_path else "")


@dataclass(frozen=True)
class TfliteConversion:
    """The .tflite files written, the settings used and the converter's log."""

    files: dict[str, Path]
    log_path: Path
    settings: dict


def check_converter_supports(path: Path) -> None:
    """Fail early, naming the op and node, when onnx2tf has no converter for an op in the graph."""
    spec = importlib.util.find_spec("onnx2tf")
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError("onnx2tf is not installed: run scripts/setup.sh")
    supported = {p.stem for p in (Path(spec.submodule_search_locations[0]) / "ops").glob("*.py")}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type not in supported or node.domain not in ("", "ai.onnx"):
            domain = f" (domain '{node.domain}')" if node.domain else ""
            raise OnnxError(
                f"the converter cannot handle op '{node.op_type}'{domain} at node '{node.name}': "
                "replace it in the model or export it with standard ONNX ops"
            )


def onnx2tf_args(
    onnx_model: OnnxModel, out_dir: Path, modes: list[str], calib_npy: Path | None, mean, std
) -> list[str]:
    args = ["-i", str(onnx_model.path), "-o", str(out_dir), "-nuo", "-v", "error"]
    batch = onnx.load(str(onnx_model.path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    if not batch.HasField("dim_value"):  # a dynamic batch dimension: fix it to 1
        args += ["-b", "1"]
    if "int8" in modes:
        args += [
            "-oiqt",
            "-qt",
            "per-channel",
            "-iqd",
            "int8",
            "-oqd",
            "int8",
            "-cind",
            onnx_model.input_name,
            str(calib_npy),
            f"[[[[{','.join(map(str, mean))}]]]]",
            f"[[[[{','.join(map(str, std))}]]]]",
        ]
    elif "dynamic" in modes:
        args += ["-odrqt"]
    return args


def _failure_message(log_text: str) -> str:
    """Pull the failing node and the last exception line out of onnx2tf's log."""
    node = re.findall(r"onnx_op_name: (\S+)", log_text)
    op_type = re.findall(r"onnx_op_type: (\S+)", log_text)
    exc = [line.strip() for line in log_text.splitlines() if re.match(r"^\s*\w+(Error|Exception)\b.*:", line)]
    where = f" at node '{node[-1]}'" + (f" (op {op_type[-1]})" if op_type else "") if node else ""
    return f"onnx2tf failed{where}: {exc[-1] if exc else 'see the conversion log'}"


def _run_converter(cmd: list[str], cwd: Path, log, env: dict, timeout_s: int, log_path: Path) -> int:
    """Run the converter in its own session and process group; return its exit code.

    Its own session keeps a terminal's Ctrl-C away from it (this process decides), and on any exception here
    (KeyboardInterrupt, SIGTERM turned into one by pipeline.signals, the timeout) the whole group is stopped, so
    no converter or child of it keeps running once this function has returned or raised."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        raise ConversionError(f"onnx2tf did not finish within {timeout_s} s", log_path) from None
    except BaseException:
        _stop_group(proc)
        raise


def _stop_group(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
    """SIGTERM to the process group led by `proc`, up to `grace_s` for the leader to exit, then SIGKILL to the group
    (whatever ignored SIGTERM, and children that outlived the leader), and reap the leader."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # stuck in the kernel; it cannot run any more code
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):  # the group is already empty
        pass


def convert_tflite(
    onnx_model: OnnxModel, work_dir: Path, modes: list[str], calib_nhwc01: np.ndarray, mean, std, timeout_s: int = 1800
) -> TfliteConversion:
    """Convert `onnx_model` to the requested modes inside `work_dir`; `calib_nhwc01` are 0..1 NHWC photos (or their
    uint8 pixel codes)."""
    work_dir = work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    onnx_model = replace(onnx_model, path=onnx_model.path.resolve())
    write_onnx2tf_sample(work_dir, calib_nhwc01)
    calib_npy = None
    if "int8" in modes:
        calib_npy = work_dir / "calibration_nhwc.npy"
        np.save(calib_npy, _unit_float(calib_nhwc01))
    out_dir = work_dir / "onnx2tf"
    args = onnx2tf_args(onnx_model, out_dir, modes, calib_npy, mean, std)
    log_path = work_dir / "onnx2tf.log"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    files = {m: out_dir / f"{onnx_model.path.stem}_{_SUFFIX[m]}.tflite" for m in modes}
    flags = [f"--{m}" for m in ("fp16", "dynamic") if m in modes]
    int8 = [str(calib_npy), json.dumps(list(mean)), json.dumps(list(std)), str(files["int8"])] if calib_npy else []
    # onnx2tf, minus unasked files
    cmd = [sys.executable, "-m", "mobile_vision_export.export.onnx2tf_run", *flags, *int8, "--", *args]
    with open(log_path, "w") as log:
        log.write(" ".join(cmd[1:]) + "\n")
        log.flush()
        returncode = _run_converter(cmd, work_dir, log, env, timeout_s, log_path)
    missing = [m for m, p in files.items() if not p.is_file()]
    if returncode != 0 or missing:
        raise ConversionError(_failure_message(log_path.read_text(errors="replace")), log_path)
    settings = {
        "tool": "onnx2tf",
        "args": args,
        "launcher": "mobile_vision_export.export.onnx2tf_run: onnx2tf builds only the requested files",
        "quant_type": "per-channel" if "int8" in modes else None,
        "int8_io": "int8" if "int8" in modes else None,
        "calibration_samples": int(len(calib_nhwc01)) if "int8" in modes else 0,
    }
    return TfliteConversion(files, log_path, settings)


def write_onnx2tf_sample(work_dir: Path, calib_nhwc01: np.ndarray) -> None:
    """The sample file onnx2tf otherwise downloads (into its working directory), made from our calibration photos."""
    np.save(work_dir / ONNX2TF_SAMPLE_FILE, _resize_batch(calib_nhwc01, 128, 20))


def _resize_batch(batch: np.ndarray, size: int, count: int) -> np.ndarray:
    """`count` images from `batch`, nearest-resized to size x size (only to stand in for onnx2tf's sample file)."""
    idx_h = np.arange(size) * batch.shape[1] // size
    idx_w = np.arange(size) * batch.shape[2] // size
    picked = batch[np.arange(count) % len(batch)]
    return _unit_float(np.ascontiguousarray(picked[:, idx_h][:, :, idx_w]))


def _unit_float(batch: np.ndarray) -> np.ndarray:
    """float32 0..1 pixels, from uint8 pixel codes or from floats."""
    return from_pixel_codes(batch) if batch.dtype == np.uint8 else batch.astype(np.float32)
