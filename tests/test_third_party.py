"""Trained third-party ONNX files as a registry package ships them (rapidocr-onnxruntime's PP-OCRv4 models, exported
from PaddlePaddle with dynamic dimensions, -1 for the batch and Paddle's node names): exported from the user's
folder with the installed script."""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mobile_vision_export.export.images import heldout_batch, heldout_photos
from tests.conftest import run_cli
from tests.data.text_lines import ANGLES, draw
from tests.test_tuning import _op_by_op

MODELS = Path(importlib.util.find_spec("rapidocr_onnxruntime").submodule_search_locations[0]) / "models"


@pytest.mark.slow
def test_pp_ocr_text_direction_classifier_at_48x192_on_your_text_lines(tmp_path):
    shutil.copyfile(MODELS / "ch_ppocr_mobile_v2.0_cls_infer.onnx", tmp_path / "cls.onnx")
    draw(tmp_path / "calib", 60, seed=1, by_class=False)
    draw(tmp_path / "val", 60, seed=2, by_class=True)
    (tmp_path / "labels.txt").write_text("\n".join(ANGLES) + "\n")
    args = ["--onnx", "cls.onnx", "--input-size", "48x192", "--quant", "all", "--labels", "labels.txt"]
    args += ["--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--calib-dir", "calib", "--val-dir", "val"]
    proc = run_cli("pipeline.export", *args, "--out", "out", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "cls" / "parity.json").read_text())
    rows = {r["variant"]: r for r in record["parity"]}
    assert rows["fp32"]["metrics"]["sqnr_db"] > 60
    accuracy = {r["model"]: r for r in record["accuracy_on_your_photos"]["models"]}
    assert accuracy["onnxruntime"]["top1"] > 0.85  # it reads the direction of the text drawn here
    assert accuracy["int8"]["top1"] >= accuracy["onnxruntime"]["top1"] - 0.05


@pytest.mark.slow
def test_pp_ocr_text_detector_map_at_fp32(tmp_path):
    """The [N, 1, H, W] probability map: on photos without text most of it is ~1e-30 from ONNX Runtime and 0 from
    XNNPACK; those photos agree (cosine 1), not 0."""
    shutil.copyfile(MODELS / "ch_PP-OCRv4_det_infer.onnx", tmp_path / "det.onnx")
    proc = run_cli("pipeline.export", "--onnx", "det.onnx", "--input-size", "160", "--quant", "fp32", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "artifacts" / "det" / "parity.json").read_text())
    (fp32,) = [r for r in record["parity"] if r["variant"] == "fp32"]
    assert record["model"]["task"] == "tensor" and fp32["metrics"]["sqnr_db"] > 60
    assert fp32["metrics"]["cosine_min"] > 0.999


@pytest.mark.slow
def test_pp_ocr_text_detector_int8_is_tuned_with_a_replica_of_every_op(tmp_path):
    """PP-LCNetV3's hard-swish, squeeze-excitation and affine blocks, the DB head's nearest upsampling, transposed
    convolutions and sigmoid: the tuning's replica computes each op of the real int8 file as the kernels do, so the
    tuning runs on it (at 320x320 on drawn text scenes it gains 1 dB: docs/known-limits.md)."""
    shutil.copyfile(MODELS / "ch_PP-OCRv4_det_infer.onnx", tmp_path / "det.onnx")
    args = ["--onnx", "det.onnx", "--input-size", "160", "--quant", "int8", "--int8-io", "int8"]
    proc = run_cli("pipeline.export", *args, tmp_path=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: parity on photos without text (see known-limits)
    out = tmp_path / "artifacts" / "det"
    tuning = json.loads((out / "parity.json").read_text())["model"]["int8_tuning"]
    assert tuning["skipped"] is None and tuning["steps"] >= 20
    images = heldout_batch(heldout_photos()[:2], 160).astype(np.float32)
    kinds, differing, total = _op_by_op(out / "det_int8.tflite", images)
    assert {"HARD_SWISH", "TRANSPOSE_CONV", "RESIZE_NEAREST_NEIGHBOR", "LOGISTIC"} <= kinds
    assert differing < 0.005 * total
