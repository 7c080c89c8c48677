"""TFLite Metadata inside each .tflite, written and read with the official tflite-support library: Android Studio's
ML Model Binding and other metadata readers then find the labels, the input normalization and the image size in
the model itself. preprocess.json stays the human-readable contract; `disagreements` says where the two differ."""

from __future__ import annotations

import io
import json
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import flatbuffers

from mobile_vision_export.errors import UserError
from mobile_vision_export.export.provenance import TOOL_NAME, tool_version
from mobile_vision_export.export.tflite_inspect import TensorInfo, graph_edges, inspect_tflite, op_outputs

LABELS_FILE = "labels.txt"
PIXEL_MAX = 255.0  # metadata normalizes raw 0..255 pixels; the contract normalizes pixel / 255


class MetadataError(UserError, ValueError):
    """The metadata library is missing or cannot read or write a model's metadata."""


def _library():
    """The official writer, schema and reader. Imported on use: they load a native extension that needs libusb.
    Their optional TensorFlow import is kept out: it only adds remote file systems, for 2 s and a screenful of logs."""
    keep_out = "tensorflow" not in sys.modules
    if keep_out:
        sys.modules["tensorflow"] = None  # makes `import tensorflow` raise ImportError, which the reader handles
    try:
        from tensorflow_lite_support.metadata import metadata_schema_py_generated as schema
        from tensorflow_lite_support.metadata.python import metadata as reader
        from tensorflow_lite_support.metadata.python.metadata_writers import (
            image_classifier,
            image_segmenter,
            metadata_info,
            metadata_writer,
        )
    except ImportError as exc:
        raise MetadataError(
            f"TFLite Metadata needs tflite-support and libusb-1.0 ({exc}): run scripts/setup.sh"
        ) from None
    finally:
        if keep_out:
            del sys.modules["tensorflow"]
    writers = {
        "classify": image_classifier.MetadataWriter,
        "segment": image_segmenter.MetadataWriter,
        "any": metadata_writer.MetadataWriter,
    }
    return schema, reader, writers, metadata_info


@dataclass(frozen=True)
class ModelMetadata:
    """What a metadata reader finds in a .tflite, in the contract's units (mean and std of pixel / 255)."""

    name: str
    mean: list[float]
    std: list[float]
    color_space: str
    size: tuple[int, int]  # width, height
    labels: list[str]  # from the output that carries a label file; [] when none does
    outputs: tuple[str, ...]  # each output tensor's metadata name, in the file's order: ("logits",) for a classifier


def _quantization(t: TensorInfo, formula: str) -> str:
    if t.dtype == "float32" or t.scale is None:
        return f"{t.dtype}."
    return f"{t.dtype}, {formula} with scale {t.scale:.9g} and zero point {t.zero_point}."


def _output_text(entry: dict, kind: str, t: TensorInfo) -> str:
    layout = entry.get("layout", "as in the ONNX graph")
    dequantize = _quantization(t, "y = (q - zero_point) * scale")
    return f"{kind} {entry['onnx_name']}, shape {entry['shape']}, layout {layout}; {dequantize}"


@dataclass(frozen=True)
class SsdDecoding:
    """A detector whose boxes are SSD offsets in TensorFlow's order (dy, dx, dh, dw) from fixed anchors: what
    MediaPipe's ObjectDetector decodes itself, given the anchors (centre x, centre y, width, height, relative to the
    input image) and the scales (x, y, w, h) in the model's metadata."""

    boxes: str  # ONNX output names
    scores: str
    anchors: tuple[tuple[float, float, float, float], ...]
    scales: tuple[float, float, float, float]


DETECTOR_METADATA = "DETECTOR_METADATA"  # the custom metadata MediaPipe's ObjectDetector reads
PASS_THROUGH = {"RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "CONCATENATION", "QUANTIZE", "DEQUANTIZE"}


def _detector_options(decoding: SsdDecoding, classes: int, sigmoid: bool) -> bytes:
    """MediaPipe's ObjectDetectorOptions flatbuffer (tasks/metadata/object_detector_metadata_schema.fbs, file
    identifier V001): the fixed anchors and how to decode the two raw outputs."""
    b = flatbuffers.Builder(0)
    anchors = []
    for values in decoding.anchors:  # FixedAnchor: x_center, y_center, width, height
        b.StartObject(4)
        for slot, value in enumerate(values):
            b.PrependFloat32Slot(slot, float(value), 0.0)
        anchors.append(b.EndObject())
    b.StartVector(4, len(anchors), 4)
    for offset in reversed(anchors):
        b.PrependUOffsetTRelative(offset)
    vector = b.EndVector()
    b.StartObject(1)  # FixedAnchorsSchema
    b.PrependUOffsetTRelativeSlot(0, vector, 0)
    fixed = b.EndObject()
    b.StartObject(1)  # SsdAnchorsOptions
    b.PrependUOffsetTRelativeSlot(0, fixed, 0)
    ssd = b.EndObject()
    b.StartObject(12)  # TensorsDecodingOptions
    for slot, value in enumerate((classes, len(anchors), 4, 0, 0, 2)):  # no keypoints (2 values each, as required)
        b.PrependInt32Slot(slot, value, 0)
    x, y, w, h = decoding.scales
    for slot, value in zip((6, 7, 8, 9), (x, y, w, h)):
        b.PrependFloat32Slot(slot, float(value), 0.0)
    b.PrependBoolSlot(10, True, False)  # sizes are exp(offset / scale) x anchor size
    b.PrependBoolSlot(11, sigmoid, False)
    decoding_options = b.EndObject()
    b.StartObject(3)  # ObjectDetectorOptions
    b.PrependUOffsetTRelativeSlot(1, ssd, 0)
    b.PrependUOffsetTRelativeSlot(2, decoding_options, 0)
    b.Finish(b.EndObject(), file_identifier=b"V001")
    return bytes(b.Output())


def ends_in_probabilities(model: Path, tensor_name: str) -> bool:
    """Whether the output comes from a sigmoid or softmax (through reshapes and the like): MediaPipe applies a
    sigmoid itself only to scores that are logits."""
    ops = op_outputs(model)
    inputs, producer = graph_edges(model)
    tensor = next((t for _, t, name in ops if name == tensor_name), None)
    while tensor in producer:
        kind = ops[producer[tensor]][0]
        if kind in ("LOGISTIC", "SOFTMAX"):
            return True
        if kind not in PASS_THROUGH:
            return False
        tensor = inputs[producer[tensor]][0]
    return False


def write_metadata(
    model: Path,
    name: str,
    description: str,
    contract: dict,
    mode: str,
    labels_file: Path | None,
    detector: SsdDecoding | None = None,
):
    """Embed metadata (and the labels file, if any) in `model`, replacing it atomically. The writer follows the task:
    the image classifier's for a classifier, the image segmenter's for a one-output segmenter, MediaPipe's object
    detector's for a `detector` with SSD offsets, otherwise the generic one with every output described (name, kind,
    layout, quantization) as in the contract."""
    schema, _, writers, info = _library()
    summary = inspect_tflite(model)
    t_in = summary.inputs[0]
    height, width = t_in.shape[1], t_in.shape[2]
    mean, std = contract["mean"], contract["std"]

    class SizedImageMd(info.InputImageTensorMd):
        """The writer's image input, plus the default image size the schema has room for."""

        def create_metadata(self):
            metadata = super().create_metadata()
            size = schema.ImageSizeT()
            size.width, size.height = width, height
            metadata.content.contentProperties.defaultSize = size
            return metadata

    normalize = "(pixel - mean) / std on 0..255 RGB pixels, resized and center-cropped as in preprocess.json"
    input_md = SizedImageMd(
        name="image",
        description=f"{width}x{height} RGB image, {normalize}; "
        + _quantization(t_in, "then q = round(x / scale) + zero_point"),
        norm_mean=[m * PIXEL_MAX for m in mean],
        norm_std=[s * PIXEL_MAX for s in std],
        color_space_type=schema.ColorSpaceType.RGB,
    )
    general_md = info.GeneralMd(name=name, version=tool_version(), description=description, author=TOOL_NAME)
    entries, kinds = contract["variants"][mode]["outputs"], {o["name"]: o["kind"] for o in contract["outputs"]}
    label_files = [info.LabelFileMd(str(labels_file))] if labels_file is not None else None
    task, buffer = contract["task"], bytearray(model.read_bytes())
    if task == "classify":
        dequantize = _quantization(summary.outputs[0], "y = (q - zero_point) * scale")
        output_md = info.ClassificationTensorMd(
            name="logits",
            description=f"One logit per label (no softmax); {dequantize}",
            label_files=label_files,
        )
        writer = writers["classify"].create_from_metadata_info(buffer, general_md, input_md, output_md)
    else:
        outputs = [
            info.TensorMd(
                name=entry["onnx_name"],
                description=_output_text(entry, kinds.get(entry["onnx_name"], "tensor"), t),
                associated_files=label_files if task == "segment" else None,
                tensor_name=entry["name"],
            )
            for entry, t in zip(entries, summary.outputs)
        ]
        if task == "segment" and len(outputs) == 1:
            writer = writers["segment"].create_from_metadata_info(buffer, general_md, input_md, outputs[0])
        elif detector is not None:
            writer = _detector_writer(model, buffer, general_md, input_md, outputs, entries, detector, label_files)
        else:
            files = [str(labels_file)] if label_files else None
            writer = writers["any"].create_from_metadata_info(buffer, general_md, [input_md], outputs, files)
    tmp = model.with_name(f".{model.name}.metadata")
    tmp.write_bytes(_without_zip_times(writer.populate()))
    tmp.replace(model)


def _detector_writer(model, buffer, general_md, input_md, outputs, entries, detector: SsdDecoding, label_files):
    """The generic writer's metadata with MediaPipe's names for the two outputs ("location": boxes as relative
    boundaries, "score") and its DETECTOR_METADATA."""
    schema, reader, writers, _ = _library()
    names = [entry["onnx_name"] for entry in entries]
    tensors = []
    for md, onnx_name in zip(outputs, names):
        tensor = md.create_metadata()
        if onnx_name == detector.boxes:
            tensor.name = "location"
            box = schema.BoundingBoxPropertiesT()
            box.index, box.type = [1, 0, 3, 2], schema.BoundingBoxType.BOUNDARIES
            box.coordinateType = schema.CoordinateType.RATIO
            tensor.content = schema.ContentT()
            tensor.content.contentPropertiesType = schema.ContentProperties.BoundingBoxProperties
            tensor.content.contentProperties = box
        elif onnx_name == detector.scores:
            tensor.name = "score"
            if label_files:
                tensor.associatedFiles = [f.create_metadata() for f in label_files]
                tensor.associatedFiles[0].type = schema.AssociatedFileType.TENSOR_AXIS_LABELS
        tensors.append(tensor)
    scores = next(e for e in entries if e["onnx_name"] == detector.scores)
    custom = schema.CustomMetadataT()
    custom.name = DETECTOR_METADATA
    sigmoid = not ends_in_probabilities(model, scores["name"])
    custom.data = list(_detector_options(detector, int(scores["shape"][-1]), sigmoid))
    subgraph = schema.SubGraphMetadataT()
    subgraph.inputTensorMetadata, subgraph.outputTensorMetadata = [input_md.create_metadata()], tensors
    subgraph.customMetadata = [custom]
    metadata = general_md.create_metadata()
    metadata.subgraphMetadata = [subgraph]
    b = flatbuffers.Builder(0)
    b.Finish(metadata.Pack(b), reader.MetadataPopulator.METADATA_FILE_IDENTIFIER)
    files = [f.file_path for f in label_files] if label_files else None
    return writers["any"](buffer, b.Output(), files)


_LOCAL_HEADER, _CENTRAL_HEADER = b"PK\x03\x04", b"PK\x01\x02"
_ZIP_EPOCH = (0, (1 << 5) | 1)  # DOS time and date of 1980-01-01 00:00


def _without_zip_times(model: bytes) -> bytes:
    """`model` with the packed files' zip timestamps (the time of writing) set to the zip epoch, so the same
    export gives the same bytes."""
    out = bytearray(model)
    with zipfile.ZipFile(io.BytesIO(model)) as archive:  # offsets below are from the start of `model`
        entries, central = archive.infolist(), archive.start_dir
    for entry in entries:
        if out[entry.header_offset : entry.header_offset + 4] == _LOCAL_HEADER:
            struct.pack_into("<HH", out, entry.header_offset + 10, *_ZIP_EPOCH)
    for _ in entries:
        if out[central : central + 4] != _CENTRAL_HEADER:
            break
        struct.pack_into("<HH", out, central + 12, *_ZIP_EPOCH)
        name, extra, comment = struct.unpack_from("<HHH", out, central + 28)
        central += 46 + name + extra + comment
    return bytes(out)


def read_metadata(model: Path) -> ModelMetadata:
    """The metadata as the official reader (MetadataDisplayer) sees it."""
    _, reader, _, _ = _library()
    try:
        displayer = reader.MetadataDisplayer.with_model_file(str(model))
    except ValueError as exc:
        raise MetadataError(f"{model} has no TFLite Metadata ({exc}): re-export it with this tool") from None
    record = json.loads(displayer.get_metadata_json())
    try:
        graph = record["subgraph_metadata"][0]
        t_in, outputs = graph["input_tensor_metadata"][0], graph["output_tensor_metadata"]
        options = next(u["options"] for u in t_in["process_units"] if u["options_type"] == "NormalizationOptions")
        image = t_in["content"]["content_properties"]
        size = (image["default_size"]["width"], image["default_size"]["height"])
    except (KeyError, IndexError, StopIteration) as exc:
        raise MetadataError(f"{model}: its metadata does not describe an image input (no {exc})") from None
    label_files = [
        f["name"] for t in outputs for f in t.get("associated_files", []) if f["type"] == "TENSOR_AXIS_LABELS"
    ]
    labels = []
    if label_files:
        try:
            labels = displayer.get_associated_file_buffer(label_files[0]).decode().splitlines()
        except ValueError as exc:
            raise MetadataError(f"{model}: metadata names {label_files[0]} but it is not packed ({exc})") from None
    return ModelMetadata(
        name=record["name"],
        mean=[m / PIXEL_MAX for m in options["mean"]],
        std=[s / PIXEL_MAX for s in options["std"]],
        color_space=image["color_space"],
        size=size,
        labels=[label for label in labels if label.strip()],
        outputs=tuple(t["name"] for t in outputs),
    )


def disagreements(metadata: ModelMetadata, contract: dict, labels: list[str], tolerance: float = 1e-6) -> list[str]:
    """Where the model's metadata and preprocess.json (with labels.txt) tell an app different things."""
    problems = []
    for key in ("mean", "std"):
        ours, theirs = contract[key], getattr(metadata, key)
        if len(ours) != len(theirs) or any(abs(a - b) > tolerance for a, b in zip(ours, theirs)):
            problems.append(f"{key}: preprocess.json {ours}, metadata {theirs}")
    if metadata.color_space != contract["color_order"]:
        problems.append(f"color: preprocess.json {contract['color_order']}, metadata {metadata.color_space}")
    height, width = contract["input_size"]
    if metadata.size != (width, height):
        problems.append(
            f"size: preprocess.json {width}x{height} (width x height), metadata {metadata.size[0]}x{metadata.size[1]}"
        )
    if len(metadata.outputs) != len(contract["outputs"]):
        problems.append(f"outputs: preprocess.json lists {len(contract['outputs'])}, metadata {len(metadata.outputs)}")
    if metadata.labels != labels:
        problems.append(f"labels: labels.txt has {len(labels)}, metadata {len(metadata.labels)} (or other names)")
    return problems


def labels_in(model: Path) -> list[str] | None:
    """The labels packed in a model's metadata, or None when it has none."""
    try:
        return read_metadata(model).labels
    except MetadataError:
        return None
