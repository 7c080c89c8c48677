"""The files in the clients apps load them with: MediaPipe Tasks' and the Task Library's ImageClassifier,
ImageSegmenter, ImageEmbedder and ObjectDetector, each run in its own venv (scripts/setup_clients.sh), on every
variant over the held-out photos, pre-cropped as the contract says."""

import json

import numpy as np
import pytest
import torch
from ai_edge_litert import schema_py_generated as schema
from torch.nn import functional as F

from mobile_vision_export.errors import UserError
from mobile_vision_export.export.images import heldout_batch, heldout_photos, pixel_codes
from mobile_vision_export.export.metadata import read_metadata
from mobile_vision_export.export.tflite_inspect import inspect_tflite
from mobile_vision_export.export.tflite_model import read_model
from mobile_vision_export.validate.clients import CLIENTS, ClientError, answers
from mobile_vision_export.validate.gpu import parse_analysis
from mobile_vision_export.validate.metrics import BoxDecoding
from mobile_vision_export.validate.runners import run_tflite, run_tflite_outputs
from tests.conftest import ROOT, run_cli

VARIANTS = ("fp32", "fp16", "dynamic", "int8")


# Each client's own TFLite runs dynamic-range layers with other kernels (LiteRT 2.1 quantizes a layer's input per
# pixel, older runtimes per image). Measured on mobilenet_v2's 194 held-out photos: top-1 equal to our runtime's on
# 96.9-97.4 % (MediaPipe) and 94.3 % (Task Library), as close to float as ours within 2.5 points (MediaPipe 95.9 %,
# Task Library 92.3 %, ours 94.8 %).
DYNAMIC_AGREEMENT = {"mediapipe": 0.95, "task_library": 0.92}
DYNAMIC_SLACK = {"mediapipe": 0.02, "task_library": 0.04}


@pytest.mark.slow
@pytest.mark.parametrize("client", CLIENTS)
def test_clients_answer_as_our_runtime_on_every_variant(mobilenet_imagenet, client):
    _, out = mobilenet_imagenet
    crops = heldout_batch(heldout_photos(), 224)  # 0..1 RGB: the files take pixel / 255 (or the pixels, int8)
    ours = {mode: run_tflite(out / f"mobilenet_v2_{mode}.tflite", crops).argmax(1) for mode in VARIANTS}
    int8 = inspect_tflite(out / "mobilenet_v2_int8.tflite")
    assert int8.inputs[0].dtype == "uint8" and int8.inputs[0].zero_point == 0  # the camera's bytes as they are
    assert abs(int8.inputs[0].scale * 255 - 1) < 1e-6 and int8.outputs[0].dtype == "uint8"
    agreement, with_float = {}, {}
    for mode in VARIANTS:
        top1 = answers(client, "classify", out / f"mobilenet_v2_{mode}.tflite", pixel_codes(crops))
        reference = ours["fp32"] if mode in ("fp32", "fp16") else ours[mode]
        agreement[mode], with_float[mode] = (
            float(np.mean(top1 == reference)),
            float(np.mean(top1 == ours["fp32"])),
        )
    assert min(agreement["fp32"], agreement["fp16"], agreement["int8"]) >= 0.99, agreement
    assert agreement["dynamic"] >= DYNAMIC_AGREEMENT[client], agreement
    ours_with_float = float(np.mean(ours["dynamic"] == ours["fp32"]))
    assert with_float["dynamic"] >= ours_with_float - DYNAMIC_SLACK[client], with_float
    parity = {r["variant"]: r for r in json.loads((out / "parity.json").read_text())["parity"]}
    assert parity["int8"]["metrics"]["top1_agreement"] == pytest.approx(
        float(np.mean(ours["int8"] == ours["fp32"])), abs=0.01
    )


@pytest.mark.slow
def test_evaluate_compares_a_client_and_records_its_version(mobilenet_imagenet, tmp_path):
    folder, out = mobilenet_imagenet
    model = out / "mobilenet_v2_int8.tflite"
    args = [str(model), "--val-dir", str(folder / "val"), "--client", "task_library", "--out", str(tmp_path)]
    proc = run_cli("pipeline.evaluate", *args, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "task_library: top-1 equal to our runtime's on 100.0% of photos" in proc.stdout
    record = json.loads((tmp_path / "evaluate.json").read_text())["client"]
    assert record["version"] == "tflite-support==0.4.4" and record["top1_agreement_with_our_runtime"] == 1.0


def test_a_client_that_is_not_set_up_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("MVE_CLIENTS", str(tmp_path))
    with pytest.raises(ClientError, match="run scripts/setup_clients.sh") as caught:
        answers("mediapipe", "classify", tmp_path / "m.tflite", np.zeros((1, 8, 8, 3), np.uint8))
    assert isinstance(caught.value, UserError)


@pytest.mark.slow
def test_gpu_delegate_readiness_is_reported_for_every_variant(shufflenet_variants):
    record = json.loads((shufflenet_variants / "parity.json").read_text())["gpu_delegate"]
    assert set(record) == set(VARIANTS)
    for mode, readiness in record.items():
        summary = inspect_tflite(shufflenet_variants / f"shufflenet_v2_x0_5_{mode}.tflite")
        assert readiness["ops"] == summary.op_count and readiness["analyzer"].startswith("TensorFlow Lite analyzer")
    report = (shufflenet_variants / "report.md").read_text()
    assert "## GPU delegate readiness" in report and "Dynamic-range layers (dynamic) quantize" in report
    assert "<h2>GPU delegate readiness</h2>" in (shufflenet_variants / "report.html").read_text()


def test_analyzer_warnings_name_the_ops_the_gpu_delegate_would_leave():
    text = (
        "Subgraph#0 main(T#0) -> [T#3]\n"
        "  Op#0 CONV_2D(T#0, T#1, T#2) -> [T#4]\n"
        "  Op#1 CUSTOM_THING(T#4) -> [T#3]\n"
        "GPU COMPATIBILITY WARNING: Not supported custom op CUSTOM_THING\n"
        "\nGPU COMPATIBILITY WARNING: Subgraph#0 has GPU delegate compatibility issues at nodes 1 on TFLite runtime "
        "version 2.19.0\n"
    )
    readiness = parse_analysis(text)
    assert readiness.ops == 2 and readiness.refused == [(1, "CUSTOM_THING", "Not supported custom op CUSTOM_THING")]
    assert readiness.summary().startswith("1 of 2 ops would fall back to the CPU")
    assert readiness.runtime == "TensorFlow Lite analyzer 2.19.0"


def _export(tmp_path, model: str, size: int, *flags: str):
    proc = run_cli(
        "pipeline.export", "--model", model, "--input-size", str(size), *flags, "--out", "out", tmp_path=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path / "out" / model.rsplit("/", 1)[-1].replace(".py:", "_")


@pytest.mark.slow
@pytest.mark.parametrize("client", CLIENTS)
def test_clients_segment_and_embed_as_our_runtime(tmp_path, client):
    """ImageSegmenter takes every variant of a segmenter (the float ones need the metadata's normalization) and finds
    the labels packed in it; MediaPipe's category mask is our class map resized to the photo (bilinear, corners
    aligned) and then argmax, the Task Library's the argmax at the output's own size, except that it reads scores
    as probabilities: where every class scores below 0 it gives class 0 (2.7 % of this model's pixels). ImageEmbedder
    gives the embedding our runtime computes."""
    (tmp_path / "labels.txt").write_text("background\nroad\nsky\ncar\nperson\n")
    out = _export(
        tmp_path, f"{ROOT / 'tests' / 'data' / 'vision_models.py'}:seg", 64, "--labels", "labels.txt", "--quant", "all"
    )
    assert read_metadata(out / "vision_models_seg_int8.tflite").labels[:2] == ["background", "road"]
    crops = heldout_batch(heldout_photos()[:16], 64)
    for mode in VARIANTS:
        model = out / f"vision_models_seg_{mode}.tflite"
        (class_map,) = run_tflite_outputs(model, crops).values()
        logits = torch.from_numpy(class_map.astype(np.float32)).permute(0, 3, 1, 2)
        if client == "mediapipe":
            ours = F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=True).argmax(1).numpy()
        else:
            ours = np.where(class_map.max(-1) < 0, 0, class_map.argmax(-1))
        masks = answers(client, "segment", model, pixel_codes(crops))
        # int8: the Task Library breaks ties between equal int8 scores its own way (0.3 % of pixels)
        assert masks.shape == ours.shape and float(np.mean(masks == ours)) >= 0.995, mode
    out = _export(
        tmp_path, f"{ROOT / 'tests' / 'data' / 'tiny_model.py'}:build", 32, "--task", "embed", "--quant", "all"
    )
    crops = heldout_batch(heldout_photos()[:16], 32)
    for mode in VARIANTS:
        model = out / f"tiny_model_build_{mode}.tflite"
        (ours,) = run_tflite_outputs(model, crops).values()
        embeddings = answers(client, "embed", model, pixel_codes(crops))
        np.testing.assert_allclose(embeddings, ours, atol=1e-5 * np.abs(ours).max(), err_msg=mode)


@pytest.mark.slow
@pytest.mark.parametrize("client", CLIENTS)
def test_clients_run_a_float_output_layer_as_our_runtime(tmp_path, client):
    """--int8-output float runs the output's fully-connected layer in dynamic-range form on its int8 weights, put on
    one per-tensor grid at the converter's op version for that (9). Written per channel under its int8 version (4),
    the Task Library loaded it and answered one class for every photo (mobilenet_v2); per channel at 12 it refuses
    the file."""
    out = _export(
        tmp_path,
        f"{ROOT / 'tests' / 'data' / 'tiny_model.py'}:build",
        32,
        *("--task", "embed", "--quant", "int8", "--int8-output", "float"),
    )
    model = out / "tiny_model_build_int8.tflite"
    codes = read_model(model).operatorCodes  # only the codes the ops use: the int8 layer's (4) is gone
    fully_connected = [code.version for code in codes if code.builtinCode == schema.BuiltinOperator.FULLY_CONNECTED]
    assert fully_connected == [9]
    assert "Dynamic-range layers (int8) quantize their float input at run time" in (out / "report.md").read_text()
    crops = heldout_batch(heldout_photos()[:16], 32)
    (ours,) = run_tflite_outputs(model, crops).values()
    assert ours.dtype == np.float32
    embeddings = answers(client, "embed", model, pixel_codes(crops))
    np.testing.assert_allclose(embeddings, ours, atol=1e-5 * np.abs(ours).max())


@pytest.mark.slow
def test_mediapipe_detects_as_our_decoding(tmp_path):
    """ObjectDetector takes a detector with SSD offsets in TensorFlow's order once the metadata carries its anchors
    (MediaPipe decodes the raw outputs itself): its best detection per photo is the box, class and score our own
    decoding of the same file gives, on every variant (int8 with float outputs: MediaPipe refuses int8 ones)."""
    grid = (np.arange(8) + 0.5) / 8  # one anchor per cell of the head's 8 x 8 map, row by row
    anchors = np.array([[x, y, 0.1, 0.1] for y in grid for x in grid])
    np.savetxt(tmp_path / "anchors.txt", anchors)
    flags = ["--box-format", "anchor-yxhw", "--anchors", "anchors.txt", "--int8-output", "float", "--quant", "all"]
    out = _export(tmp_path, f"{ROOT / 'tests' / 'data' / 'vision_models.py'}:det_raw", 64, *flags)
    decoding = BoxDecoding("anchor-yxhw", anchors, (10.0, 10.0, 5.0, 5.0))
    crops = heldout_batch(heldout_photos()[:12], 64)
    for mode in VARIANTS:
        model = out / f"vision_models_det_raw_{mode}.tflite"
        outputs = run_tflite_outputs(model, crops)
        boxes, logits = outputs["output_0"], outputs["output_1"]
        found = answers("mediapipe", "detect", model, pixel_codes(crops))
        compared = 0
        for i, (x, y, w, h, category, score) in enumerate(found):
            box, kind = np.unravel_index(np.argmax(logits[i]), logits[i].shape)
            corners = decoding.corners(boxes[i : i + 1])[0, box]
            assert category == kind and score == pytest.approx(1 / (1 + np.exp(-logits[i, box, kind])), abs=1e-4)
            if corners.min() >= 0 and corners.max() <= 1:  # MediaPipe clips boxes to the image
                compared += 1
                pixels = np.array([corners[0], corners[1], corners[2] - corners[0], corners[3] - corners[1]]) * 64
                np.testing.assert_allclose([x, y, w, h], pixels, atol=1.5, err_msg=mode)  # it truncates to ints
        assert compared >= len(crops) // 2, mode
