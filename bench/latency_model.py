"""The millisecond estimate against published latencies, and the zoo's speed ranking against the ShuffleNet V2 paper.

Every figure in bench/published_latencies.json names a device, a zoo model, a data type, a thread count, the
milliseconds measured and where they were published. For each, the zoo model is exported once (random weights:
the speed does not depend on them; float32 and full int8), emulated on the device's cores (instructions per
block, llvm-mca cycles), and estimated with profiling.estimate. The error is estimate / published - 1, raw and
with the two constants the profile applies (the thread overhead and one factor), each fitted on the other figures
(leave-one-out). The ranking check compares the estimated speeds of the models the ShuffleNet V2
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
from mobile_vision_export.models.weights import sha256_file  # noqa: E402
from mobile_vision_export.profiling.arm_setup import default_cache  # noqa: E402
from mobile_vision_export.profiling.cores import CORES  # noqa: E402
from mobile_vision_export.profiling.cycles import CycleCount, find_llvm  # noqa: E402
from mobile_vision_export.profiling.devices import DEVICES  # noqa: E402
from mobile_vision_export.profiling.emulated import find_environment, run_emulated  # noqa: E402
from mobile_vision_export.profiling.estimate import Estimate, estimate  # noqa: E402
from mobile_vision_export.profiling.run import model_input  # noqa: E402
from mobile_vision_export.profiling.traffic import CacheTraffic  # noqa: E402

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


def emulate(model: Path, core: str, work: Path) -> tuple[CycleCount, CacheTraffic]:
    """llvm-mca cycles and simulated cache traffic of one emulated inference, cached by the file's hash."""
    cache_file = work / "emulated.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    key = f"{sha256_file(model)}:{core}"
    if key not in cache:
        print(f"emulating {model.name} on {core}", file=sys.stderr)
        arm = default_cache()
        x, _ = model_input(model)
        run = run_emulated(model, x, CORES[core], find_environment(arm), find_llvm(arm), caches=True, runs=2)
        cache[key] = {"cycles": run.cycles.__dict__, "traffic": run.traffic.__dict__}
        write_text_atomic(cache_file, json.dumps(cache, indent=1) + "\n")
    return CycleCount(**cache[key]["cycles"]), CacheTraffic(**cache[key]["traffic"])


def _estimate(device_name: str, model: Path, threads: int, work: Path) -> Estimate:
    device = DEVICES[device_name]
    runs = {core: emulate(model, core, work) for core in device.cores(threads)}
    return estimate(device, {c: r[0] for c, r in runs.items()}, {c: r[1] for c, r in runs.items()}, threads)


def _row(fig: dict, work: Path) -> dict:
    est = _estimate(fig["device"], export(fig["model"], work)[fig["dtype"]], fig["threads"], work)
    error = est.milliseconds / fig["ms"] - 1
    print(
        f"{fig['runtime']:<18} {fig['device']:<16} {fig['model']:<13} {fig['dtype']:<4} {fig['threads']} thr  "
        f"published {fig['ms']:6.1f} ms  estimated {est.milliseconds:6.1f} ms  error {error:+.0%}"
    )
    return {**fig, "estimated_ms": est.milliseconds, "compute_ms": est.compute_ms, "error": error}


def thread_pairs(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(one-thread figure, several-thread figure) of the same device, model, data type and runtime."""
    same = ("device", "model", "dtype", "runtime")
    ones = {tuple(r[k] for k in same): r for r in rows if r["threads"] == 1}
    return [(ones[key], r) for r in rows if r["threads"] > 1 and (key := tuple(r[k] for k in same)) in ones]


def with_overhead(row: dict, overhead: float) -> float:
    """The cycle model's milliseconds for a figure, each thread beyond the first adding `overhead` (as
    profiling.estimate does; the threads a figure used are all on cores of one kind here)."""
    return row["estimated_ms"] * (1 + (row["threads"] - 1) * overhead)


def fit_overhead(pairs: list[tuple[dict, dict]]) -> float:
    """The mean, over the pairs, of the several-thread figure's time beyond the model's scaling, per added thread."""
    if not pairs:
        return 0.0
    excess = [(b["ms"] / a["ms"]) / (b["estimated_ms"] / a["estimated_ms"]) - 1 for a, b in pairs]
    return float(np.mean([e / (b["threads"] - 1) for e, (_, b) in zip(excess, pairs)]))


def fit_factor(rows: list[dict], overhead: float) -> float:
    """published / modelled, the geometric mean over `rows`."""
    return float(np.exp(np.mean([np.log(r["ms"] / with_overhead(r, overhead)) for r in rows])))


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latency_model.json")
    args = p.parse_args()
    published = json.loads(PUBLISHED.read_text())
    rows = [_row(fig, args.work) for fig in published["figures"]]
    older = [_row(fig, args.work) for fig in published.get("older_runtime", [])]
    # two constants, each figure judged with both fitted on the others: the thread overhead from same-phone pairs of
    # one- and several-thread figures (their speed-up against the model's), then one factor, published / modelled
    pairs = thread_pairs(rows)
    for i, row in enumerate(rows):
        others = [r for j, r in enumerate(rows) if j != i]
        overhead = fit_overhead([(a, b) for a, b in pairs if row not in (a, b)])
        factor = fit_factor(others, overhead)
        row["loo_overhead"], row["loo_factor"] = overhead, factor
        row["loo_error"] = factor * with_overhead(row, overhead) / row["ms"] - 1
    raw, loo = np.abs([r["error"] for r in rows]), np.abs([r["loo_error"] for r in rows])
    overhead = fit_overhead(pairs)
    summary = {
        "figures": len(rows),
        "thread_overhead": overhead,
        "thread_pairs": len(pairs),
        "calibration": fit_factor(rows, overhead),
        "loo_median_abs_error": float(np.median(loo)),
        "loo_worst_abs_error": float(loo.max()),
        "uncalibrated_median_abs_error": float(np.median(raw)),
        "uncalibrated_worst_abs_error": float(raw.max()),
    }
    for row in rows:
        print(
            f"  {row['device']:<16} {row['model']:<13} {row['dtype']:<4} {row['threads']} thr  "
            f"leave-one-out: +{row['loo_overhead']:.1%} a thread, x{row['loo_factor']:.2f} -> error "
            f"{row['loo_error']:+.0%}"
        )
    if older:
        summary["older_runtime_figures"] = len(older)
        summary["older_runtime_median_error"] = float(
            np.median([summary["calibration"] * with_overhead(r, overhead) / r["ms"] - 1 for r in older])
        )
    ranking = published.get("shufflenet_v2_paper_arm")
    if ranking:
        names = [m["model"] for m in ranking["models"]]
        paper_ms = [m["ms"] for m in ranking["models"]]
        estimated = []
        for name in names:
            model = export(name, args.work)["fp32"]
            estimated.append(_estimate(ranking["device"], model, ranking["threads"], args.work).milliseconds)
        summary["shufflenet_v2_paper_spearman"] = spearman(paper_ms, estimated)
        summary["shufflenet_v2_paper_models"] = len(names)
        for name, ms, est in zip(names, paper_ms, estimated):
            print(f"ShuffleNet V2 paper, {ranking['device']}: {name:<20} paper {ms:6.1f} ms  estimated {est:6.1f} ms")
    print(
        f"{summary['figures']} published figures: uncalibrated median |error| "
        f"{summary['uncalibrated_median_abs_error']:.0%} (worst {summary['uncalibrated_worst_abs_error']:.0%}); "
        f"+{overhead:.1%} a thread, x{summary['calibration']:.2f}, leave-one-out median |error| "
        f"{summary['loo_median_abs_error']:.0%} "
        f"(worst {summary['loo_worst_abs_error']:.0%})"
        + (f"; ShuffleNet V2 paper ranking Spearman {summary['shufflenet_v2_paper_spearman']:.2f}" if ranking else "")
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"older TFLite kernels ({len(older)} figures, not counted): median error "
        f"{summary.get('older_runtime_median_error', float('nan')):+.0%}"
    )
    record = {"versions": tool_versions(), "summary": summary, "rows": rows, "older_runtime": older}
    write_text_atomic(args.out, json.dumps(record, indent=1))
    write_text_atomic(CHECK, json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
