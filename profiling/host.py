"""Host latency and memory of one inference, each measurement in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mobile_vision_export.errors import UserError


class HostMeasurementError(UserError, RuntimeError):
    """The measuring process failed."""


@dataclass(frozen=True)
class HostLatency:
    threads: int
    warmups: int
    runs: int
    median_ms: float
    p90_ms: float
    min_ms: float
    rss_growth_mib: float  # resident memory added by creating the interpreter and running it
    peak_rss_mib: float  # the measuring process's peak, Python and numpy included

    def as_dict(self) -> dict:
        return asdict(self)


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _measure_here(model: str, input_path: str, threads: int, warmups: int, runs: int) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    x = np.load(input_path)
    before = _rss_mib("VmRSS")
    interpreter = Interpreter(model_path=model, num_threads=threads)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    for _ in range(warmups):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - start) * 1000)
    return {"times_ms": times, "rss_growth_mib": _rss_mib("VmRSS") - before, "peak_rss_mib": _rss_mib("VmHWM")}


def measure_host(model: Path, input_array: np.ndarray, threads: int, warmups: int = 10, runs: int = 50) -> HostLatency:
    """Median and p90 wall time of invoke() after warm-up, in a fresh Python process."""
    with tempfile.TemporaryDirectory(prefix="mve-host-") as tmp:
        input_path = Path(tmp) / "input.npy"
        np.save(input_path, input_array)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mobile_vision_export.profiling.host",
                str(model.resolve()),
                str(input_path),
                str(threads),
                str(warmups),
                str(runs),
            ],
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        raise HostMeasurementError(f"host measurement of {model} failed: {proc.stderr.strip()[-400:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    times = np.array(data["times_ms"])
    return HostLatency(
        threads,
        warmups,
        runs,
        float(np.median(times)),
        float(np.percentile(times, 90)),
        float(times.min()),
        round(data["rss_growth_mib"], 1),
        round(data["peak_rss_mib"], 1),
    )


if __name__ == "__main__":
    model_arg, input_arg, threads_arg, warmups_arg, runs_arg = sys.argv[1:6]
    print(json.dumps(_measure_here(model_arg, input_arg, int(threads_arg), int(warmups_arg), int(runs_arg))))
