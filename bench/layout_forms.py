"""Three forms of ShuffleNet V2's channel shuffle in TFLite, measured in one run.

- island: what onnx2tf writes (NHWC -> NCHW TRANSPOSE, 5-D RESHAPE/TRANSPOSE/RESHAPE, TRANSPOSEs back);
- nhwc: the same graph after export/layout_pass.py with nhwc_shuffles=True (one 5-D TRANSPOSE per shuffle);
- gather: the ONNX shuffle replaced by one Gather on the channel axis before conversion (one GATHER per shuffle).
For shufflenet_v2_x0_5 fp32 and int8: op counts, host median latency (1 thread), emulated Cortex-A76 and A53
instructions per inference (not time), and whether outputs equal the island form's.
Usage: python bench/layout_forms.py [--artifacts DIR] [--out bench/results/layout_forms.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mobile_vision_export.export.files import write_text_atomic  # noqa: E402
from mobile_vision_export.export.images import calibration_batch, calibration_photos  # noqa: E402
from mobile_vision_export.export.layout_pass import rewrite_layout  # noqa: E402
from mobile_vision_export.export.onnx_graph import describe_onnx  # noqa: E402
from mobile_vision_export.export.provenance import tool_versions  # noqa: E402
from mobile_vision_export.export.tflite_convert import convert_tflite  # noqa: E402
from mobile_vision_export.export.tflite_inspect import inspect_tflite  # noqa: E402
from mobile_vision_export.models import get_spec  # noqa: E402
from mobile_vision_export.profiling.arm_setup import default_cache, setup  # noqa: E402
from mobile_vision_export.profiling.cores import CORES  # noqa: E402
from mobile_vision_export.profiling.emulated import find_environment, run_emulated  # noqa: E402
from mobile_vision_export.profiling.host import measure_host  # noqa: E402
from mobile_vision_export.profiling.run import host_output, model_input  # noqa: E402

MODEL = "shufflenet_v2_x0_5"


def shuffles_to_gather(src: Path, dst: Path) -> int:
    """Replace each Reshape(1,g,C/g,H,W) -> Transpose(0,2,1,3,4) -> Reshape(1,C,H,W) with Gather(axis=1)."""
    model = onnx.load(str(src))
    graph = model.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    replace, drop = {}, set()
    for node in graph.node:
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        if node.op_type != "Transpose" or perm != [0, 2, 1, 3, 4]:
            continue
        first, after = producer.get(node.input[0]), consumers.get(node.output[0], [])
        if first is None or first.op_type != "Reshape" or len(after) != 1 or after[0].op_type != "Reshape":
            continue
        _, groups, per_group, _, _ = constants[first.input[1]]
        index = np.array([(k % groups) * per_group + k // groups for k in range(groups * per_group)], np.int64)
        name = f"channel_shuffle_index_{len(replace)}"
        graph.initializer.append(numpy_helper.from_array(index, name))
        replace[id(first)] = helper.make_node("Gather", [first.input[0], name], [after[0].output[0]], axis=1)
        drop |= {id(node), id(after[0])}
    nodes = [replace.get(id(n), n) for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return len(replace)


def measure(path: Path, env, reference: np.ndarray | None) -> tuple[dict, np.ndarray]:
    x, _ = model_input(path)
    ops = inspect_tflite(path).ops
    row = {"ops": sum(ops.values()), **{op: ops.get(op, 0) for op in ("TRANSPOSE", "GATHER", "RESHAPE")}}
    row["host_median_ms"] = measure_host(path, x, threads=1, warmups=20, runs=200).median_ms
    for core in ("a76", "a53"):
        row[f"{core}_instructions"] = run_emulated(path, x, CORES[core], env, runs=1).instructions[0]
    output = host_output(path, x)
    row["outputs_equal_island"] = None if reference is None else bool(np.array_equal(output, reference))
    if reference is not None and not row["outputs_equal_island"]:
        row["max_abs_diff_vs_island"] = float(np.max(np.abs(output.astype(np.float64) - reference)))
    return row, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=ROOT / "bench" / "results" / "artifacts_no_optimize")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "layout_forms.json")
    args = parser.parse_args()
    setup(default_cache())
    env = find_environment(default_cache())
    folder = args.artifacts / MODEL
    if not (folder / f"{MODEL}_int8.tflite").is_file() or not (folder / f"{MODEL}_fp32.tflite").is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.export",
                "--model",
                MODEL,
                "--quant",
                "all",
                "--no-optimize",
                "--out",
                str(args.artifacts),
            ],
            cwd=ROOT,
            check=True,
        )
    work = args.artifacts / f"{MODEL}_layout_forms"
    work.mkdir(parents=True, exist_ok=True)
    gather_onnx = work / f"{MODEL}_gather.onnx"
    count = shuffles_to_gather(folder / f"{MODEL}_simplified.onnx", gather_onnx)
    spec = get_spec(MODEL)
    calib = calibration_batch(calibration_photos(), spec.input_size, 100)
    gather = convert_tflite(describe_onnx(gather_onnx), work / "gather", ["fp32", "int8"], calib, spec.mean, spec.std)
    results = {"model": MODEL, "versions": tool_versions(), "shuffles_rewritten_to_gather": count, "forms": {}}
    for mode in ("fp32", "int8"):
        island = folder / f"{MODEL}_{mode}.tflite"
        nhwc = work / f"{MODEL}_{mode}_nhwc.tflite"
        rewrite_layout(island, nhwc, nhwc_shuffles=True)
        island_row, reference = measure(island, env, None)
        rows = {"island": island_row}
        rows["nhwc"], _ = measure(nhwc, env, reference)
        rows["gather"], _ = measure(gather.files[mode], env, reference)
        for name, row in rows.items():
            for key in ("host_median_ms", "a76_instructions", "a53_instructions"):
                row[f"{key}_ratio_to_island"] = row[key] / island_row[key]
        results["forms"][mode] = rows
        print(f"\n{MODEL} {mode}")
        for name, row in rows.items():
            print(
                f"  {name:<7} ops {row['ops']:>3} TRANSPOSE {row['TRANSPOSE']:>2} GATHER {row['GATHER']:>2} "
                f"RESHAPE {row['RESHAPE']:>2} | host {row['host_median_ms']:.2f} ms "
                f"({row['host_median_ms_ratio_to_island']:.2f}x) | A76 {row['a76_instructions'] / 1e6:.2f} M "
                f"({row['a76_instructions_ratio_to_island']:.3f}x) | A53 {row['a53_instructions'] / 1e6:.2f} M "
                f"({row['a53_instructions_ratio_to_island']:.3f}x) | same outputs: {row['outputs_equal_island']}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
