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

from mobile_vision_export.export import images as imgs  # noqa: E402
from mobile_vision_export.export.files import write_text_atomic  # noqa: E402
from mobile_vision_export.export.onnx_graph import describe_onnx  # noqa: E402
from mobile_vision_export.export.provenance import tool_versions  # noqa: E402
from mobile_vision_export.export.tflite_convert import onnx2tf_args, write_onnx2tf_sample  # noqa: E402
from mobile_vision_export.models import get_spec  # noqa: E402
from mobile_vision_export.pipeline.request import CALIBRATION_CROPS  # noqa: E402

WEIGHTS = {"mobilenet_v2": "imagenet"}
RATIO_TARGET = {"int8": 1.0, "all": 1.3}


def _tree_rss(root: int) -> tuple[set[int], float]:
    """The processes of `root`'s tree and their summed resident memory (MiB), now (from /proc). Summed RSS counts a
    shared page (TensorFlow's libraries in two converters) once per process."""
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
    return tree, sum(rss.get(pid, 0) for pid in tree) / 2**20


def _tree_pss(pids: set[int]) -> float | None:
    """Summed PSS (MiB), which splits a shared page among the processes mapping it: the memory the tree takes from
    the machine. None when no process's smaps_rollup could be read."""
    values = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                values.append(sum(int(line.split()[1]) for line in rollup if line.startswith("Pss:")) / 1024)
        except (OSError, ValueError):
            continue  # exited meanwhile, or not readable
    return sum(values) if values else None


def timed(cmd: list[str], cwd: Path) -> dict:
    """Run `cmd`; return its wall seconds, the peak RSS of its largest process (wait4) and the peaks of its whole
    process tree at once, RSS and PSS (sampled every 0.2 s: converters running side by side add up). PSS is read
    only near the RSS peak: reading it walks every page table of the tree, which would slow the export down."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        tree_peak, tree_pss_peak = 0.0, None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            pids, rss = _tree_rss(proc.pid)
            if rss >= 0.95 * tree_peak and (pss := _tree_pss(pids)) is not None:
                tree_pss_peak = max(tree_pss_peak or 0.0, pss)
            tree_peak = max(tree_peak, rss)
            time.sleep(0.2)
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) not in (0, 1):  # 1: parity failed, still a complete export
            log.seek(0)
            raise RuntimeError(f"{' '.join(cmd[:4])} failed: {log.read()[-2000:]}")
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "peak_tree_rss_mib": round(tree_peak, 1),
        "peak_tree_pss_mib": None if tree_pss_peak is None else round(tree_pss_peak, 1),
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
                f"{r['export']['peak_tree_pss_mib'] or float('nan'):.0f}"
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
