"""What the int8 fallback can buy under a size and speed budget (`--min-top1`, `--min-sqnr`), in one run.

Exports mobilenet_v2 (ImageNet) with --quant all (for the int8 file's float twin), then writes its int8 file with
the last N layers on float activations, in each form the fallback has: dynamic-range (the layers keep their int8
weights) and float (the float twin's weights, stored as float16). Each file against ONNX Runtime on the
unmodified simplified ONNX, on the natural held-out photos and on the built-in calibration photos no calibration
crop comes from (the fallback chooses its steps on these): SQNR, top-1 agreement counted and expected
(validate.metrics.expected_agreement); its bytes and emulated Cortex-A76 instructions per inference (when
`mve-arm-setup` has run) against the int8 file's.
Usage: python bench/fallback_frontier.py [--tails 4,8,16,32,64] [--out bench/results/fallback_frontier.json]
  [--export DIR]  (an existing `--quant all` export folder of mobilenet_v2 ImageNet instead of a new one)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from accuracy import WEIGHTS, a76_instructions, export, set_figures  # noqa: E402  (bench/, the script's folder)

from mobile_vision_export.export import images as imgs  # noqa: E402
from mobile_vision_export.export.files import write_text_atomic  # noqa: E402
from mobile_vision_export.export.provenance import tool_versions  # noqa: E402
from mobile_vision_export.export.tflite_inspect import op_outputs, paired_layers  # noqa: E402
from mobile_vision_export.export.tflite_model import BIASED_OPS  # noqa: E402
from mobile_vision_export.int8.fallback import fall_back  # noqa: E402
from mobile_vision_export.pipeline.request import CALIBRATION_CROPS  # noqa: E402
from mobile_vision_export.profiling.arm_setup import default_cache  # noqa: E402
from mobile_vision_export.profiling.emulated import EmulationError, find_environment  # noqa: E402
from mobile_vision_export.validate.runners import run_onnx, run_tflite  # noqa: E402

MODEL = "mobilenet_v2"  # with its ImageNet weights (accuracy.WEIGHTS)
FORMS = ("dynamic-range", "float")


def _photo_sets(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each photo set's normalized images and ONNX Runtime's outputs on them."""
    contract = json.loads((folder / "preprocess.json").read_text())
    size, mean, std = contract["input_size"], contract["mean"], contract["std"]
    natural = imgs.natural_photo_dir()
    photos = {
        "natural_full_resolution": [p for p in imgs.heldout_photos() if p.path.parent == natural],
        "unread_calibration": imgs.unread_photos(imgs.calibration_photos(), CALIBRATION_CROPS),
    }
    sets = {}
    for name, chosen in photos.items():
        x = imgs.normalize(imgs.heldout_batch(chosen, size), mean, std)
        sets[name] = x, run_onnx(folder / f"{MODEL}_simplified.onnx", np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return sets


def _figures(path: Path, sets: dict, arm) -> dict:
    by_set = {name: set_figures(reference, run_tflite(path, x)) for name, (x, reference) in sets.items()}
    return {"bytes": path.stat().st_size, "by_set": by_set, "a76_instructions": a76_instructions(path, arm)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tails", default="4,8,16,32,64")
    parser.add_argument("--export", type=Path, help="an existing --quant all export folder of mobilenet_v2 ImageNet")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fallback_frontier.json")
    args = parser.parse_args()
    try:
        arm = find_environment(default_cache())
    except EmulationError as exc:
        print(f"no emulated A76 figures: {exc}")
        arm = None
    with tempfile.TemporaryDirectory(prefix="mve-frontier-") as tmp:
        folder = args.export or export(MODEL, "all", [], Path(tmp))
        int8, twin = folder / f"{MODEL}_int8.tflite", folder / f"{MODEL}_int8_float_twin.tflite"
        sets = _photo_sets(folder)
        paired = sorted(pair[0] for pair in paired_layers(twin, int8))
        weighted = {i for i, (kind, *_) in enumerate(op_outputs(int8)) if kind in BIASED_OPS}
        rows = {"int8": _figures(int8, sets, arm)}
        base = rows["int8"]
        for length in (int(n) for n in args.tails.split(",")):
            tail = set(paired[-length:])
            for form in FORMS:
                dst = Path(tmp) / f"tail{length}_{form}.tflite"
                fall_back(int8, twin, tail, dst, dynamic=tail & weighted if form == "dynamic-range" else set())
                rows[f"last {length} layers, {form}"] = _figures(dst, sets, arm)
    print(f"{MODEL} ({WEIGHTS[MODEL]}): int8 file with its last layers on float activations")
    for name, row in rows.items():
        row["size_ratio"] = row["bytes"] / base["bytes"]
        row["a76_ratio"] = row["a76_instructions"] / base["a76_instructions"] if arm else None
        a76 = "-" if row["a76_ratio"] is None else f"x{row['a76_ratio']:.3f}"
        sets_line = "  ".join(
            f"{set_name} ({s['photos']}): {s['sqnr_db']:5.2f} dB, agree {s['top1_agreement']:.1%} "
            f"(expected {s['expected_agreement']:.1%})"
            for set_name, s in row["by_set"].items()
        )
        print(f"  {name:32s} size x{row['size_ratio']:.3f}  A76 {a76}  {sets_line}")
    payload = {"host": platform.processor() or platform.machine(), "versions": tool_versions(), "files": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
