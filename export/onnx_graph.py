"""PyTorch -> ONNX, checks on user-supplied ONNX, and onnxsim simplification."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxsim
import torch
from torch import nn

from mobile_vision_export.errors import UserError
from mobile_vision_export.export.images import hw, size_text

OPSET = 17
TASKS = ("auto", "classify", "segment", "detect", "embed", "tensor")
ANCHORED_FORMATS = ("anchor-xywh", "anchor-yxhw")  # offsets from --anchors: torchvision's SSD order, TensorFlow's
BOX_FORMATS = ("xyxy", "cxcywh", *ANCHORED_FORMATS)
SSD_SCALES = (10.0, 10.0, 5.0, 5.0)  # x, y, w, h: the offsets' divisors (SSD's variances 0.1 and 0.2)
INPUT_NAME = "input"
OUTPUT_NAME = "logits"  # a model with one output; several are output_0, output_1, ... in forward()'s order


class OnnxError(UserError, ValueError):
    """An ONNX model that cannot go through the pipeline."""


@dataclass(frozen=True)
class TensorSpec:
    """One model output as the ONNX graph has it: its name and shape (image-like outputs NCHW)."""

    name: str
    shape: tuple[int | None, ...]  # None where the dimension is not static

    @property
    def static(self) -> bool:
        return None not in self.shape[1:]


@dataclass(frozen=True)
class Detection:
    """A detector's outputs: boxes [1, N, 4] and per-class scores [1, N, C] (names), and how the boxes are written
    (None: not said, so parity compares the top scores but decodes no boxes). As asked (--boxes, --scores), a name
    may be None until `with_task` finds the output by its shape. With an anchored box format, each box is the
    offset of one of `anchors` (N x 4, centre x, centre y, width, height), decoded as SSD does: centre = offset /
    scale x anchor size + anchor centre, size = exp(offset / scale) x anchor size."""

    boxes: str | None = None
    scores: str | None = None
    box_format: str | None = None
    score_threshold: float = 0.5
    anchors: Path | None = None
    box_scales: tuple[float, float, float, float] = SSD_SCALES

    @property
    def given(self) -> bool:
        return (self.boxes, self.scores, self.box_format, self.anchors) != (None, None, None, None)

    def check(self) -> None:
        """Refuse a box format and anchors that do not go together, and an anchors file that cannot be read."""
        if self.box_format is not None and self.box_format not in BOX_FORMATS:
            raise OnnxError(f"unknown box format '{self.box_format}': use one of {', '.join(BOX_FORMATS)}")
        anchored = self.box_format in ANCHORED_FORMATS
        if anchored and self.anchors is None:
            raise OnnxError(f"--box-format {self.box_format} decodes offsets from anchors: add --anchors FILE")
        if self.anchors is not None and not anchored:
            raise OnnxError(f"--anchors goes with --box-format {' or '.join(ANCHORED_FORMATS)}")
        if len(self.box_scales) != 4 or not all(np.isfinite(v) and v > 0 for v in self.box_scales):
            raise OnnxError(f"box scales {list(self.box_scales)}: give four positive numbers X,Y,W,H (SSD: 10,10,5,5)")
        if anchored:
            read_anchors(self.anchors)


def read_anchors(path: Path) -> np.ndarray:
    """N x 4 anchors (centre x, centre y, width, height) from a .npy file or a text file of N lines of 4 numbers."""
    try:
        values = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=None, ndmin=2)
    except FileNotFoundError:
        raise OnnxError(f"anchors file not found: {path}") from None
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OnnxError(
            f"cannot read anchors from {path} ({first}): give a .npy array or N lines of 4 numbers"
        ) from None
    values = np.asarray(values, np.float64)
    if values.ndim != 2 or values.shape[1] != 4 or not len(values):
        raise OnnxError(f"anchors in {path} have shape {list(values.shape)}: need N rows of centre x, centre y, w, h")
    if not np.isfinite(values).all() or (values[:, 2:] <= 0).any():
        raise OnnxError(f"anchors in {path} need finite values and positive widths and heights")
    return values


@dataclass(frozen=True)
class OnnxModel:
    """An ONNX file with what the next stages need to know about it: its one image input and every output."""

    path: Path
    exporter: str
    opset: int
    nodes: int
    input_name: str
    input_size: tuple[int, int]  # height, width
    outputs: tuple[TensorSpec, ...]
    chosen_task: str | None = None  # --task, when the user says what the outputs are
    detection: Detection | None = None  # a detector's boxes and scores (set by `with_task`)

    @property
    def task(self) -> str:
        """classify: one output of class scores [1, C]; segment: one class map [1, C, H, W]; detect: boxes [1, N, 4]
        and scores [1, N, C]; embed: one feature vector (only when chosen); tensor: anything else."""
        if self.chosen_task is not None:
            return self.chosen_task
        if self.detection is not None:
            return "detect"
        if len(self.outputs) != 1:
            return "tensor"
        shape = self.outputs[0].shape
        if len(shape) == 2:
            return "classify"
        if len(shape) == 4 and shape[1] is not None and shape[1] > 1 and (shape[2] or 0) * (shape[3] or 0) > 1:
            return "segment"
        return "tensor"

    @property
    def task_reason(self) -> str:
        shapes = ", ".join(f"{o.name} {list(o.shape)}" for o in self.outputs)
        if self.chosen_task is not None:
            return f"--task {self.chosen_task} ({shapes})"
        return {
            "classify": f"one output of class scores ({shapes})",
            "segment": f"one class map, a score per class and pixel ({shapes})",
            "detect": f"boxes [1, N, 4] and scores [1, N, C] ({shapes})",
            "tensor": f"outputs {shapes}: not one vector of class scores",
        }[self.task]

    def kind(self, name: str) -> str:
        """What one output holds: logits, class map, boxes, scores, embedding or tensor."""
        if self.task == "detect":
            return "boxes" if name == self.detection.boxes else "scores" if name == self.detection.scores else "tensor"
        return {"classify": "logits", "segment": "class map", "embed": "embedding"}.get(self.task, "tensor")

    @property
    def num_classes(self) -> int | None:
        """The classes of a classifier's output (static), else None."""
        if self.task != "classify" or not self.outputs[0].static:
            return None
        return int(self.outputs[0].shape[1])


# How a TFLite output of each rank may lie against its ONNX output, in the order tried: onnx2tf turns 4-D NCHW
# outputs into NHWC; other ranks keep their order unless their shapes say otherwise.
LAYOUTS = {
    4: (("NHWC (ONNX's NCHW with channels last)", (0, 3, 1, 2)), ("as in ONNX", (0, 1, 2, 3))),
    3: (("as in ONNX", (0, 1, 2)), ("last two axes swapped", (0, 2, 1))),
}


def to_onnx_layout(output: np.ndarray, spec: TensorSpec) -> tuple[np.ndarray, str]:
    """A TFLite output (N x its shape) moved into its ONNX output's layout, and which layout it had."""
    wanted = tuple(spec.shape[1:])
    for layout, axes in LAYOUTS.get(output.ndim, (("as in ONNX", tuple(range(output.ndim))),)):
        moved = output.transpose(axes)
        if moved.shape[1:] == wanted:
            return moved, layout
    raise ValueError(f"output '{spec.name}' is {list(output.shape[1:])} in the .tflite, {list(wanted)} in ONNX")


def match_outputs(names_and_shapes: list[tuple[str, list[int]]], specs: tuple[TensorSpec, ...]) -> list[str | None]:
    """For each TFLite output (its signature name and shape), the ONNX output it is: by name when the converter kept
    the ONNX names, else the one ONNX output whose shape it has in some layout (converters that start from a
    SavedModel call them Identity, Identity_1, ...); None where that is ambiguous."""
    names = {spec.name for spec in specs}
    if {name for name, _ in names_and_shapes} == names:
        return [name for name, _ in names_and_shapes]
    found = []
    for _, shape in names_and_shapes:
        fits = []
        for spec in specs:
            try:
                to_onnx_layout(np.zeros([1, *shape[1:]], np.float32), spec)
                fits.append(spec.name)
            except ValueError:
                pass
        found.append(fits[0] if len(fits) == 1 else None)
    return found


def _detector_outputs(model: OnnxModel, asked: Detection) -> Detection | None:
    """The boxes [1, N, 4] and scores [1, N, C] among the outputs, by the names asked or else by their shapes; None
    when the shapes do not say which (or the model has no such pair)."""
    by_name = {o.name: o for o in model.outputs}
    for flag, name in (("--boxes", asked.boxes), ("--scores", asked.scores)):
        if name is not None and name not in by_name:
            raise OnnxError(f"{flag} '{name}': the model has no such output (its outputs: {', '.join(by_name)})")
    boxes, scores = asked.boxes, asked.scores
    three = [o.name for o in model.outputs if len(o.shape) == 3]
    if boxes is None:
        fours = [name for name in three if by_name[name].shape[2] == 4 and name != scores]
        boxes = fours[0] if len(fours) == 1 else None
    if scores is None:
        rest = [name for name in three if name != boxes]
        scores = rest[0] if len(rest) == 1 else None
    if boxes is None or scores is None:
        return None
    b, c = by_name[boxes].shape, by_name[scores].shape
    if len(b) != 3 or b[2] != 4 or len(c) != 3 or b[1] != c[1]:
        if not asked.given:
            return None
        raise OnnxError(
            f"boxes '{boxes}' {list(b)} and scores '{scores}' {list(c)} are not [1, N, 4] and [1, N, C] with the same "
            "N: name the right outputs with --boxes and --scores"
        )
    count = len(read_anchors(asked.anchors)) if asked.anchors is not None else b[1]
    if count != b[1]:
        raise OnnxError(f"{asked.anchors} has {count} anchors and '{boxes}' {b[1]} boxes: give one anchor per box")
    return replace(asked, boxes=boxes, scores=scores)


def with_task(model: OnnxModel, task: str, asked: Detection = Detection()) -> OnnxModel:
    """`model` with the task the user chose (auto: decided from its outputs), refused where its outputs cannot be it.
    A detector's boxes and scores are found by the names `asked` or by their shapes."""
    if asked.given and task not in ("auto", "detect"):
        raise OnnxError(
            f"--boxes, --scores, --box-format and --anchors describe a detector's outputs, not --task {task}"
        )
    if task in ("auto", "detect"):
        detection = _detector_outputs(model, asked)
        if detection is None and (task == "detect" or asked.given):
            shapes = ", ".join(f"{o.name} {list(o.shape)}" for o in model.outputs)
            raise OnnxError(
                f"a detector needs boxes [1, N, 4] and scores [1, N, C]; this model has {shapes}: name them with "
                "--boxes and --scores, or use --task tensor"
            )
        model = replace(model, detection=detection)
    if task == "auto":
        return model
    ranks = [len(o.shape) for o in model.outputs]
    needs = {
        "classify": ([2], "one [1, C] output"),
        "segment": ([4], "one [1, C, H, W] output"),
        "embed": ([2], "one [1, D] output"),
    }
    if task in needs and ranks != needs[task][0]:
        shapes = ", ".join(f"{o.name} {list(o.shape)}" for o in model.outputs)
        raise OnnxError(f"--task {task} needs {needs[task][1]}; this model has {shapes}: use --task tensor or auto")
    return replace(model, chosen_task=task)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def export_onnx(model: nn.Module, input_size, path: Path) -> OnnxModel:
    """Export with the TorchScript exporter, which keeps the opset and writes one self-contained file."""
    dummy = torch.zeros(1, 3, *hw(input_size))
    try:
        with torch.no_grad():
            returned = model.eval()(dummy)
        count = len(returned) if isinstance(returned, (tuple, list)) else 1
        names = [OUTPUT_NAME] if count == 1 else [f"output_{k}" for k in range(count)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter announces its own deprecation
            torch.onnx.export(
                model.eval(),
                dummy,
                str(path),
                input_names=[INPUT_NAME],
                output_names=names,
                opset_version=OPSET,
                dynamo=False,
                do_constant_folding=True,
            )
    except Exception as exc:  # the exporter raises many types for unsupported modules
        raise OnnxError(
            f"torch.onnx.export failed: {_first_line(exc)}; make the model traceable with "
            f"opset {OPSET} ops, or export it yourself and pass --onnx"
        ) from None
    return describe_onnx(path, exporter=f"torch.onnx.export (TorchScript, torch {torch.__version__})")


def load_onnx(path: Path) -> onnx.ModelProto:
    """Load an ONNX file (with any external data beside it), or raise OnnxError."""
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise OnnxError(f"cannot read ONNX file {path}: {_first_line(exc)}") from None


def image_input(model: onnx.ModelProto):
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    return inputs[0] if len(inputs) == 1 else None


def fix_input_size(model: onnx.ModelProto, size) -> onnx.ModelProto:
    """`model` with its image input fixed at 1x3xHxW: dynamic dimensions (a symbolic batch, height or width, or -1,
    as other frameworks export them) take these values; a static one that differs is an error."""
    image = image_input(model)
    dims = image.type.tensor_type.shape.dim if image is not None else []
    if len(dims) != 4:
        return model  # describe_onnx names the problem
    height, width = hw(size)
    for dim, value, what in zip(dims, (1, 3, height, width), ("batch", "channels", "height", "width")):
        if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != value:
            if what in ("height", "width"):
                raise OnnxError(
                    f"input '{image.name}' has a fixed {what} of {dim.dim_value}: --input-size {size_text(size)} "
                    "contradicts it (leave --input-size out, or give the file's own size)"
                )
            continue
        dim.Clear()
        dim.dim_value = value
    for output in model.graph.output:  # the simplifier infers them again from the fixed input
        for dim in output.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value") or dim.dim_value < 0:
                dim.Clear()
    return model


def describe_onnx(path: Path, exporter: str = "user-supplied") -> OnnxModel:
    """Check that `path` takes one image (1x3xHxW float input, static size) and describe it."""
    model = load_onnx(path)
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or not graph.output:
        raise OnnxError(
            f"{path} has {len(inputs)} inputs and {len(graph.output)} outputs: one image input and at least one "
            "output are supported"
        )
    tensor_type = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim]
    if len(dims) == 4 and dims[1] == 3 and (dims[2] is None or dims[3] is None):
        raise OnnxError(
            f"{path} input '{inputs[0].name}' has a dynamic size {dims}: give --input-size S or HxW to fix it (batch 1)"
        )
    if len(dims) != 4 or dims[0] not in (1, None) or dims[1] != 3:
        raise OnnxError(f"{path} input '{inputs[0].name}' has shape {dims}: expected [1, 3, H, W] (NCHW RGB)")
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise OnnxError(
            f"{path} input '{inputs[0].name}' is {onnx.TensorProto.DataType.Name(tensor_type.elem_type)}, "
            "not FLOAT: export the model with a float32 input"
        )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    outputs = tuple(
        TensorSpec(
            o.name, tuple(d.dim_value if d.HasField("dim_value") else None for d in o.type.tensor_type.shape.dim)
        )
        for o in graph.output
    )
    return OnnxModel(path, exporter, opset, len(graph.node), inputs[0].name, (dims[2], dims[3]), outputs)


_NOT_IN_A_SCOPE_NAME = re.compile(r"[^A-Za-z0-9_.\\/>-]")


def simplify_onnx(src: OnnxModel, dst: Path) -> OnnxModel:
    """Run onnxsim (constant folding, shape inference, dead-node removal) and check the result."""
    try:
        simplified, ok = onnxsim.simplify(load_onnx(src.path))
    except Exception as exc:
        raise OnnxError(f"onnxsim failed on {src.path.name}: {_first_line(exc)}") from None
    if not ok:
        raise OnnxError(f"onnxsim could not verify the simplified {src.path.name} against the original")
    for node in simplified.graph.node:  # TensorFlow takes node names as scope names (Paddle's "Conv@0" fails)
        node.name = _NOT_IN_A_SCOPE_NAME.sub("_", node.name)
    onnx.save(simplified, str(dst))
    return describe_onnx(dst, f"{src.exporter} + onnxsim {onnxsim.__version__}")
