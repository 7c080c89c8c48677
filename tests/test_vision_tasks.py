"""Models that are not square single-output classifiers: every output compared with ONNX Runtime's by name, in its
ONNX layout, with the task's own metrics."""

import json

import numpy as np
import pytest
import torch

from mobile_vision_export.export.images import heldout_batch, heldout_photos
from mobile_vision_export.export.metadata import ends_in_probabilities, read_metadata
from mobile_vision_export.export.onnx_graph import (
    Detection,
    OnnxError,
    OnnxModel,
    TensorSpec,
    read_anchors,
    to_onnx_layout,
    with_task,
)
from mobile_vision_export.int8.tuning import CHECKS
from mobile_vision_export.models.weights import sha256_file
from mobile_vision_export.validate.metrics import (
    BoxDecoding,
    compare,
    detection_agreement,
    segmentation_agreement,
    top_k_score_overlap,
)
from mobile_vision_export.validate.runners import run_onnx_outputs, run_tflite_outputs
from mobile_vision_export.validate.thresholds import failures, thresholds_for
from tests.conftest import ROOT, error_lines, run_cli

MODELS = ROOT / "tests" / "data" / "vision_models.py"


def _graph(*shapes) -> OnnxModel:
    outputs = tuple(TensorSpec(f"out{k}", shape) for k, shape in enumerate(shapes))
    return OnnxModel(ROOT, "test", 17, 1, "input", (64, 64), outputs)


def test_the_task_comes_from_the_outputs():
    assert _graph((1, 1000)).task == "classify" and _graph((1, 1000)).num_classes == 1000
    assert _graph((1, 5, 32, 32)).task == "segment"
    assert _graph((1, 1, 64, 64)).task == "tensor"  # a one-channel probability map
    assert _graph((1, 64, 4), (1, 64, 6)).task == "tensor" and _graph((1, 64, 4), (1, 64, 6)).num_classes is None


def test_a_detectors_boxes_and_scores_are_found_or_named():
    found = with_task(_graph((1, 64, 6), (1, 64, 4)), "auto")
    assert found.task == "detect" and (found.detection.boxes, found.detection.scores) == ("out1", "out0")
    assert [found.kind(o.name) for o in found.outputs] == ["scores", "boxes"]
    assert with_task(_graph((1, 64, 4), (1, 64, 4)), "auto").task == "tensor"  # either could be the boxes
    assert with_task(_graph((1, 64, 4), (1, 32, 6)), "auto").task == "tensor"  # not one score row per box
    named = with_task(_graph((1, 64, 4), (1, 64, 4)), "detect", Detection(boxes="out1", box_format="cxcywh"))
    assert (named.detection.boxes, named.detection.scores, named.detection.box_format) == ("out1", "out0", "cxcywh")
    with pytest.raises(OnnxError, match="--boxes 'bbox': the model has no such output"):
        with_task(_graph((1, 64, 4), (1, 64, 6)), "auto", Detection(boxes="bbox"))
    with pytest.raises(OnnxError, match="a detector needs boxes"):
        with_task(_graph((1, 10)), "detect")
    with pytest.raises(OnnxError, match="not --task segment"):
        with_task(_graph((1, 5, 8, 8)), "segment", Detection(box_format="xyxy"))


def test_detections_reproduced_counts_class_and_overlap():
    """Decoded as an app would (best class per box, NMS per class, a score cut), then matched one to one."""
    boxes = np.array([[[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [20, 20, 30, 30]]], np.float32)
    scores = np.array([[[0.9, 0.0], [0.8, 0.0], [0.0, 0.7], [0.2, 0.1]]], np.float32)
    same = detection_agreement((boxes, scores), (boxes, scores), BoxDecoding("xyxy"), 0.5)
    # the second box overlaps the first (IoU 0.68) with the same class: NMS keeps one; the last is below the cut
    assert same == {"detections_reproduced": 1.0, "reference_detections": 2, "candidate_detections": 2}
    moved = boxes.copy()
    moved[0, 2] += 100  # the third box far away
    assert (
        detection_agreement((boxes, scores), (moved, scores), BoxDecoding("xyxy"), 0.5)["detections_reproduced"] == 0.5
    )
    swapped = scores[..., ::-1].copy()  # every class the other one
    assert (
        detection_agreement((boxes, scores), (boxes, swapped), BoxDecoding("xyxy"), 0.5)["detections_reproduced"] == 0.0
    )
    centred = np.concatenate([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], axis=-1)
    assert detection_agreement((centred, scores), (centred, scores), BoxDecoding("cxcywh"), 0.5) == same
    flipped = boxes[..., [2, 3, 0, 1]].copy()  # corners the other way round: the same regions
    assert detection_agreement((flipped, scores), (flipped, scores), BoxDecoding("xyxy"), 0.5) == same
    assert top_k_score_overlap(scores, scores, 0.5, k=3) == 1.0
    assert top_k_score_overlap(scores, swapped, 0.5, k=1) == 0.0


def test_anchored_boxes_are_decoded_as_ssd_does(tmp_path):
    """SSD offsets from anchors decode to the boxes they encode, in torchvision's order and TensorFlow's, with the
    scales given; a detector's anchors must match its boxes and its box format."""
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [20, 20, 30, 30]], np.float64)
    anchors = np.array([[4, 6, 8, 8], [6, 6, 10, 12], [55, 50, 5, 20], [25, 25, 10, 10]], np.float64)
    centre, size = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
    scales = (10.0, 10.0, 5.0, 5.0)
    xywh = np.concatenate([(centre - anchors[:, :2]) / anchors[:, 2:] * 10, np.log(size / anchors[:, 2:]) * 5], 1)
    decoded = BoxDecoding("anchor-xywh", anchors, scales).corners(xywh[None])
    np.testing.assert_allclose(decoded[0], boxes, atol=1e-9)
    yxhw = xywh[:, [1, 0, 3, 2]]
    np.testing.assert_allclose(BoxDecoding("anchor-yxhw", anchors, scales).corners(yxhw[None])[0], boxes, atol=1e-9)
    plain = BoxDecoding("anchor-xywh", anchors, (1.0, 1.0, 1.0, 1.0)).corners((xywh / [10, 10, 5, 5])[None])
    np.testing.assert_allclose(plain[0], boxes, atol=1e-9)
    wild = BoxDecoding("anchor-xywh", anchors, scales).corners(np.full((1, 4, 4), 1e6))
    assert np.isfinite(wild).all()  # int8 garbage makes huge boxes, never inf

    scores = np.array([[[0.9, 0.0], [0.8, 0.0], [0.0, 0.7], [0.2, 0.1]]], np.float32)
    decoding = BoxDecoding("anchor-xywh", anchors, scales)
    same = detection_agreement((xywh[None], scores), (xywh[None], scores), decoding, 0.5)
    assert same == {"detections_reproduced": 1.0, "reference_detections": 2, "candidate_detections": 2}

    text, npy = tmp_path / "anchors.txt", tmp_path / "anchors.npy"
    np.savetxt(text, anchors)
    np.save(npy, anchors)
    np.testing.assert_array_equal(read_anchors(text), anchors)
    graph = _graph((1, 4, 4), (1, 4, 2))
    found = with_task(graph, "auto", Detection(box_format="anchor-xywh", anchors=npy)).detection
    assert (found.boxes, found.scores, found.anchors) == ("out0", "out1", npy)
    Detection(box_format="anchor-yxhw", anchors=text).check()
    with pytest.raises(OnnxError, match="has 4 anchors and 'out0' 8 boxes: give one anchor per box"):
        with_task(_graph((1, 8, 4), (1, 8, 2)), "auto", Detection(box_format="anchor-xywh", anchors=npy))
    with pytest.raises(OnnxError, match="decodes offsets from anchors: add --anchors FILE"):
        Detection(box_format="anchor-xywh").check()
    with pytest.raises(OnnxError, match="--anchors goes with --box-format anchor-xywh or anchor-yxhw"):
        Detection(box_format="xyxy", anchors=npy).check()
    with pytest.raises(OnnxError, match="anchors file not found"):
        Detection(box_format="anchor-xywh", anchors=tmp_path / "nope.npy").check()
    np.save(npy, anchors[:, :3])
    with pytest.raises(OnnxError, match=r"have shape \[4, 3\]: need N rows of centre x, centre y, w, h"):
        read_anchors(npy)
    text.write_text("1 2 3 0\n")
    with pytest.raises(OnnxError, match="positive widths and heights"):
        read_anchors(text)
    with pytest.raises(OnnxError, match="give four positive numbers"):
        Detection(box_format="anchor-xywh", anchors=npy, box_scales=(10.0, 10.0, 0.0, 5.0)).check()
    # only the reference's scores above the cut are ranked: the order of near-zero scores is noise
    ranked = np.array([[[0.9], [0.8], [1e-4], [2e-4], [3e-4], [4e-4]]], np.float32)
    reordered = ranked[:, [0, 1, 5, 4, 3, 2]]
    assert top_k_score_overlap(ranked, reordered, 0.5, k=3) == 1.0  # not 2/3, as the 3 highest would give
    assert top_k_score_overlap(ranked, ranked, 2.0) is None


def test_a_wrongly_transposed_output_fails_parity():
    """onnx2tf gives 4-D outputs NHWC; mapped back they match. An output whose height and width are swapped has the
    same shape and must fail, not pass by reshaping."""
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(4, 5, 8, 8)).astype(np.float32)
    spec = TensorSpec("classes", (1, 5, 8, 8))
    right, layout = to_onnx_layout(reference.transpose(0, 2, 3, 1), spec)
    assert layout.startswith("NHWC") and np.array_equal(right, reference)
    wrong, _ = to_onnx_layout(reference.transpose(0, 3, 2, 1), spec)  # W and H swapped
    metrics = compare(reference.reshape(4, -1), wrong.reshape(4, -1))
    assert failures(metrics, thresholds_for("fp32")), metrics
    assert segmentation_agreement(reference, wrong)["pixel_agreement"] < 0.5
    with pytest.raises(ValueError, match="is \\[8, 8, 4\\] in the .tflite"):
        to_onnx_layout(rng.normal(size=(1, 8, 8, 4)).astype(np.float32), spec)


def _sqnr(output: dict) -> float:
    return float("inf") if output["sqnr_db"] is None else output["sqnr_db"]  # identical outputs: null in JSON


def _export(tmp_path, factory: str, *flags: str) -> tuple[dict, dict, object]:
    args = ["--model", f"{MODELS}:{factory}", "--input-size", "64", "--quant", "all", *flags, "--out", "out"]
    proc = run_cli("pipeline.export", *args, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out" / f"vision_models_{factory}"
    return json.loads((out / "parity.json").read_text()), json.loads((out / "preprocess.json").read_text()), out


@pytest.mark.slow
def test_a_segmenter_is_compared_per_pixel(tmp_path):
    record, contract, out = _export(tmp_path, "seg")
    assert record["model"]["task"] == "segment" and contract["task"] == "segment"
    assert not (out / "labels.txt").exists()  # no classes named: no labels file
    rows = {r["variant"]: r for r in record["parity"]}
    for variant in ("onnx", "fp32"):
        assert _sqnr(rows[variant]["outputs"]["logits"]) > 60
    assert rows["fp32"]["outputs"]["logits"]["layout"].startswith("NHWC")
    assert contract["variants"]["int8"]["outputs"][0]["shape"] == [1, 32, 32, 5]
    # the int8 class map's agreement, counted here from the files themselves
    crops = heldout_batch(heldout_photos(), 64)
    reference = run_onnx_outputs(out / "vision_models_seg_simplified.onnx", crops.transpose(0, 3, 1, 2).copy())
    int8 = run_tflite_outputs(out / "vision_models_seg_int8.tflite", crops)["logits"].transpose(0, 3, 1, 2)
    counted = segmentation_agreement(reference["logits"], int8)
    assert rows["int8"]["outputs"]["logits"]["pixel_agreement"] == pytest.approx(counted["pixel_agreement"])
    assert rows["int8"]["outputs"]["logits"]["mean_iou"] == pytest.approx(counted["mean_iou"])
    # the steps that judge every output compare the class map in ONNX's layout: near parity's figure, not the
    # -2 dB that the file's NHWC order against ONNX's NCHW gives; the tuning's replica computes the map as the file
    ranges = record["model"]["int8_activation_ranges"]["calibration_sqnr_db"]["min-max"]
    assert abs(ranges - _sqnr(rows["int8"]["outputs"]["logits"])) < 3
    assert abs(record["model"]["int8_tuning"]["replica_checks"][0][1] - ranges) < 1
    assert record["model"]["int8_fitted_rounding"]["selection_crops"] == 32


@pytest.mark.slow
def test_a_two_output_detector_head_is_compared_per_output(tmp_path):
    record, contract, out = _export(tmp_path, "det", "--box-format", "cxcywh", "--score-threshold", "0.2")
    assert record["model"]["task"] == "detect"
    assert [(o["name"], o["kind"]) for o in contract["outputs"]] == [("output_0", "boxes"), ("output_1", "scores")]
    assert contract["output"]["box_format"] == "cxcywh"
    for row in record["parity"]:
        assert set(row["outputs"]) == {"output_0", "output_1"}, row["variant"]
        scores = row["outputs"]["output_1"]
        assert 0 <= scores["top_k_score_overlap"] <= 1 and scores["reference_detections"] > 0
        if row["variant"] in ("onnx", "fp32"):
            assert min(_sqnr(o) for o in row["outputs"].values()) > 60
            assert scores["detections_reproduced"] == 1.0 and scores["top_k_score_overlap"] == 1.0
    assert "| int8 | output_1 |" in (out / "report.md").read_text()  # the per-output table with the task metrics
    # bias correction judged both outputs together, each in its ONNX layout and scaled by its RMS
    assert record["model"]["int8_bias_correction"]["calibration_sqnr_db_before"] > 40
    tuning = record["model"]["int8_tuning"]  # the sigmoid heads (LOGISTIC) are in the replica: it runs on them
    int8 = next(r for r in record["parity"] if r["variant"] == "int8")
    assert tuning["skipped"] is None and abs(tuning["replica_checks"][0][1] - int8["metrics"]["sqnr_db"]) < 3
    names = {o["onnx_name"] for o in contract["variants"]["int8"]["outputs"]}
    assert names == {"output_0", "output_1"} and contract["variants"]["int8"]["input"]["dtype"] == "uint8"
    for mode in ("fp32", "int8"):  # generic metadata: the image input and every output under its ONNX name
        metadata = read_metadata(out / f"vision_models_det_{mode}.tflite")
        assert set(metadata.outputs) == names and metadata.size == (64, 64) and metadata.labels == []
        for entry in contract["variants"][mode]["outputs"]:  # both heads end in a sigmoid, then reshapes
            assert ends_in_probabilities(out / f"vision_models_det_{mode}.tflite", entry["name"]), entry


@pytest.mark.slow
def test_the_tuning_trains_every_output_of_a_two_output_head(tmp_path):
    """Raw box offsets and class logits: the replica computes both, each judged in the file's layout and scaled by
    its RMS; its first check agrees with the ranges' figure (ONNX's layout, the int8 file's own run). The offsets
    are decoded from anchors (SSD's way) to compare detections."""
    grid = (np.arange(8) + 0.5) / 8  # one anchor per cell of the head's 8 x 8 map, row by row
    anchors = np.array([[x, y, 0.25, 0.25] for y in grid for x in grid])
    np.savetxt(tmp_path / "anchors.txt", anchors)
    args = ["--model", f"{MODELS}:det_raw", "--input-size", "64", "--quant", "int8", "--out", "out"]
    decoding = ["--box-format", "anchor-xywh", "--anchors", "anchors.txt", "--score-threshold", "0"]
    proc = run_cli("pipeline.export", *args, *decoding, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out" / "vision_models_det_raw"
    record = json.loads((out / "parity.json").read_text())
    model = record["model"]
    tuning, ranges = model["int8_tuning"], model["int8_activation_ranges"]["calibration_sqnr_db"]["min-max"]
    assert model["task"] == "detect" and tuning["steps"] >= min(CHECKS)
    assert abs(tuning["replica_checks"][0][1] - ranges) < 1
    (int8,) = [r for r in record["parity"] if r["variant"] == "int8"]
    int8_outputs = json.loads((out / "preprocess.json").read_text())["variants"]["int8"]["outputs"]
    assert not any(ends_in_probabilities(out / "vision_models_det_raw_int8.tflite", o["name"]) for o in int8_outputs)
    scores = int8["outputs"]["output_1"]
    assert scores["reference_detections"] > 0 and 0.5 < scores["detections_reproduced"] <= 1
    contract = json.loads((out / "preprocess.json").read_text())["output"]
    assert contract["box_format"] == "anchor-xywh" and contract["box_scales"] == [10.0, 10.0, 5.0, 5.0]
    assert contract["anchors"]["count"] == 64
    assert contract["anchors"]["sha256"] == sha256_file(tmp_path / "anchors.txt")
    proc = run_cli("pipeline.export", *args, "--box-format", "anchor-yxhw", tmp_path=tmp_path)
    assert proc.returncode == 2 and "add --anchors FILE" in error_lines(proc.stderr)[0]
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no partial folder left, the export kept


@pytest.mark.slow
def test_an_embedder_gets_no_labels_and_neighbour_agreement(tmp_path):
    """A 128-d L2-normalised embedding: no labels file, no top-1; cosine, SQNR and nearest-neighbour agreement."""
    record, contract, out = _export(tmp_path, "embedder", "--task", "embed")
    assert record["model"]["task"] == "embed" and not (out / "labels.txt").exists()
    assert contract["outputs"] == [{"name": "logits", "onnx_shape": [1, 128], "kind": "embedding"}]
    rows = {r["variant"]: r for r in record["parity"]}
    assert _sqnr(rows["fp32"]["outputs"]["logits"]) > 60 and rows["int8"]["outputs"]["logits"]["sqnr_db"] > 25
    assert 0 <= rows["int8"]["outputs"]["logits"]["nearest_neighbour_agreement"] <= 1
    assert rows["int8"]["thresholds"]["min_top1"] == 0  # no top-1 for an embedding


def _dynamic_onnx(module, path, size) -> None:
    """`module` as other frameworks export it: batch, height and width symbolic."""
    torch.onnx.export(
        module.eval(),
        torch.zeros(1, 3, *size),
        str(path),
        input_names=["images"],
        output_names=["out"],
        dynamic_axes={"images": {0: "n", 2: "h", 3: "w"}, "out": {0: "n"}},
        dynamo=False,
    )


@pytest.mark.slow
def test_a_dynamic_size_onnx_classifier_exports_at_48x192(tmp_path):
    """A text-line-shaped input: height 48, width 192. Photos are scaled to cover 55x219 and centre-cropped."""
    from tests.data.tiny_model import build

    torch.manual_seed(0)
    _dynamic_onnx(build(), tmp_path / "lines.onnx", (32, 32))
    args = ["--onnx", "lines.onnx", "--input-size", "48x192", "--quant", "all", "--calib-samples", "64", "--out", "out"]
    proc = run_cli("pipeline.export", *args, tmp_path=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    out = tmp_path / "out" / "lines"
    record, contract = (json.loads((out / name).read_text()) for name in ("parity.json", "preprocess.json"))
    assert contract["input_size"] == [48, 192] and contract["resize"]["cover"] == [55, 219]
    assert record["model"]["input_size"] == [48, 192]
    assert contract["variants"]["int8"]["input"]["shape"] == [1, 48, 192, 3]
    rows = {r["variant"]: r for r in record["parity"]}
    assert set(rows) == {"fp32", "fp16", "dynamic", "int8"} and _sqnr(rows["fp32"]["outputs"]["out"]) > 60
    assert rows["int8"]["outputs"]["out"]["sqnr_db"] > 10  # a random-weight network: read SQNR, not top-1
    assert read_metadata(out / "lines_int8.tflite").size == (192, 48)  # width, height
    # the held-out crops the export compared on are the contract's: ONNX Runtime on them gives the parity's reference
    crops = heldout_batch(heldout_photos()[:8], contract["input_size"])
    assert crops.shape == (8, 48, 192, 3)


@pytest.mark.slow
def test_a_dynamic_size_onnx_text_detector_exports_at_640(tmp_path):
    """A dense [1, 1, H, W] probability map from an ONNX file with symbolic sizes, fixed at 640x640."""
    from tests.data.vision_models import TextDet

    torch.manual_seed(0)
    _dynamic_onnx(TextDet(), tmp_path / "text.onnx", (64, 64))
    args = ["--onnx", "text.onnx", "--input-size", "640", "--quant", "all", "--calib-samples", "32", "--out", "out"]
    proc = run_cli("pipeline.export", *args, tmp_path=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    out = tmp_path / "out" / "text"
    record, contract = (json.loads((out / name).read_text()) for name in ("parity.json", "preprocess.json"))
    assert record["model"]["task"] == "tensor" and contract["outputs"] == [
        {"name": "out", "onnx_shape": [1, 1, 640, 640], "kind": "tensor"}
    ]
    rows = {r["variant"]: r for r in record["parity"]}
    assert _sqnr(rows["fp32"]["outputs"]["out"]) > 60
    assert contract["variants"]["int8"]["outputs"][0]["shape"] == [1, 640, 640, 1]
    assert rows["int8"]["outputs"]["out"]["cosine_mean"] > 0.9
    assert rows["int8"]["metrics"]["top1_agreement"] is None and "top-1" not in proc.stderr  # a map has no top-1


@pytest.mark.slow
def test_two_outputs_keep_their_names_in_every_file_and_the_layout_pass_checks_both(tmp_path):
    """Class scores and the pooled features behind them, after a channel shuffle: the layout pass rewrites the
    shuffle's island in every variant, checked on both outputs; every file, with or without a signature (the
    converter writes some variants without one), names its outputs as the ONNX graph does, so the int8 steps pair
    the float twin's outputs by name."""
    model = f"{ROOT / 'tests' / 'data' / 'tiny_model.py'}:shuffle_two_heads"
    proc = run_cli(
        "pipeline.export", "--model", model, "--input-size", "64", "--quant", "all", "--out", "out", tmp_path=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out" / "tiny_model_shuffle_two_heads"
    record = json.loads((out / "parity.json").read_text())
    layout = record["model"]["graph_optimization"]
    assert all(v["applied"] and v["islands_rewritten"] == 1 for v in layout.values()), layout
    for mode in ("fp32", "fp16", "dynamic", "int8"):
        outputs = run_tflite_outputs(out / f"tiny_model_shuffle_two_heads_{mode}.tflite", np.zeros((1, 64, 64, 3)))
        assert set(outputs) == {"output_0", "output_1"}, mode
    rows = {r["variant"]: r for r in record["parity"]}
    assert min(_sqnr(o) for o in rows["fp32"]["outputs"].values()) > 60
    tuning = record["model"]["int8_tuning"]
    assert tuning["skipped"] is None and abs(tuning["replica_checks"][0][1] - rows["int8"]["metrics"]["sqnr_db"]) < 3
