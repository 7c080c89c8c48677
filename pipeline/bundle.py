"""python -m pipeline.bundle: put an exported model, its labels and contract into the Android demo, with golden
vectors from real photos that the app's Java preprocessing is tested against."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from mobile_vision_export.errors import UserError
from mobile_vision_export.export.files import write_text_atomic
from mobile_vision_export.export.images import center_crop, heldout_photos, load_rgb, normalize
from mobile_vision_export.export.tflite_inspect import inspect_tflite, quantize
from mobile_vision_export.pipeline.cli import Parser, add_common_flags, prog_name, run_command
from mobile_vision_export.pipeline.export import main as export_main

GOLDEN_PHOTOS = 4  # labelled held-out ImageNet photos
SAMPLE_PHOTOS = 3  # bundled in the app as ready-made examples


class BundleError(UserError, ValueError):
    """The app folder or the exported model is not what bundling needs."""


def golden_vectors(model: Path, contract: dict, out_dir: Path) -> list[dict]:
    """Decoded pixels, the pipeline's input tensor (uint8 pixels or int8), every output as the model gives it
    (quantized codes, or float32) with its values (float32), and a classifier's top-5, for a few real photos."""
    variant = contract["variants"]["int8"]
    info = inspect_tflite(model).inputs[0]
    interpreter = Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    details = {d["name"]: d for d in interpreter.get_output_details()}
    cases = []
    for photo in [p for p in heldout_photos() if p.label is not None][:GOLDEN_PHOTOS]:
        image = load_rgb(photo.path)
        name = photo.path.stem
        pixels = np.asarray(image, dtype=np.uint8)
        x = normalize(center_crop(image, contract["input_size"])[None], contract["mean"], contract["std"])
        q = quantize(x, info)
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], q)
        interpreter.invoke()
        (out_dir / f"{name}.rgb").write_bytes(pixels.tobytes())
        (out_dir / f"{name}.input.bin").write_bytes(q.tobytes())
        outputs = []
        for k, entry in enumerate(variant["outputs"]):
            output = interpreter.get_tensor(details[entry["name"]]["index"])[0]
            if entry["dtype"] == "float32":  # --int8-output float: float32, little-endian
                values, raw = output.astype(np.float32), output.astype("<f4").tobytes()
            else:  # uint8 or int8 codes
                values = (output.astype(np.float32) - entry["zero_point"]) * np.float32(entry["scale"])
                raw = output.tobytes()
            (out_dir / f"{name}.output{k}.bin").write_bytes(raw)
            (out_dir / f"{name}.output{k}.float32").write_bytes(values.astype("<f4").tobytes())
            outputs.append(
                {"name": entry["onnx_name"], "raw": f"{name}.output{k}.bin", "values": f"{name}.output{k}.float32"}
            )
        case = {
            "name": name,
            "label": photo.label,
            "width": image.width,
            "height": image.height,
            "pixels": f"{name}.rgb",
            "input": f"{name}.input.bin",
            "outputs": outputs,
        }
        if contract["task"] == "classify":
            logits = np.frombuffer((out_dir / outputs[0]["values"]).read_bytes(), "<f4")
            case.update(output=outputs[0]["raw"], top5=[int(i) for i in np.argsort(-logits, kind="stable")[:5]])
        cases.append(case)
    return cases


def bundle(artifacts: Path, app: Path) -> list[dict]:
    """Copy model.tflite, labels.txt, preprocess.json and sample photos into the app; write golden vectors."""
    models = sorted(artifacts.glob("*_int8.tflite"))
    if not models or not (artifacts / "preprocess.json").is_file():
        raise BundleError(f"{artifacts} has no int8 export: run python -m pipeline.export ... --quant int8 first")
    if not (app / "app" / "src" / "main").is_dir() or not (app / "contract").is_dir():
        raise BundleError(f"{app} is not the android_demo project (no app/src/main or contract/)")
    contract = json.loads((artifacts / "preprocess.json").read_text())
    if contract.get("task", "classify") != "classify":
        raise BundleError(
            f"{artifacts.name} is a {contract['task']} model: the Android demo shows a classifier's top-5 (bundle a "
            "classifier, or read its outputs from preprocess.json in your own app)"
        )
    contract["variants"] = {"int8": {**contract["variants"]["int8"], "file": "model.tflite"}}
    assets = app / "app" / "src" / "main" / "assets"
    golden = app / "contract" / "src" / "test" / "resources" / "golden"
    for folder in (assets, golden):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    (assets / "samples").mkdir()
    shutil.copyfile(models[0], assets / "model.tflite")
    for folder in (assets, golden):
        shutil.copyfile(artifacts / "labels.txt", folder / "labels.txt")
        write_text_atomic(folder / "preprocess.json", json.dumps(contract, indent=2) + "\n")
    for photo in [p for p in heldout_photos() if p.label is not None][-SAMPLE_PHOTOS:]:
        shutil.copyfile(photo.path, assets / "samples" / photo.path.name)
    cases = golden_vectors(models[0], contract, golden)
    write_text_atomic(golden / "cases.json", json.dumps(cases, indent=2) + "\n")
    return cases


def main(argv: list[str] | None = None) -> int:
    """Ctrl-C or SIGTERM: one `error: interrupted` line and exit 130/143 instead of a traceback."""
    return run_command(
        lambda: _main(argv),
        argv,
        "stopped bundling; the app's assets and golden vectors may be incomplete: run it again",
    )


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=prog_name("python -m pipeline.bundle"), description=__doc__)
    add_common_flags(p)
    p.add_argument("--model", default="mobilenet_v2", help="zoo model to bundle (default mobilenet_v2)")
    p.add_argument("--weights", default="imagenet", help="weights for the export (default imagenet)")
    p.add_argument("--quant", default="int8", choices=["int8"], help="the app runs the full-integer model")
    p.add_argument(
        "--int8-output", choices=["int8", "float"], default="int8", help="the model's output for an export made here"
    )
    p.add_argument("--android", type=Path, default=Path("android_demo"), help="the Android project folder")
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="where exports live (default artifacts)")
    return p


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    folder = args.artifacts / args.model
    try:
        if not (folder / f"{args.model}_int8.tflite").is_file():
            weights = [] if args.weights == "none" else ["--weights", args.weights]
            flags = ["--quant", "int8", "--int8-output", args.int8_output, "--out", str(args.artifacts)]
            code = export_main(["--model", args.model, *weights, *flags])
            if code != 0:
                return code
        cases = bundle(folder, args.android)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"bundled {args.model} into {args.android}: model.tflite, labels.txt, preprocess.json, "
        f"{SAMPLE_PHOTOS} sample photos; {len(cases)} golden vectors"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
