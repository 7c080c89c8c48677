"""Each export stage on its own, with the real exporters, simplifier, converter and runtimes."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from mobile_vision_export.export.images import calibration_batch, calibration_photos, normalize
from mobile_vision_export.export.onnx_graph import OnnxError, describe_onnx, export_onnx, simplify_onnx
from mobile_vision_export.export.tflite_convert import (
    ONNX2TF_SAMPLE_FILE,
    _failure_message,
    check_converter_supports,
    convert_tflite,
)
from mobile_vision_export.export.tflite_inspect import NotTfliteError, dequantize, inspect_tflite, quantize
from mobile_vision_export.models import get_model
from mobile_vision_export.validate.metrics import compare
from mobile_vision_export.validate.runners import run_onnx, run_tflite, run_torch
from tests.conftest import ROOT, network_attempts
from tests.data.tiny_model import build

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def shufflenet_onnx(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = get_model("shufflenet_v2_x0_5")
    raw = export_onnx(model, 224, folder / "s.onnx")
    return model, raw, simplify_onnx(raw, folder / "s_sim.onnx")


def test_onnx_export_records_exporter_and_opset(shufflenet_onnx):
    _, raw, _ = shufflenet_onnx
    assert raw.opset == 17 and "TorchScript" in raw.exporter
    assert raw.input_name == "input" and raw.input_size == (224, 224)
    assert not list(raw.path.parent.glob("*.onnx.data"))  # one self-contained file


def test_onnxsim_shrinks_the_graph_and_keeps_outputs(shufflenet_onnx):
    model, raw, simplified = shufflenet_onnx
    assert simplified.nodes < raw.nodes * 0.6  # 374 -> 186 measured
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    ref = run_torch(model, x)
    for path in (raw.path, simplified.path):
        assert compare(ref, run_onnx(path, x)).sqnr_db > 80


def _graph_with(op_type: str, domain: str = "") -> onnx.ModelProto:
    node = helper.make_node(op_type, ["x"], ["y"], name="the_node", domain=domain)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def test_unsupported_op_is_named_with_its_node(tmp_path):
    path = tmp_path / "custom.onnx"
    onnx.save(_graph_with("FancyNorm", "com.example"), path)
    with pytest.raises(OnnxError, match="cannot handle op 'FancyNorm' \\(domain 'com.example'\\) at node 'the_node'"):
        check_converter_supports(path)
    onnx.save(_graph_with("Relu"), path)
    check_converter_supports(path)  # a supported op passes


def test_describe_onnx_rejects_what_the_pipeline_cannot_take(tmp_path):
    model = _graph_with("Relu")
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    onnx.save(model, tmp_path / "dynamic.onnx")
    with pytest.raises(OnnxError, match="has a dynamic size .*give --input-size S"):
        describe_onnx(tmp_path / "dynamic.onnx")
    model = _graph_with("Relu")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    onnx.save(model, tmp_path / "batch4.onnx")
    with pytest.raises(OnnxError, match=r"expected \[1, 3, H, W\]"):
        describe_onnx(tmp_path / "batch4.onnx")
    model = _graph_with("Relu")
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    onnx.save(model, tmp_path / "uint8.onnx")
    with pytest.raises(OnnxError, match="is UINT8, not FLOAT"):
        describe_onnx(tmp_path / "uint8.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01junk")
    with pytest.raises(OnnxError, match="cannot read ONNX"):
        describe_onnx(tmp_path / "junk.onnx")


@pytest.mark.slow
def test_onnx2tf_writes_every_variant_offline(tmp_path, monkeypatch):
    # onnx2tf runs as a child process: the network guard is loaded into it through PYTHONPATH.
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests" / "netguard"))
    monkeypatch.setenv("NETGUARD_LOG", str(tmp_path / "network_attempts.log"))
    torch.manual_seed(0)
    raw = export_onnx(build(), 64, tmp_path / "tiny.onnx")
    calib = calibration_batch(calibration_photos(), 64, 16)
    conversion = convert_tflite(raw, tmp_path / "work", ["fp32", "fp16", "dynamic", "int8"], calib, MEAN, STD)
    assert set(conversion.files) == {"fp32", "fp16", "dynamic", "int8"}
    # The stand-in sample file is what keeps onnx2tf from downloading its own.
    assert np.load(tmp_path / "work" / ONNX2TF_SAMPLE_FILE).shape == (20, 128, 128, 3)
    int8 = inspect_tflite(conversion.files["int8"])
    assert int8.inputs[0].dtype == "int8" and int8.outputs[0].dtype == "int8"
    assert int8.inputs[0].shape == [1, 64, 64, 3]
    assert "CONV_2D" in int8.ops and "QUANTIZE" not in int8.ops  # integer in, integer out, nothing in between
    x = normalize(calib[:4], MEAN, STD)
    ref = run_onnx(raw.path, np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    assert compare(ref, run_tflite(conversion.files["fp32"], x)).sqnr_db > 60
    assert compare(ref, run_tflite(conversion.files["int8"], x)).cosine_mean > 0.9
    assert network_attempts(tmp_path) == ""


def test_failure_message_names_the_node():
    log = (
        "INFO: onnx_op_type: Resize onnx_op_name: /up/Resize\nTraceback ...\n"
        "ValueError: Dimensions must be equal\nERROR: onnx_op_name: /up/Resize\n"
    )
    assert (
        _failure_message(log) == "onnx2tf failed at node '/up/Resize' (op Resize): ValueError: Dimensions must be equal"
    )


def test_inspect_rejects_non_tflite_and_quantization_round_trips(tmp_path):
    (tmp_path / "x.tflite").write_bytes(b"definitely not a flatbuffer")
    with pytest.raises(NotTfliteError, match="not a TFLite model"):
        inspect_tflite(tmp_path / "x.tflite")
    from mobile_vision_export.export.tflite_inspect import TensorInfo

    info = TensorInfo("t", [4], "int8", 0.5, -3)
    q = quantize(np.array([0.0, 0.25, 0.75, 100.0], np.float32), info)
    assert q.tolist() == [-3, -3, -1, 127]  # round half to even, clipped
    assert dequantize(q, info).tolist() == [0.0, 0.0, 1.0, 65.0]
