"""Host latency and emulated ARM instructions per inference, fp32 and int8, for shufflenet_v2_x0_5 and mobilenet_v2.

Exports both models (mobilenet_v2 with its ImageNet weights) unless --artifacts points at earlier exports, then
profiles each fp32 and int8 file on the host (1 and 2 threads) and on emulated Cortex-A53, A55 and A76.
ARM figures are emulated instruction counts, not time. Usage: python bench/profile.py [--artifacts DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mobile_vision_export.export.files import write_text_atomic  # noqa: E402
from mobile_vision_export.profiling.arm_setup import default_cache, setup  # noqa: E402
from mobile_vision_export.profiling.cores import parse_cores  # noqa: E402
from mobile_vision_export.profiling.run import ProfileRequest, profile_models  # noqa: E402

MODELS = {"shufflenet_v2_x0_5": [], "mobilenet_v2": ["--weights", "imagenet"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=ROOT / "bench" / "results" / "artifacts")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "profile.json")
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    setup(default_cache())
    request = ProfileRequest(
        host=True,
        cores=parse_cores("a53,a55,a76"),
        threads=[1, 2],
        warmups=20,
        runs=args.runs,
        arm_runs=3,
        arm_cache=default_cache(),
    )
    results = {}
    for name, extra in MODELS.items():
        folder = args.artifacts / name
        files = [folder / f"{name}_{v}.tflite" for v in ("fp32", "int8")]
        if not all(f.is_file() for f in files):
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pipeline.export",
                    "--model",
                    name,
                    *extra,
                    "--quant",
                    "all",
                    "--out",
                    str(args.artifacts),
                ],
                cwd=ROOT,
                check=True,
            )
        results[name] = profile_models(files, request)
        print(f"\n{name}")
        for model in results[name]["models"]:
            for h in model["host"]:
                print(
                    f"  {model['model']:<32} host {h['threads']} thread(s): median {h['median_ms']:.2f} ms, "
                    f"p90 {h['p90_ms']:.2f} ms"
                )
            for a in model["arm"]:
                split = ", ".join(f"{k} {v / a['instructions_per_inference']:.1%}" for k, v in a["families"].items())
                print(
                    f"  {model['model']:<32} {a['core']}: {a['instructions_per_inference'] / 1e6:.2f} M emulated "
                    f"instructions (spread {a['spread']:.4%}; {split}); output {a['output_check']['rule']}: "
                    f"{'ok' if a['output_check']['match'] else 'MISMATCH'}"
                )
        ratios = ", ".join(f"{c} {r:.2f}" for c, r in results[name]["int8_over_fp32_instructions"][name].items())
        print(f"  int8/fp32 emulated instructions: {ratios}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
