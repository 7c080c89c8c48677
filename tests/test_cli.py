"""The command line, end to end, with real conversions and the network blocked."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter

from mobile_vision_export.errors import UserError
from mobile_vision_export.export.images import heldout_batch, heldout_photos, pixel_codes
from mobile_vision_export.export.onnx_graph import export_onnx
from mobile_vision_export.pipeline import run
from mobile_vision_export.pipeline.export import main as export_main
from mobile_vision_export.validate.metrics import compare
from mobile_vision_export.validate.runners import run_onnx, run_tflite
from tests.conftest import error_lines, network_attempts, run_cli
from tests.data.tiny_model import build
from tests.test_packaging import user_project


def test_network_guard_catches_a_download(tmp_path):
    code = "import urllib.request\ntry:\n    urllib.request.urlopen('http://example.org', timeout=5)\nexcept Exception:\n    pass\n"  # noqa: E501
    (tmp_path / "fetch.py").write_text(code)
    run_cli("fetch", tmp_path=tmp_path)
    assert "getaddrinfo 'example.org'" in network_attempts(tmp_path)


@pytest.mark.slow
def test_default_model_exports_to_validated_int8_offline(tmp_path):
    """The README's main command: shufflenet_v2_x0_5 to int8, with no network at any stage."""
    proc = run_cli(
        "pipeline.export", "--model", "shufflenet_v2_x0_5", "--quant", "int8", "--out", "out", tmp_path=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert network_attempts(tmp_path) == ""
    # only its own lines: a title, one line per stage, the parity rows and where the artifacts are
    own = ("Exporting ", "  ok ", "  warning: ", "     ", "  artifacts: ")
    assert [line for line in proc.stderr.splitlines() if not line.startswith(own)] == [], proc.stderr
    assert proc.stdout == ""
    out = tmp_path / "out" / "shufflenet_v2_x0_5"
    names = {p.name for p in out.iterdir()}
    assert {
        "shufflenet_v2_x0_5.onnx",
        "shufflenet_v2_x0_5_simplified.onnx",
        "shufflenet_v2_x0_5_int8.tflite",
        "labels.txt",
        "preprocess.json",
        "parity.json",
        "report.md",
        "convert.log",
    } <= names
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no staging left behind
    for record in ("parity.json", "convert.log", "report.md"):  # no temporary folder named where it is gone
        assert ".partial-" not in (out / record).read_text(), record

    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and [r["variant"] for r in parity["parity"]] == ["onnx", "int8"]
    assert parity["versions"]["onnx2tf"] == "1.29.24" and len(parity["inputs"]["onnx_sha256"]) == 64
    assert (
        parity["model"]["params"] == 1_366_792
        and parity["model"]["onnx_nodes_simplified"] < parity["model"]["onnx_nodes"]
    )
    int8 = next(r for r in parity["parity"] if r["variant"] == "int8")
    assert int8["metrics"]["samples"] == len(heldout_photos()) and int8["metrics"]["sqnr_db"] > 10
    assert int8["thresholds"]["min_top1"] == 0  # random weights: agreement means nothing, SQNR and cosine gate it

    # Following preprocess.json alone reproduces the parity figures: same input, same outputs.
    contract = json.loads((out / "preprocess.json").read_text())
    assert contract["layout"] == "NHWC" and contract["color_order"] == "RGB" and contract["input_size"] == [224, 224]
    variant = contract["variants"]["int8"]
    assert variant["min_runtime_version"] == "2.9.0"  # as the converter wrote it for its ops
    interpreter = Interpreter(model_path=str(out / variant["file"]))
    interpreter.allocate_tensors()
    photos = heldout_photos()
    pixels = heldout_batch(photos, contract["input_size"])  # resize shorter side, centre crop, /255
    x = (pixels - np.array(contract["mean"], np.float32)) / np.array(contract["std"], np.float32)
    qin, qout = variant["input"], variant["output"]
    logits = []
    assert qin["dtype"] == "uint8" and qin["zero_point"] == 0  # the camera's pixels as they are
    for image, crop in zip(x, pixels):
        q = np.clip(np.rint(image / qin["scale"]) + qin["zero_point"], 0, 255).astype(np.uint8)
        assert np.array_equal(q, pixel_codes(crop))
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], q[None])
        interpreter.invoke()
        y = interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).astype(np.float32)
        logits.append((y[0] - qout["zero_point"]) * qout["scale"])
    reference = run_onnx(out / "shufflenet_v2_x0_5_simplified.onnx", np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    assert compare(reference, np.stack(logits)).sqnr_db == pytest.approx(int8["metrics"]["sqnr_db"], abs=1e-6)
    assert len((out / "labels.txt").read_text().splitlines()) == 1000
    report = (out / "report.md").read_text()
    assert "PASSED" in report and "| TRANSPOSE |" in report and "onnx2tf: 1.29.24" in report
    assert "Dynamic-range layers" not in report  # int8 in and out: no layer quantizes at run time
    # ShuffleNet V2's only NCHW islands are channel shuffles, which the layout pass keeps (cheaper in XNNPACK).
    assert parity["model"]["graph_optimization"]["int8"]["islands_rewritten"] == 0
    assert "onnx2tf -> int8" in proc.stderr  # the progress display names each stage


@pytest.mark.slow
def test_custom_model_file_all_variants(tmp_path, tiny_model):
    proc = run_cli(
        "pipeline.export",
        "--model",
        f"{tiny_model}:build",
        "--input-size",
        "64",
        "--quant",
        "all",
        "--calib-samples",
        "16",
        "--out",
        "out",
        tmp_path=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert network_attempts(tmp_path) == ""
    out = tmp_path / "out" / "tiny_model_build"
    parity = json.loads((out / "parity.json").read_text())
    assert [r["variant"] for r in parity["parity"]] == ["onnx", "fp32", "fp16", "dynamic", "int8"]
    assert all(r["passed"] for r in parity["parity"])
    assert (out / "labels.txt").read_text().split() == [f"class_{i}" for i in range(10)]
    # fp32 TFLite agrees with ONNX Runtime to float rounding, and PyTorch with both.
    fp32 = next(r for r in parity["parity"] if r["variant"] == "fp32")
    assert fp32["metrics"]["top1_agreement"] == 1.0 and fp32["metrics"]["max_abs"] < 1e-4


@pytest.mark.slow
def test_existing_onnx_file_and_custom_labels(tmp_path):
    torch.manual_seed(0)
    onnx_path = export_onnx(build(), 64, tmp_path / "mine.onnx").path
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"thing {i}" for i in range(10)))
    proc = run_cli(
        "pipeline.export",
        "--onnx",
        str(onnx_path),
        "--quant",
        "fp32",
        "--labels",
        str(labels),
        "--out",
        "out",
        tmp_path=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert network_attempts(tmp_path) == ""
    out = tmp_path / "out" / "mine"
    parity = json.loads((out / "parity.json").read_text())
    assert [r["variant"] for r in parity["parity"]] == ["fp32"] and parity["passed"]
    assert (out / "labels.txt").read_text().splitlines()[3] == "thing 3"


@pytest.mark.slow
def test_parity_failure_exits_non_zero_and_says_so(tmp_path, tiny_model):
    proc = run_cli(
        "pipeline.export",
        "--model",
        f"{tiny_model}:build",
        "--input-size",
        "64",
        "--quant",
        "fp32",
        "--min-sqnr-fp32",
        "1000",
        "--out",
        "out",
        tmp_path=tmp_path,
    )
    assert proc.returncode == 1
    (line,) = error_lines(proc.stderr)  # what failed, on the one line
    assert line.startswith("error: tiny_model_build failed parity: fp32 vs onnxruntime: SQNR ")
    assert line.endswith(" dB < 1000 dB (report: out/tiny_model_build/report.md)")
    parity = json.loads((tmp_path / "out" / "tiny_model_build" / "parity.json").read_text())
    assert parity["passed"] is False
    report = (tmp_path / "out" / "tiny_model_build" / "report.md").read_text().splitlines()
    assert report[0] == "# tiny_model_build: FAILED, 1 check"  # the first screen says why
    assert report[2].startswith("- parity: fp32 vs onnxruntime: SQNR ")


@pytest.mark.slow
def test_mobilenet_v2_imagenet_int8_keeps_its_top1(mobilenet_imagenet):
    """Real weights: the int8 model still classifies the labelled held-out photos, and keeps the int8 fixes' gain;
    --val-dir and pipeline.evaluate count the accuracy on a user's labelled folder as the .tflite files give it."""
    tmp_path, out = mobilenet_imagenet
    labelled = [p for p in heldout_photos() if p.label is not None]
    counted = json.loads((out / "parity.json").read_text())["accuracy_on_your_photos"]
    models = {m["model"]: m for m in counted["models"]}
    x = heldout_batch(labelled, 224)  # 0..1 RGB: the export folds ImageNet's mean/std into the graph
    labels = np.array([p.label for p in labelled])
    independent = float(np.mean(run_tflite(out / "mobilenet_v2_int8.tflite", x).argmax(1) == labels))
    assert models["int8"]["top1"] == independent
    assert models["pytorch"]["top1"] >= 0.85 and counted["passed"]
    evaluated = run_cli(
        "pipeline.evaluate", str(out / "mobilenet_v2_int8.tflite"), "--val-dir", "val", tmp_path=tmp_path
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads((out / "evaluate.json").read_text())["accuracy"]["top1"] == models["int8"]["top1"]
    # The model file alone: normalization and labels come from its own TFLite Metadata.
    (tmp_path / "alone").mkdir()
    alone = Path(shutil.copy(out / "mobilenet_v2_int8.tflite", tmp_path / "alone"))
    evaluated = run_cli("pipeline.evaluate", str(alone), "--val-dir", "val", tmp_path=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    record = json.loads((alone.parent / "evaluate.json").read_text())
    assert record["normalization"]["from"] == "the model's TFLite Metadata"
    assert record["accuracy"]["top1"] == models["int8"]["top1"]
    assert network_attempts(tmp_path) == ""
    parity = json.loads((tmp_path / "out" / "mobilenet_v2" / "parity.json").read_text())
    rows = {r["variant"]: r for r in parity["parity"]}
    assert rows["onnx"]["accuracy_top1_labelled"] >= 0.85
    assert rows["int8"]["accuracy_top1_labelled"] >= 0.75
    assert parity["inputs"]["weights_sha256"].startswith("b0353104")
    # range equalization and percentile ranges: plain onnx2tf int8 reaches 9.8 dB on these photos, the default 14.5
    assert parity["model"]["int8_equalization"]["applied"] and parity["model"]["int8_activation_ranges"]["applied"]
    assert rows["int8"]["metrics"]["sqnr_db"] >= 13.0
    # trained weights: top-1 agreement with float is gated too (plain onnx2tf int8, 75 %, would fail it)
    assert rows["int8"]["thresholds"]["min_top1"] == 0.8 and rows["int8"]["metrics"]["top1_agreement"] >= 0.8


@pytest.mark.slow
def test_layout_pass_runs_by_default_and_can_be_turned_off(tmp_path, tiny_model):
    args = ["--model", f"{tiny_model}:build_shuffle", "--input-size", "64", "--quant", "int8", "--calib-samples", "16"]
    proc = run_cli("pipeline.export", *args, "--out", "on", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parity = json.loads((tmp_path / "on" / "tiny_model_build_shuffle" / "parity.json").read_text())
    optimized = parity["model"]["graph_optimization"]["int8"]
    assert optimized["applied"] and optimized["islands_rewritten"] == 1
    assert optimized["ops_before"]["TRANSPOSE"] == 4 and optimized["ops_after"]["TRANSPOSE"] == 3
    assert optimized["verified"] == "outputs identical on 8 held-out photos"
    report = (tmp_path / "on" / "tiny_model_build_shuffle" / "report.md").read_text()
    assert "## Graph optimization" in report and "TRANSPOSE 4 -> 3" in report

    proc = run_cli("pipeline.export", *args, "--no-optimize", "--out", "off", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parity = json.loads((tmp_path / "off" / "tiny_model_build_shuffle" / "parity.json").read_text())
    assert parity["model"]["graph_optimization"] == {}


def test_export_runs_from_a_project_with_its_own_models_package(tmp_path):
    """`python -m pipeline.export` from a PyTorch project whose `models` package is not ours (the common layout)."""
    project = user_project(tmp_path / "project")
    proc = run_cli("pipeline.export", "--list", tmp_path=project)
    assert proc.returncode == 0 and "shufflenet_v2_x0_5" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
def test_installed_script_exports_a_model_that_imports_the_users_models(tmp_path):
    project = user_project(tmp_path / "project")
    script = Path(sys.executable).parent / "mobile-vision-export"
    cmd = [script, "--model", "my_net.py:build", "--input-size", "32", "--quant", "fp32", "--out", "out"]
    proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (project / "out" / "my_net_build" / "my_net_build_fp32.tflite").is_file()


@pytest.mark.parametrize("base, code", [(ValueError, 2), (RuntimeError, 2), (KeyError, 3)])
def test_an_error_raised_from_a_stage_exits_by_its_kind(tmp_path, monkeypatch, capsys, base, code):
    """A user error the CLI has never heard of exits 2 with its message; anything else is a bug (exit 3)."""
    kind = type("NewMistake", (UserError, base) if code == 2 else (base,), {})

    def fail(job):
        raise kind("the photo folder is upside down: turn it over")

    monkeypatch.setattr(run, "STAGES", (run.Stage("load photos", fail),))
    out = tmp_path / "out"
    assert export_main(["--model", "shufflenet_v2_x0_5", "--quant", "fp32", "--out", str(out)]) == code
    (line,) = error_lines(capsys.readouterr().err)
    assert "the photo folder is upside down: turn it over" in line
    assert line.startswith("error: unexpected") == (code == 3)
    assert not (out / "shufflenet_v2_x0_5").exists()
