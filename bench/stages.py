"""Wall time and peak memory of each export stage, for shufflenet_v2_x0_5 and mobilenet_v2.

Each stage runs in its own Python process so its peak resident memory (max RSS, which includes the
libraries it imports and, for onnx2tf, the converter's own process) can be read with wait4().
Usage: python bench/stages.py [--models a,b] [--out bench/results/stages.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.files import write_text_atomic  # noqa: E402
from validate.report import tool_versions  # noqa: E402

STAGES = ("load_model", "onnx_export", "onnxsim", "onnx2tf_int8", "parity_int8")
WEIGHTS = {"mobilenet_v2": "imagenet"}


def run_stage(stage: str, model: str, work: Path) -> float:
    """Run one stage in this process, reading and writing files in `work`; return its wall seconds."""
    import numpy as np
    import torch

    from export import images as imgs
    from export.onnx_stage import describe_onnx, export_onnx, simplify_onnx
    from export.tflite_stage import convert_tflite
    from models import get_spec
    from pipeline.request import CALIBRATION_CROPS
    from pipeline.sources import calibrate_random_weights, from_registry
    from validate.parity import check_parity
    from validate.thresholds import DEFAULTS

    start = time.perf_counter()
    if stage in ("load_model", "onnx_export"):
        source = from_registry(model, WEIGHTS.get(model))
        if source.random_weights:
            calib = imgs.normalize(
                imgs.calibration_batch(imgs.calibration_photos(), source.input_size, CALIBRATION_CROPS),
                source.mean,
                source.std,
            )
            calibrate_random_weights(source, torch.from_numpy(np.ascontiguousarray(calib.transpose(0, 3, 1, 2))))
        if stage == "onnx_export":
            start = time.perf_counter()
            export_onnx(source.module, source.input_size, work / "model.onnx")
    elif stage == "onnxsim":
        simplify_onnx(describe_onnx(work / "model.onnx"), work / "model_sim.onnx")
    elif stage == "onnx2tf_int8":
        onnx_model = describe_onnx(work / "model_sim.onnx")
        calib = imgs.calibration_batch(imgs.calibration_photos(), onnx_model.input_size, CALIBRATION_CROPS)
        start = time.perf_counter()
        spec = get_spec(model)
        conversion = convert_tflite(onnx_model, work / "convert", ["int8"], calib, spec.mean, spec.std)
        conversion.files["int8"].rename(work / "model_int8.tflite")
    elif stage == "parity_int8":
        photos = imgs.heldout_photos()
        spec = get_spec(model)
        x = imgs.normalize(imgs.heldout_batch(photos, spec.input_size), spec.mean, spec.std)
        check_parity(
            work / "model_sim.onnx", {"int8": work / "model_int8.tflite"}, x, [p.label for p in photos], DEFAULTS
        )
    return time.perf_counter() - start


def measure(stage: str, model: str, work: Path) -> dict:
    """Run `stage` in a child process; return its stage seconds, process seconds and peak RSS."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", stage, model, str(work)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak RSS (and its waited-for children's)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"stage {stage} of {model} failed (exit {proc.returncode}): {err.read()[-2000:]}")
    return {
        "stage": stage,
        "stage_s": round(json.loads(out.strip().splitlines()[-1])["seconds"], 2),
        "process_s": round(time.perf_counter() - start, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="shufflenet_v2_x0_5,mobilenet_v2")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stages.json")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        stage, model, work = args.worker
        print(json.dumps({"seconds": run_stage(stage, model, Path(work))}))
        return
    results = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "versions": tool_versions(),
        "models": {},
    }
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            rows = [measure(stage, model, Path(tmp)) for stage in STAGES]
        results["models"][model] = rows
        print(f"\n{model}\n{'stage':<14} {'stage s':>8} {'process s':>10} {'peak RSS MiB':>13}")
        for r in rows:
            print(f"{r['stage']:<14} {r['stage_s']:>8.2f} {r['process_s']:>10.2f} {r['peak_rss_mib']:>13.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
