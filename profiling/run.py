"""Profile .tflite files: host latency, emulated ARM instruction counts, and real-device latency over adb."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from mobile_vision_export.export.contract import normalization_beside
from mobile_vision_export.export.images import heldout_batch, heldout_photos, normalize
from mobile_vision_export.export.provenance import sha256_array, tool_versions
from mobile_vision_export.export.tflite_inspect import has_dynamic_range_layers, inspect_tflite, quantize
from mobile_vision_export.export.tflite_model import multiply_accumulates, read_model
from mobile_vision_export.models.weights import sha256_file
from mobile_vision_export.profiling import device
from mobile_vision_export.profiling.arm_setup import emulated_litert
from mobile_vision_export.profiling.cores import CORES, Core
from mobile_vision_export.profiling.corrections import correction, record
from mobile_vision_export.profiling.cycles import find_llvm
from mobile_vision_export.profiling.devices import Device
from mobile_vision_export.profiling.emulated import find_environment, run_emulated
from mobile_vision_export.profiling.estimate import calibration, estimate, estimate_note, thread_overhead
from mobile_vision_export.profiling.host import measure_host
from mobile_vision_export.validate.metrics import sqnr_db

FP32_RTOL = 1e-4  # ARM vs x86 float results may differ by rounding: |a - b| <= 1e-4 * max(1, max|x86|)
# a file with dynamic-range layers quantizes activations per inference, and the host's and the emulated LiteRT
# (different releases) do it differently: mobilenet_v2's files agreed at 32.7-60.5 dB; another function reads near 0
DYNAMIC_RANGE_MIN_SQNR_DB = 20.0


@dataclass(frozen=True)
class ProfileRequest:
    host: bool = True
    cores: list[Core] = field(default_factory=list)
    threads: list[int] = field(default_factory=lambda: [1, 2])
    warmups: int = 10
    runs: int = 50
    arm_runs: int = 3
    adb: bool = False
    serial: str | None = None
    benchmark_binary: Path | None = None
    arm_cache: Path | None = None
    devices: list[Device] = field(default_factory=list)
    estimate_threads: tuple[int, ...] = (1, 4)
    measured_ms: dict[int, float] = field(default_factory=dict)  # threads -> ms you measured on the one device

    @property
    def device_cores(self) -> list[str]:
        """The cores the device estimates run on, for the largest thread count asked for."""
        threads = max(self.estimate_threads, default=1)
        return list(dict.fromkeys(name for d in self.devices for name in d.cores(threads)))

    @property
    def emulated_cores(self) -> list[Core]:
        """The cores asked for plus those the devices' estimates need, each once."""
        names = [c.name for c in self.cores] + self.device_cores
        return [CORES[name] for name in dict.fromkeys(names)]


def model_input(model: Path) -> tuple[np.ndarray, str]:
    """A real held-out photo prepared as the model expects (preprocess.json beside it, else ImageNet mean/std)."""
    info = inspect_tflite(model).inputs[0]
    mean, std, source = normalization_beside(model)
    photo = heldout_photos()[0]
    x = normalize(heldout_batch([photo], tuple(info.shape[1:3])), mean, std)
    if info.dtype != "float32":
        x = quantize(x, info)
    return x, f"held-out photo {photo.path.name}, normalized with {source}, {info.dtype}"


def host_output(model: Path, x: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_path=str(model), num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def compare_outputs(arm: np.ndarray, x86: np.ndarray, dynamic_range: bool = False) -> dict:
    """Integer outputs must be bit-identical; float outputs equal within FP32_RTOL of the output range, or, from a
    file with dynamic-range layers (`dynamic_range`), at least DYNAMIC_RANGE_MIN_SQNR_DB apart."""
    if arm.dtype != x86.dtype or arm.shape != x86.shape:
        return {
            "match": False,
            "rule": "same dtype and shape",
            "detail": f"{arm.dtype}{arm.shape} vs {x86.dtype}{x86.shape}",
        }
    if np.issubdtype(x86.dtype, np.integer):
        differing = int(np.count_nonzero(arm != x86))
        return {"match": differing == 0, "rule": "bit-exact", "differing_elements": differing}
    max_diff = float(np.max(np.abs(arm.astype(np.float64) - x86)))
    if dynamic_range:
        sqnr = float(sqnr_db(x86, arm))
        rule = f"SQNR of arm against x86 >= {DYNAMIC_RANGE_MIN_SQNR_DB:g} dB (dynamic-range layers)"
        return {"match": sqnr >= DYNAMIC_RANGE_MIN_SQNR_DB, "rule": rule, "sqnr_db": sqnr, "max_abs_diff": max_diff}
    limit = FP32_RTOL * max(1.0, float(np.max(np.abs(x86))))
    return {"match": max_diff <= limit, "rule": f"max |arm - x86| <= {limit:.3g}", "max_abs_diff": max_diff}


def _emulated_litert(request: ProfileRequest) -> str:
    if not request.emulated_cores or request.arm_cache is None:
        return "not used (no emulated cores)"
    return emulated_litert(request.arm_cache)


def _qemu_version() -> str:
    try:
        return subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "not installed"


def profile_model(model: Path, request: ProfileRequest) -> dict:
    """Every requested measurement of one model, as a JSON-ready dict."""
    summary = inspect_tflite(model)
    x, input_desc = model_input(model)
    result = {
        "model": model.name,
        "sha256": sha256_file(model),
        "size_bytes": summary.size_bytes,
        "macs": multiply_accumulates(read_model(model)),
        "input": input_desc,
        "input_sha256": sha256_array(x),
        "host": [],
        "arm": [],
        "device": None,
        "estimates": [],
    }
    if request.host:
        result["host"] = [measure_host(model, x, t, request.warmups, request.runs).as_dict() for t in request.threads]
    cycles, traffic = {}, {}
    if request.emulated_cores:
        env = find_environment(request.arm_cache)
        llvm = find_llvm(request.arm_cache)
        reference = host_output(model, x)
        for core in request.emulated_cores:
            caches = core.name in request.device_cores
            run = run_emulated(model, x, core, env, llvm, caches=caches, runs=max(request.arm_runs, 1 + caches))
            cycles[core.name], traffic[core.name] = run.cycles, run.traffic
            check = compare_outputs(run.output, reference, has_dynamic_range_layers(model))
            result["arm"].append(
                {
                    "core": core.name,
                    "qemu_cpu": core.qemu_cpu,
                    "cpuinfo_part": core.part,
                    "instructions_per_inference": run.instructions[0],
                    "counted_runs": run.instructions,
                    "spread": run.spread,
                    "families": run.families,
                    "top_symbols": [[name, count] for name, count in run.top_symbols],
                    "cycles": run.cycles.as_dict(),
                    "cache_traffic": run.traffic.as_dict() if run.traffic else None,
                    "output_check": check,
                }
            )
    if request.adb:
        result["device"] = _device_result(model, request)
    measured = dict(request.measured_ms)
    if result["device"] and result["device"]["status"] == "measured":
        measured.update({r["threads"]: r["inference_avg_us"] / 1000 for r in result["device"]["runs"]})
    overhead = thread_overhead()
    if measured and len(request.devices) == 1:
        (named,) = request.devices
        record(
            named.name,
            [
                {
                    "model": model.name,
                    "sha256": result["sha256"],
                    "threads": threads,
                    "measured_ms": ms,
                    "model_ms": estimate(named, cycles, traffic, threads, overhead=overhead).model_ms,
                }
                for threads, ms in measured.items()
            ],
        )
    for named in request.devices:
        stored = correction(named.name)
        factor, source = (stored[0], f"your {stored[1]} measurement(s)") if stored else (calibration(), "published")
        for threads in request.estimate_threads:
            row = estimate(named, cycles, traffic, threads, factor, overhead).as_dict()
            row["factor"], row["factor_from"] = factor, source
            if threads in measured and len(request.devices) == 1:
                row["measured_ms"] = measured[threads]
            result["estimates"].append(row)
    return result


def _device_result(model: Path, request: ProfileRequest) -> dict:
    if request.benchmark_binary is not None and not request.benchmark_binary.is_file():
        raise device.DeviceError(
            f"benchmark binary not found: {request.benchmark_binary} "
            "(build TFLite's benchmark_model for the device and pass its path)"
        )
    serials = device.attached_devices()
    if request.serial:
        serials = [s for s in serials if s == request.serial]
    if not serials:
        which = f"device {request.serial}" if request.serial else "Android device"
        return {"status": f"not measured: no {which} attached"}
    if request.benchmark_binary is None:
        raise device.DeviceError("--adb needs --benchmark-binary PATH (TFLite's benchmark_model built for the device)")
    return {
        "status": "measured",
        "runs": [
            device.run_on_device(model, request.benchmark_binary, serials[0], t, request.warmups, request.runs)
            for t in request.threads
        ],
    }


def profile_models(models: list[Path], request: ProfileRequest) -> dict:
    """Profile every model; the summary gives the int8/fp32 instruction ratio per core when both are present."""
    results = [profile_model(m, request) for m in models]
    ratios: dict[str, dict[str, float]] = {}
    by_name = {r["model"].removesuffix(".tflite"): r for r in results}
    for name, int8 in by_name.items():
        fp32 = by_name.get(name.removesuffix("_int8") + "_fp32") if name.endswith("_int8") else None
        if fp32 is not None:
            ratios[name.removesuffix("_int8")] = {
                a["core"]: a["instructions_per_inference"] / b["instructions_per_inference"]
                for a, b in zip(int8["arm"], fp32["arm"])
                if a["core"] == b["core"]
            }
    return {
        "versions": {
            **tool_versions(),
            "qemu": _qemu_version(),
            "ai-edge-litert (emulated ARM runs)": _emulated_litert(request),
        },
        "estimate_note": estimate_note(),
        "note": "ARM figures are instructions executed by an emulated CPU (qemu), not time; "
        "host figures are wall time on this machine's CPU; device figures come from benchmark_model",
        "int8_over_fp32_instructions": ratios,
        "models": results,
    }
