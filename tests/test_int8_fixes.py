"""Range equalization keeps the float model and evens out channel ranges; bias correction removes a bias error."""

import json

import flatbuffers
import numpy as np
import onnx
import pytest
import torch
from ai_edge_litert import schema_py_generated as schema
from torch import nn

from export.bias_correction import correct_biases
from export.equalize import channel_ranges, equalize_onnx
from export.images import calibration_batch, calibration_photos, heldout_batch, heldout_photos, normalize
from export.onnx_stage import export_onnx
from export.tflite_inspect import op_outputs, paired_layers
from validate.metrics import sqnr_db
from validate.runners import run_onnx, run_tflite

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Unbalanced(nn.Module):
    """conv -> ReLU6 -> depthwise -> ReLU6 -> 1x1 projection -> 1x1 conv, with channel gains spread 300x apart."""

    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(3, 16, 3, 2, 1)
        self.depthwise = nn.Conv2d(16, 16, 3, 1, 1, groups=16)
        self.project = nn.Conv2d(16, 8, 1)
        self.head = nn.Conv2d(8, 10, 1)
        with torch.no_grad():
            gains = torch.logspace(-2.5, 0, 16)
            self.expand.weight.mul_(gains.view(-1, 1, 1, 1))
            self.expand.bias.mul_(gains)

    def forward(self, x):
        x = nn.functional.relu6(self.expand(x))
        x = nn.functional.relu6(self.depthwise(x))
        return self.head(self.project(x)).mean([2, 3])


@pytest.fixture(scope="module")
def unbalanced_onnx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("equalize")
    torch.manual_seed(0)
    return export_onnx(Unbalanced().eval(), 64, tmp / "unbalanced.onnx").path


def _nchw(batch):
    return np.ascontiguousarray(normalize(batch, MEAN, STD).transpose(0, 3, 1, 2))


def test_equalization_evens_ranges_and_keeps_the_float_outputs(unbalanced_onnx, tmp_path):
    calib = _nchw(calibration_batch(calibration_photos(), 64, 24))
    heldout = _nchw(heldout_batch(heldout_photos(), 64))
    pairs = equalize_onnx(unbalanced_onnx, tmp_path / "eq.onnx", calib)

    first = next(p for p in pairs if p.producer.endswith("expand/Conv"))
    assert first.activation == "Clip" and first.range_ratio_before > 20 and first.range_ratio_after < 3
    assert any(p.activation == "none" for p in pairs)  # projection -> head is linear, so it is scaled too
    before, after = run_onnx(unbalanced_onnx, heldout), run_onnx(tmp_path / "eq.onnx", heldout)
    assert sqnr_db(before, after) > 100  # float rounding only: no ReLU6 clip was moved onto real data
    tensor = next(n.output[0] for n in onnx.load(str(tmp_path / "eq.onnx")).graph.node if n.op_type == "Clip")
    widths = channel_ranges(onnx.load(str(tmp_path / "eq.onnx")), [tensor], calib)[tensor]
    assert widths.max() / np.median(widths) < 3


def test_channels_that_reach_the_clip_are_left_alone(unbalanced_onnx, tmp_path):
    """A channel already saturating ReLU6 keeps scale 1: scaling it would move the clip on real data."""
    model = onnx.load(str(unbalanced_onnx))
    weights = {i.name: i for i in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    bias = onnx.numpy_helper.to_array(weights[conv.input[2]]).copy()
    bias[0] = 50.0  # channel 0 is always clipped at 6
    weights[conv.input[2]].CopyFrom(onnx.numpy_helper.from_array(bias, conv.input[2]))
    saturated = tmp_path / "saturated.onnx"
    onnx.save(model, str(saturated))
    calib = _nchw(calibration_batch(calibration_photos(), 64, 24))
    equalize_onnx(saturated, tmp_path / "eq.onnx", calib)
    scaled = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "eq.onnx")).graph.initializer}
    assert scaled[conv.input[2]][0] == pytest.approx(50.0)
    heldout = _nchw(heldout_batch(heldout_photos(), 64))
    assert sqnr_db(run_onnx(saturated, heldout), run_onnx(tmp_path / "eq.onnx", heldout)) > 100


def _shift_bias(src, dst, op_index: int, lsb: int) -> None:
    """Rewrite the .tflite with `lsb` added to every int32 bias value of op `op_index`."""
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(src.read_bytes(), 0))
    graph = model.subgraphs[0]
    buffer = model.buffers[graph.tensors[graph.operators[op_index].inputs[2]].buffer]
    buffer.data = (np.frombuffer(bytes(bytearray(buffer.data)), np.int32) + lsb).view(np.uint8)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dst.write_bytes(bytes(builder.Output()))


def test_bias_correction_removes_a_deliberate_bias_error(shufflenet_variants, tmp_path):
    int8 = shufflenet_variants / "shufflenet_v2_x0_5_int8.tflite"
    twin = shufflenet_variants / "shufflenet_v2_x0_5_int8_reference_fp32.tflite"
    pairs = paired_layers(twin, int8)
    ops = op_outputs(int8)
    linear = [i for i, op, _, _, _ in pairs if op == "DEPTHWISE_CONV_2D" and "relu" not in ops[i][2].lower()]
    target = linear[len(linear) // 2]
    broken = tmp_path / "broken_int8.tflite"
    _shift_bias(int8, broken, target, lsb=3000)
    calib = normalize(calibration_batch(calibration_photos(), 224, 8), MEAN, STD)
    heldout = normalize(heldout_batch(heldout_photos()[:8], 224), MEAN, STD)
    reference = run_tflite(twin, heldout)
    damaged = sqnr_db(reference, run_tflite(broken, heldout))
    assert damaged < sqnr_db(reference, run_tflite(int8, heldout)) - 3  # the shift really hurts

    result = correct_biases(broken, twin, calib, tmp_path / "corrected_int8.tflite")
    repaired = sqnr_db(reference, run_tflite(tmp_path / "corrected_int8.tflite", heldout))
    assert result.layers > 0 and result.max_shift_lsb >= 2000
    assert repaired > damaged + 3


def test_export_records_equalization_and_bias_correction(shufflenet_variants):
    info = json.loads((shufflenet_variants / "parity.json").read_text())["model"]
    equalization, correction = info["int8_equalization"], info["int8_bias_correction"]
    assert equalization["applied"] and equalization["channels_scaled"] > 0
    assert equalization["float_check"]["sqnr_db_vs_simplified"] > 60
    assert correction["layers_corrected"] > 0
    assert correction["applied"] == (correction["calibration_sqnr_db_after"] > correction["calibration_sqnr_db_before"])
    report = (shufflenet_variants / "report.md").read_text()
    assert "## int8 range equalization" in report and "## int8 bias correction" in report
    assert (shufflenet_variants / "shufflenet_v2_x0_5_equalized.onnx").is_file()
