"""The whole default export against onnx2tf -oiqt alone, on the same simplified ONNX and calibration data.

For each model and --quant mode: wall time and peak RSS of `python -m pipeline.export` (photos, ONNX, onnxsim,
conversion, int8 steps, metadata, parity, reports) and of `onnx2tf -oiqt` run by itself on the export's own
simplified ONNX with its calibration crops. Both in the same run, one after the other, so the ratio is what to read.
Usage: python bench/stages.py [--models a,b] [--quants int8,all] [--out bench/results/stages.json]
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export import images as imgs  # noqa: E402
from export.files import write_text_atomic  # noqa: E402
from export.onnx_stage import describe_onnx  # noqa: E402
from export.tflite_stage import onnx2tf_args, write_onnx2tf_sample  # noqa: E402
from models import get_spec  # noqa: E402
from pipeline.request import CALIBRATION_CROPS  # noqa: E402
from validate.report import tool_versions  # noqa: E402

WEIGHTS = {"mobilenet_v2": "imagenet"}
RATIO_TARGET = {"int8": 1.0, "all": 1.3}


def _tree_memory_mib(root: int) -> tuple[float, float]:
    """Resident memory of `root` and all its descendants, now (from /proc): summed RSS, which counts a shared page
    (TensorFlow's libraries in two converters) once per process, and summed PSS, which splits it among them, so
    it is the memory the tree takes from the machine."""
    parents, rss = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            parents[pid], rss[pid] = int(fields[1]), int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
    tree, frontier = {root}, [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    return sum(rss.get(pid, 0) for pid in tree) / 2**20, sum(_pss_bytes(pid) for pid in tree) / 2**20


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            return sum(int(line.split()[1]) * 1024 for line in rollup if line.startswith("Pss:"))
    except OSError:
        return 0  # exited meanwhile


def timed(cmd: list[str], cwd: Path) -> dict:
    """Run `cmd`; return its wall seconds, the peak RSS of its largest process (wait4) and the peaks of its whole
    process tree at once, RSS and PSS (sampled every 0.2 s: converters running side by side add up)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        tree_peak = tree_pss_peak = 0.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss, pss = _tree_memory_mib(proc.pid)
            tree_peak, tree_pss_peak = max(tree_peak, rss), max(tree_pss_peak, pss)
            time.sleep(0.2)
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) not in (0, 1):  # 1: parity failed, still a complete export
            log.seek(0)
            raise RuntimeError(f"{' '.join(cmd[:4])} failed: {log.read()[-2000:]}")
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "peak_tree_rss_mib": round(tree_peak, 1),
        "peak_tree_pss_mib": round(tree_pss_peak, 1),
    }


def measure(model: str, quant: str, work: Path) -> dict:
    export = [sys.executable, "-m", "pipeline.export", "--model", model, "--quant", quant, "--out", "out"]
    if model in WEIGHTS:
        export += ["--weights", WEIGHTS[model]]
    ours = timed(export, work)
    spec = get_spec(model)
    calib = imgs.calibration_batch(imgs.calibration_photos(), spec.input_size, CALIBRATION_CROPS)
    np_path = work / "calibration.npy"
    np.save(np_path, calib.astype(np.float32))
    write_onnx2tf_sample(work, calib)  # or onnx2tf would try to download it
    simplified = work / "out" / model / f"{model}_simplified.onnx"
    args = onnx2tf_args(describe_onnx(simplified), work / "onnx2tf", ["int8"], np_path, spec.mean, spec.std)
    alone = timed([sys.executable, "-m", "onnx2tf", *args], work)  # the export's own -oiqt flags, all 7 files
    return {
        "model": model,
        "quant": quant,
        "export": ours,
        "onnx2tf_oiqt_alone": alone,
        "ratio": round(ours["seconds"] / alone["seconds"], 2),
        "ratio_target": RATIO_TARGET[quant],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="shufflenet_v2_x0_5,mobilenet_v2")
    parser.add_argument("--quants", default="int8,all")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stages.json")
    args = parser.parse_args()
    rows = []
    memory = "MiB: RSS largest / tree RSS / tree PSS"
    print(f"{'model':<20} {'quant':<6} {'export s':>9} {'onnx2tf s':>10} {'ratio':>6} {memory:>40}")
    for model in args.models.split(","):
        for quant in args.quants.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                r = measure(model, quant, Path(tmp))
            rows.append(r)
            print(
                f"{model:<20} {quant:<6} {r['export']['seconds']:>9.1f} {r['onnx2tf_oiqt_alone']['seconds']:>10.1f} "
                f"{r['ratio']:>6.2f} {r['export']['peak_rss_mib']:>14.0f} / {r['export']['peak_tree_rss_mib']:.0f} / "
                f"{r['export']['peak_tree_pss_mib']:.0f}"
            )
    results = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "versions": tool_versions(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
