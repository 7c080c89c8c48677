"""Per-layer int8 diagnostics find a layer that was made deliberately bad."""

import numpy as np
import pytest
import torch

from mobile_vision_export.export.images import (
    calibration_batch,
    calibration_photos,
    heldout_batch,
    heldout_photos,
    normalize,
)
from mobile_vision_export.export.onnx_graph import export_onnx
from mobile_vision_export.export.tflite_convert import convert_tflite
from mobile_vision_export.export.tflite_inspect import op_outputs
from mobile_vision_export.export.tflite_model import read_model, write_model
from mobile_vision_export.int8.fallback import fall_back
from mobile_vision_export.int8.io_types import uint8_io
from mobile_vision_export.pipeline.diagnose import main as diagnose_main
from mobile_vision_export.validate.diagnose import DiagnoseError, ancestors, diagnose
from tests.conftest import ROOT, run_cli
from tests.data.tiny_model import build

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def tiny_variants(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    raw = export_onnx(build(), 64, tmp / "tiny.onnx")
    conversion = convert_tflite(
        raw, tmp / "work", ["fp32", "int8"], calibration_batch(calibration_photos(), 64, 32), MEAN, STD
    )
    return conversion.files["fp32"], conversion.files["int8"]


def _negate_weights(src, dst, op_index: int) -> None:
    """Rewrite the .tflite with the int8 weights of op `op_index` negated: that layer becomes wrong."""
    model = read_model(src)
    graph = model.subgraphs[0]
    weights = graph.tensors[graph.operators[op_index].inputs[1]]
    buffer = model.buffers[weights.buffer]
    values = np.frombuffer(bytes(bytearray(buffer.data)), np.int8)
    buffer.data = np.clip(-values.astype(np.int16), -127, 127).astype(np.int8).view(np.uint8)
    write_model(model, dst)


@pytest.mark.slow
def test_a_deliberately_broken_layer_is_named(tiny_variants, tmp_path):
    float_model, int8_model = tiny_variants
    ops = [op for op, _, _ in op_outputs(int8_model)]
    target = len(ops) - 1 - ops[::-1].index("CONV_2D")  # the last convolution, mid-network
    broken = tmp_path / "tiny_int8.tflite"
    _negate_weights(int8_model, broken, target)
    x = normalize(heldout_batch(heldout_photos()[:8], 64), MEAN, STD)

    healthy = diagnose(float_model, int8_model, x)
    assert healthy.first_jump is None or healthy.first_jump.index != target
    damaged = diagnose(float_model, broken, x)
    assert damaged.first_jump is not None and damaged.first_jump.index == target
    assert damaged.worst[0].index == target and damaged.worst[0].sqnr_db < 3
    before = next(layer for layer in damaged.layers if layer.index == target - 1)
    assert before.sqnr_db == pytest.approx(next(la for la in healthy.layers if la.index == target - 1).sqnr_db)


@pytest.mark.slow
def test_cli_writes_html_and_json(tiny_variants, tmp_path, capsys):
    float_model, int8_model = tiny_variants
    assert diagnose_main([str(int8_model), "--float", str(float_model), "--images", "4", "--out", str(tmp_path)]) == 0
    page = (tmp_path / "diagnose.html").read_text()
    assert "<svg" in page and "Per-layer int8 error" in page and (tmp_path / "diagnose.json").is_file()
    assert diagnose_main([str(tmp_path / "absent_int8.tflite")]) == 2
    assert "model not found" in capsys.readouterr().err


@pytest.mark.slow
def test_a_branch_is_diagnosed_on_its_own_and_drops_count_from_what_a_layer_reads(tmp_path):
    """A detector's two heads: a broken layer in the boxes head is named; diagnosing the scores output leaves it
    out; the scores head's first layer, next to it in op order, is measured against the layer it reads."""
    model = f"{ROOT / 'tests' / 'data' / 'vision_models.py'}:det"
    args = ["--model", model, "--input-size", "64", "--quant", "all", "--int8-io", "int8", "--out", "out"]
    proc = run_cli("pipeline.export", *args, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "out" / "vision_models_det"
    float_model, int8_model = out / "vision_models_det_fp32.tflite", out / "vision_models_det_int8.tflite"
    ops = [op for op, _, _ in op_outputs(int8_model)]
    boxes_only = ancestors(int8_model, "output_0") - ancestors(int8_model, "output_1")
    target = next(i for i in sorted(boxes_only) if ops[i] == "CONV_2D")
    broken = tmp_path / "broken_int8.tflite"
    _negate_weights(int8_model, broken, target)
    x = normalize(heldout_batch(heldout_photos()[:8], 64), (0, 0, 0), (1, 1, 1))
    damaged = diagnose(float_model, broken, x)
    assert damaged.worst[0].index == target
    scores = diagnose(float_model, broken, x, output="output_1")
    assert target not in {layer.index for layer in scores.layers} and scores.layers
    healthy = {layer.index: layer for layer in diagnose(float_model, int8_model, x, output="output_1").layers}
    after = {layer.index: layer for layer in scores.layers}
    assert all(after[i].drop_db == pytest.approx(healthy[i].drop_db) for i in healthy)  # the break is not read
    with pytest.raises(DiagnoseError, match="has no output 'nope': it has output_0, output_1"):
        diagnose(float_model, int8_model, x, output="nope")


@pytest.mark.slow
def test_a_uint8_file_is_diagnosed_layer_for_layer_as_its_int8_graph(tiny_variants, tmp_path):
    """The uint8 input/output step puts a QUANTIZE behind the last layer under that layer's output name: the layer
    is still the one diagnosed, and the QUANTIZE computes none."""
    float_model, int8_model = tiny_variants
    uint8_io(int8_model, tmp_path / "tiny_int8.tflite")
    x = heldout_batch(heldout_photos()[:4], 64)  # pixels / 255: what a uint8 input at scale 1/255 takes
    plain, shipped = diagnose(float_model, int8_model, x), diagnose(float_model, tmp_path / "tiny_int8.tflite", x)
    assert [la.op for la in shipped.layers] == [la.op for la in plain.layers]
    assert [la.index for la in shipped.layers] == [la.index + 1 for la in plain.layers]  # after the input QUANTIZE
    assert shipped.layers[-1].sqnr_db == pytest.approx(plain.layers[-1].sqnr_db, abs=0.5)


@pytest.mark.slow
def test_a_layer_run_in_float_is_diagnosed_through_its_quantize(tiny_variants, tmp_path):
    """A layer the int8 file runs in float (the converter's L2 norm, the fallback's layers) is reached by the name of
    the QUANTIZE that puts its output on the int8 grid: it is still diagnosed, under its own op type."""
    float_model, int8_model = tiny_variants
    ops = [op for op, _, _ in op_outputs(int8_model)]
    last = len(ops) - 1  # the output layer
    fall_back(int8_model, float_model, {last}, tmp_path / "tiny_int8.tflite")
    x = normalize(heldout_batch(heldout_photos()[:4], 64), MEAN, STD)
    plain, floated = diagnose(float_model, int8_model, x), diagnose(float_model, tmp_path / "tiny_int8.tflite", x)
    assert [la.op for la in floated.layers] == [la.op for la in plain.layers] and ops[last] == plain.layers[-1].op
    assert op_outputs(tmp_path / "tiny_int8.tflite")[floated.layers[-1].index][0] == "QUANTIZE"
