"""python -m pipeline.export: a PyTorch or ONNX vision model to validated, quantized TFLite files, offline."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

from rich.console import Console

from mobile_vision_export.errors import UserError
from mobile_vision_export.export.onnx_graph import BOX_FORMATS, SSD_SCALES, TASKS
from mobile_vision_export.export.reproducible import pinned, restart_pinned
from mobile_vision_export.export.tflite_convert import QUANT_MODES
from mobile_vision_export.models import get_spec, list_models
from mobile_vision_export.pipeline.api import export_model
from mobile_vision_export.pipeline.arguments import image_size, positive_int
from mobile_vision_export.pipeline.cli import Parser, add_common_flags, prog_name, run_command
from mobile_vision_export.pipeline.int8_steps import STEPS, SWITCHES
from mobile_vision_export.pipeline.profile import run as profile_run
from mobile_vision_export.pipeline.request import CALIBRATION_CROPS
from mobile_vision_export.pipeline.sources import SourceError
from mobile_vision_export.pipeline.zoo import export_many, write_summary
from mobile_vision_export.profiling.arm_setup import default_cache
from mobile_vision_export.profiling.cores import parse_cores
from mobile_vision_export.profiling.devices import parse_devices
from mobile_vision_export.profiling.run import ProfileRequest

EXIT_PARITY_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3


def _floats(text: str, names: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    count = names.count(",") + 1
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers {names}, got '{text}'")
    return values


def _floats3(text: str) -> tuple[float, float, float]:
    return _floats(text, "R,G,B")


def _floats4(text: str) -> tuple[float, float, float, float]:
    return _floats(text, "X,Y,W,H")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=prog_name("python -m pipeline.export"), description=__doc__)
    add_common_flags(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="zoo name (see --list) or path/to/file.py:factory")
    src.add_argument("--onnx", type=Path, help="start from an existing ONNX file (1x3xHxW float input)")
    src.add_argument("--all", action="store_true", help="export every zoo model and write one summary table")
    src.add_argument("--list", action="store_true", help="list the zoo models and exit")
    p.add_argument("--quant", default="int8", choices=[*QUANT_MODES, "all"], help="variant(s) to write (default int8)")
    p.add_argument("--weights", help="state_dict checkpoint path, or 'imagenet' (mobilenet_v2, offline)")
    p.add_argument(
        "--input-size",
        type=image_size,
        metavar="S|HxW",
        help="input size, S (square) or HxW (height x width, e.g. 48x192): required with --model file.py:factory; "
        "for a zoo model it overrides its own; for an ONNX file it fixes dynamic dimensions",
    )
    p.add_argument(
        "--mean",
        type=_floats3,
        help="per-channel mean R,G,B the model was trained with (default: the zoo weights' own, else ImageNet)",
    )
    p.add_argument(
        "--std",
        type=_floats3,
        help="per-channel std R,G,B the model was trained with (default: the zoo weights' own, else ImageNet)",
    )
    p.add_argument(
        "--task",
        choices=TASKS,
        default="auto",
        help="what the model's outputs are: auto (decided from their shapes, said in the report), classify (class "
        "scores: labels, top-1), segment (a class map: pixel agreement, mean IoU), detect (boxes [1, N, 4] and scores "
        "[1, N, C]: top-k score overlap, detections reproduced with --box-format), embed (a feature vector), tensor "
        "(anything else: every output compared)",
    )
    p.add_argument("--boxes", metavar="NAME", help="a detector's boxes output [1, N, 4] (default: found by its shape)")
    p.add_argument(
        "--scores", metavar="NAME", help="a detector's per-class scores output [1, N, C] (default: found by its shape)"
    )
    p.add_argument(
        "--box-format",
        choices=BOX_FORMATS,
        help="how the boxes are written (x1,y1,x2,y2; centre x,y,width,height; or SSD offsets from --anchors, in "
        "torchvision's order dx,dy,dw,dh or TensorFlow's dy,dx,dh,dw): parity then decodes both files' detections "
        "(best class per box, NMS per class) and reports the share int8 reproduces",
    )
    p.add_argument(
        "--anchors",
        type=Path,
        metavar="FILE",
        help="with --box-format anchor-*: one anchor per box, centre x, centre y, width, height (a .npy N x 4 array "
        "or a text file of N lines), in the units the decoded boxes are in",
    )
    p.add_argument(
        "--box-scales",
        type=_floats4,
        default=SSD_SCALES,
        metavar="X,Y,W,H",
        help="with --anchors: what the offsets are divided by before decoding (default 10,10,5,5, SSD's variances "
        "0.1 and 0.2)",
    )
    p.add_argument(
        "--score-threshold",
        type=float,
        default=0.5,
        help="a detector's score cut (default 0.5; on the scores as the model outputs them): the scores the top-k "
        "overlap ranks, and with --box-format the score a detection needs",
    )
    p.add_argument("--labels", type=Path, help="class names, one per line (default: ImageNet names for 1000 classes)")
    p.add_argument("--calib-dir", type=Path, help="folder of your own calibration photos (default: built-in set)")
    p.add_argument(
        "--calib-samples",
        type=positive_int,
        default=CALIBRATION_CROPS,
        help=f"calibration crops (default {CALIBRATION_CROPS})",
    )
    p.add_argument(
        "--val-dir",
        type=Path,
        help="your labelled photos: one subfolder per class (named as in --labels, or the class index) or a CSV "
        "of path,label; reports the accuracy of PyTorch, ONNX Runtime and every variant on them. For a model that is "
        "not a classifier: a folder of your photos (no labels), on which parity and the task's metrics are measured",
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        metavar="POINTS",
        help="with --val-dir: fail (exit 1) when a variant's top-1 is more than POINTS below the reference's",
    )
    p.add_argument("--no-optimize", action="store_true", help="keep the converter's graph as it is (no layout pass)")
    p.add_argument(
        "--reproducible",
        action="store_true",
        help="the same int8 bytes on any x86-64 machine (for CI rebuilds): pins the int8 steps' arithmetic to "
        "CPU-independent code paths; the tuning takes about 2.5x as long",
    )
    p.add_argument(
        "--min-sqnr",
        type=float,
        metavar="DB",
        help="int8 accuracy target: the worst layers fall back to dynamic-range int8 (else float) until int8 "
        "reaches DB against float on calibration crops; the held-out parity must then reach it too (replaces "
        "--min-sqnr-int8)",
    )
    p.add_argument(
        "--min-top1",
        type=float,
        metavar="FRACTION",
        help="int8 agreement target (0..1): as --min-sqnr, for top-1 agreement with float (replaces --min-top1-int8)",
    )
    p.add_argument(
        "--int8-output",
        choices=["int8", "float"],
        help="the int8 file's outputs: quantized, or float32, each from a dynamic-range output layer where a "
        "fully-connected or convolution layer produces it (else dequantized); default: int8, and float with "
        "--min-sqnr or --min-top1, whose fallback then judges the file with float outputs",
    )
    p.add_argument(
        "--no-fold-normalization",
        action="store_true",
        help="keep the per-channel mean/std out of the graph: the files take normalized input (as the model was "
        "trained), which MediaPipe Tasks cannot give; the normalization op costs a 1x1 conv on the input otherwise",
    )
    p.add_argument(
        "--int8-io",
        choices=["uint8", "int8"],
        default="uint8",
        help="the int8 file's input and quantized output type: uint8 (default: the camera's pixels as they are, what "
        "MediaPipe Tasks and the Task Library take) or int8",
    )
    for step in STEPS:
        if step.switch:
            p.add_argument(step.flag, action="store_true", help=step.off_help)
    p.add_argument(
        "--out", type=Path, default=Path("artifacts"), help="artifacts go to OUT/<model>/ (default artifacts)"
    )
    p.add_argument(
        "--profile", action="store_true", help="profile every variant written (host latency; see --profile-arm)"
    )
    p.add_argument("--profile-arm", help="with --profile: also emulated ARM cores, e.g. a53,a76")
    p.add_argument(
        "--profile-device", help="with --profile: also estimated milliseconds on named devices, e.g. pixel-4"
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="with --all: export this many models at a time, each in its own process (output in OUT/<model>.log)",
    )
    for mode in ("onnx", *QUANT_MODES):
        p.add_argument(f"--min-sqnr-{mode}", type=float, help=f"override the {mode} SQNR threshold (dB)")
        p.add_argument(f"--min-cosine-{mode}", type=float, help=f"override the {mode} mean-cosine threshold")
        p.add_argument(f"--min-top1-{mode}", type=float, help=f"override the {mode} top-1 agreement threshold (0..1)")
    for mode in QUANT_MODES:
        p.add_argument(
            f"--min-pixel-agreement-{mode}", type=float, help=f"override a segmenter's {mode} pixel agreement (0..1)"
        )
        p.add_argument(
            f"--min-detections-reproduced-{mode}",
            type=float,
            help=f"override a detector's {mode} share of detections reproduced (0..1; with --box-format)",
        )
    return p


def _check_flags(args) -> None:
    """Refuse flags that only the command line has and that would be silently ignored."""
    if args.all and (args.input_size or args.mean or args.std):
        raise SourceError("--input-size, --mean and --std apply to one model, not to --all")
    if args.all and (args.weights or args.labels):
        raise SourceError("--weights and --labels apply to one model, not to --all")
    if args.jobs > 1 and not args.all:
        raise SourceError("--jobs applies to --all (one export uses the converter's own threads)")
    for flag, value in (("--profile-arm", args.profile_arm), ("--profile-device", args.profile_device)):
        if value and not args.profile:
            raise SourceError(f"{flag} goes with --profile")
    if args.profile_arm:
        parse_cores(args.profile_arm)  # an unknown core or device fails before the export, not after
    if args.profile_device:
        parse_devices(args.profile_device)
    # the rest is checked by export_model (pipeline.checks), for the API as for the flags


def _thresholds(args) -> dict[str, dict[str, float]]:
    """The thresholds given on the command line, per variant (the rest keep their defaults)."""
    given = {}
    for m in ("onnx", *QUANT_MODES):
        keys = ("min_sqnr", "min_cosine", "min_top1")
        keys += ("min_pixel_agreement", "min_detections_reproduced") if m != "onnx" else ()
        flags = {key: getattr(args, f"{key}_{m}") for key in keys}
        given[m] = {key: value for key, value in flags.items() if value is not None}
    return given


def _options(args, argv: list[str]) -> dict:
    """export_model's keyword arguments for these flags."""
    return dict(
        quant=args.quant,
        labels=args.labels,
        calib_dir=args.calib_dir,
        calib_samples=args.calib_samples,
        out=args.out,
        min_sqnr=args.min_sqnr,
        min_top1=args.min_top1,
        int8_output=args.int8_output,
        int8_io=args.int8_io,
        task=args.task,
        boxes=args.boxes,
        scores=args.scores,
        box_format=args.box_format,
        score_threshold=args.score_threshold,
        anchors=args.anchors,
        box_scales=args.box_scales,
        fold_normalization=not args.no_fold_normalization,
        val_dir=args.val_dir,
        max_accuracy_drop=args.max_accuracy_drop,
        thresholds=_thresholds(args),
        optimize=not args.no_optimize,
        reproducible=args.reproducible,
        **{switch: not getattr(args, f"no_{switch}") for switch in SWITCHES},
        command="python -m pipeline.export " + shlex.join(argv),
    )


def _export_one(args, argv: list[str]) -> int:
    model = args.onnx or args.model
    result = export_model(
        model, weights=args.weights, input_size=args.input_size, mean=args.mean, std=args.std, **_options(args, argv)
    )
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    for row in result.rows:
        status = "pass" if row.passed else "FAIL: " + "; ".join(row.failures)
        console.print(
            f"  {row.variant:>7} vs {row.reference:<11} SQNR {row.metrics.sqnr_db:6.1f} dB  "
            f"cosine {row.metrics.cosine_mean:.5f}  "
            + ("" if row.metrics.top1_agreement is None else f"top-1 agree {row.metrics.top1_agreement:4.0%}  ")
            + status
        )
    written = ["report.md", "parity.json", "preprocess.json"] + ["labels.txt"] * (
        result.out_dir / "labels.txt"
    ).is_file()
    console.print(f"  artifacts: {result.out_dir}/ ({', '.join(written)})")
    if args.profile:
        cores = parse_cores(args.profile_arm) if args.profile_arm else []
        devices = parse_devices(args.profile_device) if args.profile_device else []
        request = ProfileRequest(host=True, cores=cores, devices=devices, arm_cache=default_cache())
        profile_run(list(result.files.values()), request, result.out_dir)
    if not result.passed:
        reasons = "; ".join(result.failures)
        print(f"error: {result.name} failed {reasons} (report: {result.report})", file=sys.stderr)
        return EXIT_PARITY_FAILED
    return 0


def _export_all(args, argv: list[str]) -> int:
    rows, worst = [], 0
    mode = QUANT_MODES[-1] if args.quant == "all" else args.quant
    for row, exc, passed in export_many(list_models(), _options(args, argv), mode, args.jobs):
        rows.append(row)
        if exc is not None:
            print(f"error: {row['model']}: {exc}", file=sys.stderr)
            worst = max(worst, EXIT_USER_ERROR if isinstance(exc, UserError) else EXIT_INTERNAL_ERROR)
        else:
            worst = max(worst, 0 if passed else EXIT_PARITY_FAILED)
    path = write_summary(args.out, rows, mode)
    print(path.read_text())
    return worst


def _print_zoo() -> None:
    print(f"{'model':<20} {'family':<15} {'input':>5} {'params':>12} {'MACs (M)':>9}")
    for name in list_models():
        spec = get_spec(name)
        params, macs = spec.complexity()
        print(f"{name:<20} {spec.family:<15} {spec.input_size:>5} {params:>12,} {macs / 1e6:>9.1f}")


def main(argv: list[str] | None = None) -> int:
    if argv is None and "--reproducible" in sys.argv and not pinned():
        restart_pinned()  # before anything loads the libraries that read the pins
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")

    def export() -> int:
        args = build_parser().parse_args(argv)
        if args.list:
            _print_zoo()
            return 0
        try:
            _check_flags(args)
            return _export_all(args, argv) if args.all else _export_one(args, argv)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        except Exception as exc:
            if os.environ.get("MVE_DEBUG"):
                raise
            print(
                f"error: unexpected {type(exc).__name__}: {exc} (a bug: rerun with MVE_DEBUG=1 for the traceback "
                "and report it)",
                file=sys.stderr,
            )
            return EXIT_INTERNAL_ERROR

    # Ctrl-C and SIGTERM (CI cancellation, `timeout`) unwind like KeyboardInterrupt: the converter's process group
    # is stopped and the partial folder removed, then one line and exit 130 (SIGINT) or 143 (SIGTERM).
    return run_command(
        export, argv, "stopped the export and its converter; an unfinished export leaves no model folder behind"
    )


if __name__ == "__main__":
    sys.exit(main())
