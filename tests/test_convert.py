"""export.onnx2tf_run: onnx2tf's files, byte for byte (the dynamic-range one with fully-connected weights per tensor),
without the files nobody asked for."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from mobile_vision_export.export.onnx_graph import export_onnx
from mobile_vision_export.export.tflite_convert import convert_tflite, write_onnx2tf_sample
from mobile_vision_export.export.tflite_model import op_name, read_model

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.slow
def test_same_bytes_as_onnx2tf_oiqt(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(  # MaxPool: its padding is one of -oiqt's int8 choices in the graph itself
        nn.Conv2d(3, 8, 3, 2, 1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(8, 64, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 32),  # over 1024 weights: the converter's dynamic range quantizes it
    ).eval()
    onnx_model = export_onnx(model, 64, tmp_path / "m.onnx")
    codes = np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)  # as the export passes them
    ours = convert_tflite(onnx_model, tmp_path / "ours", ["fp32", "dynamic", "int8"], codes, MEAN, STD)
    calib = codes.astype(np.float32) / 255.0  # onnx2tf alone calibrates on the photos' 0..1 values

    np.save(tmp_path / "calib.npy", calib)
    write_onnx2tf_sample(tmp_path, calib)
    mean, std = (f"[[[[{','.join(map(str, v))}]]]]" for v in (MEAN, STD))
    cmd = [sys.executable, "-m", "onnx2tf", "-i", str(onnx_model.path), "-o", "alone", "-nuo", "-v", "error"]
    cmd += ["-oiqt", "-qt", "per-channel", "-iqd", "int8", "-oqd", "int8"]
    cmd += ["-cind", onnx_model.input_name, "calib.npy", mean, std]
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    suffix = {"fp32": "float32", "dynamic": "dynamic_range_quant", "int8": "full_integer_quant"}
    for mode, path in ours.files.items():
        alone = tmp_path / "alone" / f"m_{suffix[mode]}.tflite"
        if mode != "dynamic":
            assert path.read_bytes() == alone.read_bytes(), mode
    # dynamic range: the one fully-connected layer per tensor (op version 9, which older runtimes run), not per
    # channel (12), and everything else as onnx2tf builds it
    fully_connected = {}
    for name, path in (("ours", ours.files["dynamic"]), ("alone", tmp_path / "alone" / "m_dynamic_range_quant.tflite")):
        model = read_model(path)
        ops = [op_name(model, op) for op in model.subgraphs[0].operators]
        (fc,) = [op for op in model.subgraphs[0].operators if op_name(model, op) == "FULLY_CONNECTED"]
        scales = len(model.subgraphs[0].tensors[fc.inputs[1]].quantization.scale)
        fully_connected[name] = (model.operatorCodes[fc.opcodeIndex].version, scales, ops)
    assert fully_connected["ours"][:2] == (9, 1) and fully_connected["alone"][:2] == (12, 32)
    assert fully_connected["ours"][2] == fully_connected["alone"][2]
    built = {p.name for p in ours.files["int8"].parent.glob("*.tflite")}
    assert built == {"m_float32.tflite", "m_dynamic_range_quant.tflite", "m_full_integer_quant.tflite"}  # no float16


@pytest.mark.slow
def test_float16_built_only_when_asked(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    onnx_model = export_onnx(model, 32, tmp_path / "m.onnx")
    calib = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    ours = convert_tflite(onnx_model, tmp_path / "ours", ["fp16", "int8"], calib, MEAN, STD)
    fp16 = ours.files["fp16"].read_bytes()
    assert len(fp16) > 0 and fp16[4:8] == b"TFL3"
    assert {p.name for p in ours.files["int8"].parent.glob("*.tflite")} == {
        "m_float32.tflite",  # onnx2tf always writes it first
        "m_float16.tflite",
        "m_full_integer_quant.tflite",
    }
    fp32 = convert_tflite(onnx_model, tmp_path / "fp32", ["fp32"], calib, MEAN, STD)  # no int8: no calibration
    assert [p.name for p in fp32.files["fp32"].parent.glob("*.tflite")] == ["m_float32.tflite"]
