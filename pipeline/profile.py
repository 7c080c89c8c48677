"""python -m pipeline.profile: latency on the host, emulated ARM instruction counts and estimated milliseconds on
named devices, real devices over adb."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mobile_vision_export.errors import UserError
from mobile_vision_export.export.files import write_text_atomic
from mobile_vision_export.export.tflite_inspect import NotTfliteError
from mobile_vision_export.pipeline.arguments import positive_int
from mobile_vision_export.pipeline.cli import Parser, add_common_flags, prog_name, run_command
from mobile_vision_export.profiling.arm_setup import default_cache
from mobile_vision_export.profiling.cores import parse_cores
from mobile_vision_export.profiling.devices import DEVICES, parse_devices
from mobile_vision_export.profiling.run import ProfileRequest, profile_models
from mobile_vision_export.report.document import read_report
from mobile_vision_export.report.profile import SECTION, profile_figures, render_profile


def _threads(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected thread counts like 1,2, got '{text}'")
    return values


def _measured(text: str) -> dict[int, float]:
    try:
        pairs = [part.split(":") for part in text.split(",")]
        values = {int(t): float(ms) for t, ms in pairs}
    except ValueError:
        values = {}
    if not values or min(values) < 1 or not all(0 < ms < float("inf") for ms in values.values()):
        raise argparse.ArgumentTypeError(f"expected THREADS:MS pairs like 1:12.5,4:4.1, got '{text}'")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=prog_name("python -m pipeline.profile"), description=__doc__)
    add_common_flags(p)
    p.add_argument("models", nargs="+", type=Path, help=".tflite files")
    p.add_argument("--host", action="store_true", help="host latency (the default when nothing else is chosen)")
    p.add_argument("--arm", help="emulated cores, e.g. a53,a55,a76 (needs 'mve-arm-setup')")
    p.add_argument("--threads", type=_threads, default=[1, 2], help="host and device thread counts (default 1,2)")
    p.add_argument("--warmups", type=positive_int, default=10, help="warm-up inferences before timing (default 10)")
    p.add_argument("--runs", type=positive_int, default=50, help="timed inferences (default 50)")
    p.add_argument(
        "--device",
        help=f"estimated milliseconds on named devices, e.g. pixel-4 (choose from {', '.join(DEVICES)}; "
        "emulates their cores, needs 'mve-arm-setup')",
    )
    p.add_argument(
        "--estimate-threads",
        type=_threads,
        default=[1, 4],
        help="thread counts for the device estimates (default 1,4)",
    )
    p.add_argument(
        "--measured",
        type=_measured,
        help="with one --device and one model: milliseconds you measured on that device, THREADS:MS[,THREADS:MS]; "
        "stored, they replace the published calibration for that device's estimates",
    )
    p.add_argument("--arm-runs", type=positive_int, default=3, help="counted emulated inferences per core (default 3)")
    p.add_argument("--arm-cache", type=Path, default=default_cache(), help="ARM set-up folder (default %(default)s)")
    p.add_argument("--adb", action="store_true", help="also run on an attached Android device")
    p.add_argument("--serial", help="adb serial of the device to use")
    p.add_argument("--benchmark-binary", type=Path, help="TFLite benchmark_model built for the device")
    p.add_argument("--out", type=Path, help="folder for profile.json (default: beside the first model)")
    return p


def run(models: list[Path], request: ProfileRequest, out_dir: Path) -> dict:
    """Profile `models`, write profile.json in `out_dir` and the profile section of its report (report.md and
    report.html)."""
    for model in models:
        if not model.is_file():
            raise NotTfliteError(f"model not found: {model}")
    data = profile_models(models, request)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "profile.json", json.dumps(data, indent=2) + "\n")
    read_report(out_dir).with_section(SECTION, render_profile(data), profile_figures(data)).write(out_dir)
    return data


def main(argv: list[str] | None = None) -> int:
    """Ctrl-C or SIGTERM: one `error: interrupted` line and exit 130/143 instead of a traceback."""
    return run_command(
        lambda: _main(argv), argv, "stopped profiling (and the runs it had started) before writing profile.json"
    )


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cores = parse_cores(args.arm) if args.arm else []
        devices = parse_devices(args.device) if args.device else []
        if args.measured and (len(devices) != 1 or len(args.models) != 1):
            raise UserError("--measured goes with one --device and one model: the device and file you timed")
        request = ProfileRequest(
            host=args.host or not (cores or devices or args.adb),
            cores=cores,
            devices=devices,
            estimate_threads=tuple(args.estimate_threads),
            measured_ms=args.measured or {},
            threads=args.threads,
            warmups=args.warmups,
            runs=args.runs,
            arm_runs=args.arm_runs,
            adb=args.adb,
            serial=args.serial,
            benchmark_binary=args.benchmark_binary,
            arm_cache=args.arm_cache,
        )
        data = run(args.models, request, args.out or args.models[0].parent)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render_profile(data))
    failed = [
        f"{m['model']} on {a['core']}" for m in data["models"] for a in m["arm"] if not a["output_check"]["match"]
    ]
    if failed:
        print(f"error: emulated ARM output differs from x86 for {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
