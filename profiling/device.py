"""Real-device latency over adb with a benchmark_model binary that the user supplies."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from mobile_vision_export.errors import UserError

DEVICE_DIR = "/data/local/tmp/mve"


class DeviceError(UserError, RuntimeError):
    """adb or the benchmark binary is missing, or the device run failed."""


_TIMINGS = re.compile(
    r"Inference timings in us: Init: ([\d.]+), First inference: ([\d.]+), "
    r"Warmup \(avg\): ([\d.eE+-]+), Inference \(avg\): ([\d.eE+-]+)"
)
_STATS = re.compile(r"count=(\d+) first=([\d.]+) curr=([\d.]+) min=([\d.]+) max=([\d.]+) avg=([\d.eE+-]+) std=([\d.]+)")
_MEMORY = re.compile(
    r"Memory footprint delta from the start of the tool \(MB\): init=([\d.eE+-]+) overall=([\d.eE+-]+)"
)


def parse_benchmark_output(text: str) -> dict:
    """Init, first, warm-up and average inference time (us), the timed runs' std and count, memory (MB)."""
    timings = _TIMINGS.search(text)
    if not timings:
        raise DeviceError(
            "benchmark_model printed no 'Inference timings in us' line: "
            f"{text.strip().splitlines()[-1] if text.strip() else 'no output'}"
        )
    stats = _STATS.findall(text)  # the last block is the timed runs (the first is warm-up)
    result = {
        "init_us": float(timings[1]),
        "first_inference_us": float(timings[2]),
        "warmup_avg_us": float(timings[3]),
        "inference_avg_us": float(timings[4]),
    }
    if stats:
        count, _first, _curr, low, high, _avg, std = stats[-1]
        result.update(
            runs=int(count), inference_min_us=float(low), inference_max_us=float(high), inference_std_us=float(std)
        )
    memory = _MEMORY.search(text)
    if memory:
        result.update(memory_init_mb=float(memory[1]), memory_overall_mb=float(memory[2]))
    return result


def _adb() -> str:
    adb = shutil.which("adb")
    if adb is None:
        raise DeviceError("adb not found: install it with 'apt-get install adb'")
    return adb


def attached_devices() -> list[str]:
    """Serials of devices in the 'device' state."""
    try:
        out = subprocess.run([_adb(), "devices"], capture_output=True, text=True, timeout=60).stdout
    except subprocess.TimeoutExpired:
        raise DeviceError("'adb devices' did not answer within 60 s: restart the adb server") from None
    return [line.split()[0] for line in out.splitlines()[1:] if line.strip().endswith("\tdevice")]


def run_on_device(model: Path, binary: Path, serial: str, threads: int, warmups: int, runs: int) -> dict:
    """Push the model and binary, run benchmark_model, and parse its figures."""
    adb = [_adb(), "-s", serial]

    def call(*args: str) -> str:
        try:
            proc = subprocess.run([*adb, *args], capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"adb {' '.join(args[:2])} on {serial} did not finish within 900 s") from None
        if proc.returncode != 0:
            raise DeviceError(f"adb {' '.join(args[:2])} failed on {serial}: {proc.stderr.strip()[-300:]}")
        return proc.stdout + proc.stderr

    call("shell", "mkdir", "-p", DEVICE_DIR)
    call("push", str(binary), f"{DEVICE_DIR}/benchmark_model")
    call("push", str(model), f"{DEVICE_DIR}/{model.name}")
    call("shell", "chmod", "755", f"{DEVICE_DIR}/benchmark_model")
    output = call(
        "shell",
        f"{DEVICE_DIR}/benchmark_model",
        f"--graph={DEVICE_DIR}/{model.name}",
        f"--num_threads={threads}",
        f"--warmup_runs={warmups}",
        f"--num_runs={runs}",
    )
    return {"serial": serial, "threads": threads, **parse_benchmark_output(output)}
