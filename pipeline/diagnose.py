"""python -m pipeline.diagnose MODEL_int8.tflite: which layers lose accuracy in int8, on real held-out photos."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mobile_vision_export.errors import UserError
from mobile_vision_export.export.contract import normalization_beside
from mobile_vision_export.export.images import heldout_batch, heldout_photos, normalize
from mobile_vision_export.export.tflite_inspect import inspect_tflite
from mobile_vision_export.pipeline.cli import Parser, add_common_flags, prog_name, run_command
from mobile_vision_export.report.diagnose import write_diagnosis
from mobile_vision_export.validate.diagnose import DiagnoseError, diagnose


def _float_sibling(int8_model: Path) -> Path:
    """The float graph the int8 file was quantized from: its equalized twin if the export kept one."""
    twin = int8_model.with_name(int8_model.name.replace("_int8", "_int8_float_twin"))
    return twin if twin.is_file() else int8_model.with_name(int8_model.name.replace("_int8", "_fp32"))


def main(argv: list[str] | None = None) -> int:
    """Ctrl-C or SIGTERM: one `error: interrupted` line and exit 130/143 instead of a traceback."""
    return run_command(lambda: _main(argv), argv, "stopped the diagnosis before writing diagnose.html")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=prog_name("python -m pipeline.diagnose"), description=__doc__)
    add_common_flags(p)
    p.add_argument("int8_model", type=Path, help="the full-integer .tflite")
    p.add_argument(
        "--float",
        dest="float_model",
        type=Path,
        help="the float .tflite (default: the _int8_float_twin sibling, else the _fp32 one)",
    )
    p.add_argument(
        "--images",
        type=int,
        default=20,
        choices=range(1, 41),
        metavar="1..40",
        help="held-out photos to run (default 20)",
    )
    p.add_argument(
        "--output",
        metavar="NAME",
        help="only the layers this output depends on (a model with several outputs; default: every layer)",
    )
    p.add_argument("--out", type=Path, help="folder for diagnose.html/json (default: beside the int8 model)")
    return p


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    float_model = args.float_model or _float_sibling(args.int8_model)
    try:
        if not args.int8_model.is_file():
            raise DiagnoseError(f"model not found: {args.int8_model}")
        if inspect_tflite(args.int8_model).inputs[0].dtype == "float32":
            raise DiagnoseError(f"{args.int8_model} is a float model: pass the full-integer (_int8) file")
        if not float_model.is_file():
            raise DiagnoseError(f"model not found: {float_model} (export with --quant all, or pass --float)")
        if inspect_tflite(float_model).inputs[0].dtype != "float32":
            raise DiagnoseError(f"{float_model} is not a float model: pass the fp32 variant with --float")
        mean, std, _ = normalization_beside(args.int8_model)
        size = tuple(inspect_tflite(float_model).inputs[0].shape[1:3])
        photos = heldout_photos()[: args.images]
        x = normalize(heldout_batch(photos, size), mean, std)
        diagnosis = diagnose(float_model, args.int8_model, x, args.output)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    images = f"{len(photos)} held-out photos" + (
        f"; the layers output '{args.output}' depends on" if args.output else ""
    )
    page = write_diagnosis(args.out or args.int8_model.parent, diagnosis, float_model, args.int8_model, images)
    jump = diagnosis.first_jump
    print(f"first jump: #{jump.index} {jump.op} ({jump.sqnr_db:.1f} dB, -{jump.drop_db:.1f} dB)" if jump else "no jump")
    for layer in diagnosis.worst:
        print(f"worst: #{layer.index} {layer.op} SQNR {layer.sqnr_db:.1f} dB (-{layer.drop_db:.1f} dB) {layer.tensor}")
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
