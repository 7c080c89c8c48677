"""Estimated milliseconds on a named device: llvm-mca core cycles per kernel family, bounded by DRAM traffic.

Per kernel family (convolution/GEMM, depthwise, ...) the time is the larger of its core cycles at the core's
clock and the bytes its ops move to and from DRAM at the device's DRAM bandwidth (a roofline). An op's
activations count as DRAM traffic when they do not fit in the last-level cache; the model's constants count
when all of them do not fit. Threads: XNNPACK splits every kernel family's work over the threads, which run on
the device's fastest cores (each core taking work at its own rate); "other" (the interpreter, glue) stays on one
core. The memory bound is shared by all threads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mobile_vision_export.export.tflite_inspect import OpTraffic
from mobile_vision_export.profiling.cycles import CycleCount
from mobile_vision_export.profiling.devices import Device
from mobile_vision_export.profiling.symbols import FAMILIES, family_of

SERIAL_FAMILY = "other"
CHECK = Path(__file__).resolve().parent / "estimate_check.json"  # written by bench/latency_model.py


def estimate_note() -> str:
    """What every estimate is and how far off it was on published measurements."""
    method = (
        "llvm-mca cycles of the kernels the emulated core ran, at the device's clocks, each kernel family bounded by "
        "its DRAM traffic at the device's peak bandwidth"
    )
    if not CHECK.is_file():
        return method + "; not yet checked against published measurements."
    check = json.loads(CHECK.read_text())
    return (
        f"{method}. Against {check['figures']} published measurements (bench/latency_model.py) the median error "
        f"was {check['median_abs_error']:.0%} and the worst {check['worst_abs_error']:.0%}."
    )


def dram_bytes(traffic: list[OpTraffic], last_level_cache: int) -> dict[str, float]:
    """Bytes each kernel family moves to and from DRAM per inference (a cached working set moves none)."""
    constants_cached = sum(op.constant_bytes for op in traffic) <= last_level_cache
    out = dict.fromkeys(FAMILIES, 0.0)
    for op in traffic:
        moved = 0 if op.activation_bytes <= last_level_cache else op.activation_bytes
        moved += 0 if constants_cached else op.constant_bytes
        out[family_of("dwconv" if op.op == "DEPTHWISE_CONV_2D" else op.op)] += moved
    return out


@dataclass(frozen=True)
class Estimate:
    device: str
    threads: int
    milliseconds: float
    compute_ms: float
    memory_ms: float  # DRAM traffic at the device's bandwidth
    bound: dict[str, str]  # per family: "compute" or "memory"
    cores: str  # where the threads ran, e.g. "1x a76 @ 2.84 GHz"

    def as_dict(self) -> dict:
        return {
            "device": self.device,
            "threads": self.threads,
            "milliseconds": self.milliseconds,
            "compute_ms": self.compute_ms,
            "memory_ms": self.memory_ms,
            "bound": self.bound,
            "cores": self.cores,
        }


def estimate(device: Device, cycles: dict[str, CycleCount], traffic: list[OpTraffic], threads: int) -> Estimate:
    """Milliseconds for one inference on `threads` of the device's fastest cores; `cycles` per core name."""
    placed = device.fastest_cores(threads)
    missing = {c.core for c in placed} - set(cycles)
    if missing:
        raise KeyError(f"no cycle count for core {sorted(missing)[0]}")
    dram = dram_bytes(traffic, device.last_level_cache_bytes)
    first = placed[0]
    total = 0.0
    compute_total = memory_total = 0.0
    bound = {}
    for family in FAMILIES:
        if family == SERIAL_FAMILY:
            compute = cycles[first.core].families[family] / first.hz
        else:
            rate = sum(c.hz / cycles[c.core].families[family] for c in placed if cycles[c.core].families[family])
            compute = 1.0 / rate if rate else 0.0
        memory = dram[family] / device.dram_bytes_per_s
        bound[family] = "memory" if memory > compute else "compute"
        total += max(compute, memory)
        compute_total += compute
        memory_total += memory
    by_cluster: dict[tuple[str, float], int] = {}
    for c in placed:
        by_cluster[(c.core, c.ghz)] = by_cluster.get((c.core, c.ghz), 0) + 1
    where = " + ".join(f"{n}x {core} @ {ghz:g} GHz" for (core, ghz), n in by_cluster.items())
    return Estimate(device.name, threads, total * 1e3, compute_total * 1e3, memory_total * 1e3, bound, where)
