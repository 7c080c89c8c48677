"""Estimated milliseconds on a named device: llvm-mca core cycles per kernel family, bounded by DRAM traffic.

Per kernel family (convolution/GEMM, depthwise, ...) the time is the larger of its core cycles at the core's
clock and the bytes it misses in a simulated cache of the device's last-level size, at the device's peak DRAM
bandwidth (a roofline). Threads: XNNPACK splits every kernel family's work over the threads, which run on the
device's fastest cores (each core taking work at its own rate); "other" (the interpreter, glue) stays on one
core. The threads share the last-level cache, so with N threads the traffic is that of a cache N times smaller,
and they share the DRAM bandwidth. Each thread beyond the first adds a share of the one-thread-per-core time
(waiting at each op's barrier, uneven splits, contention): the thread overhead, measured on published pairs of
one- and several-thread figures of the same phone and model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mobile_vision_export.profiling.cycles import CycleCount
from mobile_vision_export.profiling.devices import Device
from mobile_vision_export.profiling.symbols import FAMILIES
from mobile_vision_export.profiling.traffic import CacheTraffic

SERIAL_FAMILY = "other"
CHECK = Path(__file__).resolve().parent / "estimate_check.json"  # written by bench/latency_model.py


def calibration() -> float:
    """The factor the cycle model's milliseconds are multiplied by: the geometric mean of published / modelled
    over the published figures (bench/latency_model.py; 1.0 before it has run). The model leaves out cache latency,
    branch mispredictions and imperfect thread scaling, and was too fast on every figure (by 9 to 66 %)."""
    return json.loads(CHECK.read_text())["calibration"] if CHECK.is_file() else 1.0


def thread_overhead() -> float:
    """The time each thread beyond the first adds, as a share of the cycle model's time with perfect scaling: the
    mean over published same-phone pairs (bench/latency_model.py; 0 before it has run). The cycle model splits work
    perfectly, the phones did not (Pixel 2, 4 threads: 3.2x its one-thread speed, not 4x)."""
    return json.loads(CHECK.read_text()).get("thread_overhead", 0.0) if CHECK.is_file() else 0.0


def estimate_note() -> str:
    """What every estimate is and how far off it was on published measurements."""
    method = (
        "llvm-mca cycles of the kernels the emulated core ran, at the device's clocks, each kernel family bounded by "
        "the lines it missed in a simulated cache of the device's last-level size, at its peak DRAM bandwidth"
    )
    overhead = thread_overhead()
    if overhead:
        method += f", each thread beyond the first adding {overhead:.1%} of that time"
    if not CHECK.is_file():
        return method + "; not checked against published measurements."
    check = json.loads(CHECK.read_text())
    return (
        f"{method}, times {check['calibration']:.2f} (published / modelled over {check['figures']} published "
        f"XNNPACK measurements). Error on each of those figures with the constants fitted on the others: median "
        f"{check['loo_median_abs_error']:.0%}, worst {check['loo_worst_abs_error']:.0%} (bench/latency_model.py)."
    )


@dataclass(frozen=True)
class Estimate:
    device: str
    threads: int
    milliseconds: float  # the model's time x calibration
    model_ms: float  # the cycle model's time, uncalibrated
    compute_ms: float
    memory_ms: float  # DRAM traffic at the device's bandwidth
    bound: dict[str, str]  # per family: "compute" or "memory"
    cores: str  # where the threads ran, e.g. "1x a76 @ 2.84 GHz"

    def as_dict(self) -> dict:
        return asdict(self)


def estimate(
    device: Device,
    cycles: dict[str, CycleCount],
    traffic: dict[str, CacheTraffic],
    threads: int,
    factor: float = 1.0,
    overhead: float = 0.0,
) -> Estimate:
    """Milliseconds for one inference on `threads` of the device's fastest cores (`cycles` and `traffic` per core
    name), each thread beyond the first adding `overhead` (see thread_overhead()), times `factor` (see
    calibration())."""
    placed = device.fastest_cores(threads)
    missing = {c.core for c in placed} - set(cycles)
    if missing:
        raise KeyError(f"no cycle count for core {sorted(missing)[0]}")
    first = placed[0]
    per_thread_cache = device.last_level_cache_bytes / len(placed)
    total = 0.0
    compute_total = memory_total = 0.0
    bound = {}
    for family in FAMILIES:
        if family == SERIAL_FAMILY:
            compute = cycles[first.core].families[family] / first.hz
        else:
            rate = sum(c.hz / cycles[c.core].families[family] for c in placed if cycles[c.core].families[family])
            compute = 1.0 / rate if rate else 0.0
        memory = traffic[first.core].beyond(family, per_thread_cache) / device.dram_bytes_per_s
        bound[family] = "memory" if memory > compute else "compute"
        total += max(compute, memory)
        compute_total += compute
        memory_total += memory
    total *= 1 + (len(placed) - 1) * overhead
    by_cluster: dict[tuple[str, float], int] = {}
    for c in placed:
        by_cluster[(c.core, c.ghz)] = by_cluster.get((c.core, c.ghz), 0) + 1
    where = " + ".join(f"{n}x {core} @ {ghz:g} GHz" for (core, ghz), n in by_cluster.items())
    return Estimate(
        device.name, threads, total * 1e3 * factor, total * 1e3, compute_total * 1e3, memory_total * 1e3, bound, where
    )
