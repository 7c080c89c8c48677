"""The millisecond estimate against published latencies, and the zoo's speed ranking against the ShuffleNet V2 paper.

Every figure in bench/published_latencies.json names a device, a zoo model, a data type, a thread count, the
milliseconds measured and where they were published. For each, the zoo model is exported once (random weights:
the speed does not depend on them; float32 and full int8), emulated on the device's cores (instructions per
block, llvm-mca cycles), and estimated with profiling.estimate; nothing is fitted on the figures. The error is
estimate / published - 1. The ranking check compares the estimated speeds of the models the ShuffleNet V2
paper measured on ARM with the paper's order (Spearman). Writes the figures to --out and the summary the
profile prints beside every estimate to profiling/estimate_check.json.
Usage: python bench/latency_model.py [--work bench/work] [--out bench/results/latency_model.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mobile_vision_export.export.files import write_text_atomic  # noqa: E402
from mobile_vision_export.export.provenance import tool_versions  # noqa: E402
from mobile_vision_export.export.tflite_inspect import op_traffic  # noqa: E402
from mobile_vision_export.models.weights import sha256_file  # noqa: E402
from mobile_vision_export.profiling.arm_setup import default_cache  # noqa: E402
from mobile_vision_export.profiling.cores import CORES  # noqa: E402
from mobile_vision_export.profiling.cycles import CycleCount, find_llvm  # noqa: E402
from mobile_vision_export.profiling.devices import DEVICES  # noqa: E402
from mobile_vision_export.profiling.emulated import find_environment, run_emulated  # noqa: E402
from mobile_vision_export.profiling.estimate import estimate  # noqa: E402
from mobile_vision_export.profiling.run import model_input  # noqa: E402

PUBLISHED = Path(__file__).resolve().parent / "published_latencies.json"
CHECK = ROOT / "profiling" / "estimate_check.json"
QUICK_INT8 = [
    "--no-tuning",
    "--no-fitted-rounding",
    "--no-bias-correction",
    "--no-equalize",
    "--no-percentile-ranges",
    "--calib-samples",
    "16",
]


def export(model: str, work: Path) -> dict[str, Path]:
    """The zoo model's float32 and int8 files, exported once into work/<dtype>/ (an export replaces its folder)."""
    files = {dtype: work / dtype / model / f"{model}_{dtype}.tflite" for dtype in ("fp32", "int8")}
    for dtype, path in files.items():
        if not path.is_file():
            print(f"exporting {model} {dtype}", file=sys.stderr)
            cmd = [sys.executable, "-m", "pipeline.export", "--model", model, "--quant", dtype]
            cmd += QUICK_INT8 if dtype == "int8" else []
            subprocess.run([*cmd, "--out", str(work / dtype)], check=True, capture_output=True)
    return files


def cycles_for(model: Path, core: str, work: Path) -> CycleCount:
    """llvm-mca cycles of one emulated inference, cached by the file's hash."""
    cache_file = work / "cycles.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    key = f"{sha256_file(model)}:{core}"
    if key not in cache:
        print(f"emulating {model.name} on {core}", file=sys.stderr)
        arm = default_cache()
        x, _ = model_input(model)
        run = run_emulated(model, x, CORES[core], find_environment(arm), find_llvm(arm), runs=1)
        cache[key] = run.cycles.__dict__
        write_text_atomic(cache_file, json.dumps(cache, indent=1) + "\n")
    return CycleCount(**cache[key])


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latency_model.json")
    args = p.parse_args()
    published = json.loads(PUBLISHED.read_text())
    rows = []
    for fig in published["figures"]:
        device = DEVICES[fig["device"]]
        model = export(fig["model"], args.work)[fig["dtype"]]
        cycles = {core: cycles_for(model, core, args.work) for core in device.cores}
        est = estimate(device, cycles, op_traffic(model), fig["threads"])
        rows.append({**fig, "estimated_ms": est.milliseconds, "error": est.milliseconds / fig["ms"] - 1})
        print(
            f"{fig['device']:<17} {fig['model']:<20} {fig['dtype']:<5} {fig['threads']} thr  published "
            f"{fig['ms']:7.1f} ms  estimated {est.milliseconds:7.1f} ms  error {rows[-1]['error']:+.0%}"
        )
    errors = np.abs([r["error"] for r in rows])
    summary = {
        "figures": len(rows),
        "median_abs_error": float(np.median(errors)),
        "worst_abs_error": float(errors.max()),
    }
    ranking = published.get("shufflenet_v2_paper_arm")
    if ranking:
        device = DEVICES[ranking["device"]]
        names = [m["model"] for m in ranking["models"]]
        paper_ms = [m["ms"] for m in ranking["models"]]
        estimated = []
        for name in names:
            model = export(name, args.work)["fp32"]
            cycles = {core: cycles_for(model, core, args.work) for core in device.cores}
            estimated.append(estimate(device, cycles, op_traffic(model), ranking["threads"]).milliseconds)
        summary["shufflenet_v2_paper_spearman"] = spearman(paper_ms, estimated)
        summary["shufflenet_v2_paper_models"] = len(names)
        for name, ms, est in zip(names, paper_ms, estimated):
            print(f"ShuffleNet V2 paper, {ranking['device']}: {name:<20} paper {ms:6.1f} ms  estimated {est:6.1f} ms")
    print(
        f"{summary['figures']} published figures: median |error| {summary['median_abs_error']:.0%}, "
        f"worst {summary['worst_abs_error']:.0%}"
        + (f"; ShuffleNet V2 paper ranking Spearman {summary['shufflenet_v2_paper_spearman']:.2f}" if ranking else "")
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps({"versions": tool_versions(), "summary": summary, "rows": rows}, indent=1))
    write_text_atomic(CHECK, json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
