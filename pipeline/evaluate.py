"""python -m pipeline.evaluate MODEL.tflite --val-dir DIR: accuracy of an exported model on your labelled photos."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from mobile_vision_export.errors import UserError
from mobile_vision_export.export.contract import LabelsError, labels_for, normalization_beside, read_labels
from mobile_vision_export.export.files import write_text_atomic
from mobile_vision_export.export.images import ImageDataError, heldout_batch, normalize, pixel_codes
from mobile_vision_export.export.metadata import LABELS_FILE, labels_in
from mobile_vision_export.export.provenance import tool_versions
from mobile_vision_export.export.tflite_inspect import inspect_tflite
from mobile_vision_export.models.weights import sha256_file
from mobile_vision_export.pipeline.cli import Parser, add_common_flags, prog_name, run_command
from mobile_vision_export.validate.clients import CLIENTS, answers, client_version
from mobile_vision_export.validate.labelled import accuracy, content_hashes, read_labelled
from mobile_vision_export.validate.runners import run_tflite


def main(argv: list[str] | None = None) -> int:
    """Ctrl-C or SIGTERM: one `error: interrupted` line and exit 130/143 instead of a traceback."""
    return run_command(lambda: _main(argv), argv, "stopped the evaluation before writing evaluate.json")


def _labels(model: Path, given: Path | None, classes: int) -> list[str]:
    """--labels, else labels.txt beside the model, else the labels packed in its metadata; one per output."""
    beside = model.parent / LABELS_FILE
    if given is not None or beside.is_file():
        return labels_for(classes, read_labels(given or beside))
    labels = labels_in(model)
    if labels is None:
        raise LabelsError(f"no {beside} and no labels in the model's metadata: pass --labels, one name per line")
    return labels_for(classes, labels)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=prog_name("python -m pipeline.evaluate"), description=__doc__)
    add_common_flags(p)
    p.add_argument(
        "model", type=Path, help="an exported .tflite (with metadata, or preprocess.json and labels.txt beside it)"
    )
    p.add_argument("--val-dir", type=Path, required=True, help="one subfolder per class, or a CSV of path,label")
    p.add_argument(
        "--labels",
        type=Path,
        help="class names, one per line (default: labels.txt beside the model, else its metadata)",
    )
    p.add_argument(
        "--client",
        choices=CLIENTS,
        help="also run the file in this real client (set up by scripts/setup_clients.sh) and compare its top-1 with "
        "our runtime's on every photo",
    )
    p.add_argument("--out", type=Path, help="folder for evaluate.json (default: beside the model)")
    return p


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        if not args.model.is_file():
            raise ImageDataError(f"model not found: {args.model}")
        summary = inspect_tflite(args.model)
        if len(summary.outputs) != 1 or len(summary.outputs[0].shape) != 2:
            shapes = ", ".join(str(o.shape) for o in summary.outputs)
            raise LabelsError(
                f"{args.model.name} has outputs {shapes}: mve-evaluate measures a classifier's top-1 (one [1, C] "
                "output); the export's parity compares every output of other models"
            )
        labels = _labels(args.model, args.labels, int(np.prod(summary.outputs[0].shape[1:])))
        mean, std, where = normalization_beside(args.model)
        labelled = read_labelled(args.val_dir, labels)
        size = tuple(summary.inputs[0].shape[1:3])
        crops = heldout_batch(labelled.photos, size)
        ours = run_tflite(args.model, normalize(crops, mean, std))
        result = accuracy(args.model.name, ours, labelled.labels)
        client = None
        if args.client:
            top1 = answers(args.client, "classify", args.model, pixel_codes(crops))
            client = {
                "client": args.client,
                "version": client_version(args.client),
                "top1_agreement_with_our_runtime": float(np.mean(top1 == ours.argmax(1))),
            }
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = len(labelled.photos)
    if client is not None:
        print(
            f"{args.client}: top-1 equal to our runtime's on {client['top1_agreement_with_our_runtime']:.1%} of photos"
        )
    print(f"{args.model.name} on {labelled.description}; normalization from {where}")
    print(f"top-1 {result.top1:.1%}  top-5 {result.top5:.1%}  (one photo moves top-1 by {100 / n:.1f} points)")
    for c, acc in sorted(result.per_class.items(), key=lambda item: item[1])[:5]:
        print(f"  {labels[c]:<30} top-1 {acc:.0%}")
    record = {
        "model": str(args.model),
        "model_sha256": sha256_file(args.model),
        "photos": labelled.description,
        "photos_sha256": sorted(content_hashes(labelled.photos)),
        "normalization": {"mean": list(mean), "std": list(std), "from": where},
        "versions": tool_versions(),
        "accuracy": result.as_dict(),
    }
    if client is not None:
        record["client"] = client
    out = args.out or args.model.parent
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "evaluate.json", json.dumps(record, indent=2) + "\n")
    print(f"wrote {out / 'evaluate.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
