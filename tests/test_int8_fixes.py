"""Range equalization keeps the float model and evens out channel ranges; bias correction removes a bias error."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from ai_edge_litert import schema_py_generated as schema

from mobile_vision_export.export.images import (
    calibration_batch,
    calibration_photos,
    heldout_batch,
    heldout_photos,
    normalize,
)
from mobile_vision_export.export.onnx_graph import export_onnx
from mobile_vision_export.export.tflite_inspect import (
    dequantize,
    inspect_tflite,
    op_outputs,
    paired_layers,
    quantize,
    twin_layers,
)
from mobile_vision_export.export.tflite_model import (
    biased_operands,
    constant_view,
    min_runtime_version,
    op_name,
    read_model,
    write_model,
)
from mobile_vision_export.int8.activation_ranges import (
    SHARED_QUANTIZATION_OPS,
    _percentile_codes,
    code_counts,
    narrow_ranges,
)
from mobile_vision_export.int8.bias_correction import shift_biases
from mobile_vision_export.int8.crops import SELECTION_IMAGES, Crops
from mobile_vision_export.int8.equalize import channel_stats, equalize_onnx
from mobile_vision_export.int8.fallback import FORMS, Cost, Judge, fall_back, reach_targets
from mobile_vision_export.int8.output import float_output
from mobile_vision_export.pipeline.request import CALIBRATION_CROPS
from mobile_vision_export.validate.metrics import expected_agreement, sqnr_db
from mobile_vision_export.validate.runners import run_onnx, run_tflite, run_tflite_outputs
from tests.conftest import ROOT, run_cli
from tests.data.tiny_model import build_unbalanced

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def unbalanced_onnx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("equalize")
    return export_onnx(build_unbalanced(), 64, tmp / "unbalanced.onnx").path


def _nchw_of(normalized):
    return np.ascontiguousarray(normalized.transpose(0, 3, 1, 2))


def _nchw(batch):
    return np.ascontiguousarray(normalize(batch, MEAN, STD).transpose(0, 3, 1, 2))


def test_equalization_evens_ranges_and_keeps_the_float_outputs(unbalanced_onnx, tmp_path):
    calib = _nchw(calibration_batch(calibration_photos(), 64, 24))
    heldout = _nchw(heldout_batch(heldout_photos(), 64))
    pairs = equalize_onnx(unbalanced_onnx, tmp_path / "eq.onnx", calib)

    first = next(p for p in pairs if p.producer.endswith("expand/Conv"))
    assert first.activation == "Clip" and first.range_ratio_before > 20 and first.range_ratio_after < 3
    assert first.local_sqnr_db_after > first.local_sqnr_db_before + 3  # the simulated int8 output gains
    assert any(p.activation == "none" for p in pairs)  # projection -> head is linear, so it is scaled too
    before, after = run_onnx(unbalanced_onnx, heldout), run_onnx(tmp_path / "eq.onnx", heldout)
    assert sqnr_db(before, after) > 100  # float rounding only: no ReLU6 clip was moved onto real data
    tensor = next(n.output[0] for n in onnx.load(str(tmp_path / "eq.onnx")).graph.node if n.op_type == "Clip")
    widths = channel_stats(onnx.load(str(tmp_path / "eq.onnx")), [tensor], calib)[tensor].width
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
    model = read_model(src)
    graph = model.subgraphs[0]
    buffer = model.buffers[graph.tensors[graph.operators[op_index].inputs[2]].buffer]
    buffer.data = (np.frombuffer(bytes(bytearray(buffer.data)), np.int32) + lsb).view(np.uint8)
    write_model(model, dst)


@pytest.mark.slow
def test_bias_correction_removes_a_deliberate_bias_error(shufflenet_variants, tmp_path):
    int8 = shufflenet_variants / "shufflenet_v2_x0_5_int8.tflite"
    twin = shufflenet_variants / "shufflenet_v2_x0_5_fp32.tflite"  # no equalization: the int8 graph's float twin
    pairs = paired_layers(twin, int8)
    ops = op_outputs(int8)
    linear = [i for i, op, _, _, _ in pairs if op == "DEPTHWISE_CONV_2D" and "relu" not in ops[i][2].lower()]
    target = linear[len(linear) // 2]
    broken = tmp_path / "broken_int8.tflite"
    _shift_bias(int8, broken, target, lsb=3000)
    calib = calibration_batch(calibration_photos(), 224, 8)
    heldout = heldout_batch(heldout_photos()[:8], 224)
    reference = run_tflite(twin, heldout)
    damaged = sqnr_db(reference, run_tflite(broken, heldout))
    assert damaged < sqnr_db(reference, run_tflite(int8, heldout)) - 3  # the shift really hurts

    result = shift_biases(broken, twin, calib, tmp_path / "corrected_int8.tflite")
    repaired = sqnr_db(reference, run_tflite(tmp_path / "corrected_int8.tflite", heldout))
    assert result.layers > 0 and result.max_shift_lsb >= 2000
    assert repaired > damaged + 3


def _widen_range(src, dst, factor: float, reader_kind: str = "DEPTHWISE_CONV_2D") -> int:
    """Rewrite the .tflite with the output range of one conv (read by exactly one `reader_kind` op) made `factor`
    times wider, the reader's bias re-expressed to match: the same function, coarser int8 steps. Returns that conv's
    index."""
    model = read_model(src)
    graph = model.subgraphs[0]
    ops = op_outputs(src)
    readers = {}
    for index, op in enumerate(graph.operators):
        for t in op.inputs:
            readers.setdefault(int(t), []).append(index)
    conv = next(
        i
        for i, (op, tensor, _) in enumerate(ops)
        if op == "CONV_2D" and len(readers.get(tensor, [])) == 1 and ops[readers[tensor][0]][0] == reader_kind
    )
    out = graph.tensors[ops[conv][1]].quantization
    old = float(out.scale[0])
    out.scale = np.array([old * factor], np.float32)
    out.zeroPoint = np.array([-128 + round((int(out.zeroPoint[0]) + 128) / factor)], np.int64)
    _, weights, bias_index = biased_operands(model, graph.operators[readers[ops[conv][1]][0]])
    bias_t = graph.tensors[bias_index]
    bias = np.frombuffer(bytes(bytearray(model.buffers[bias_t.buffer].data)), np.int32)
    model.buffers[bias_t.buffer].data = np.round(bias / factor).astype(np.int32).view(np.uint8)
    weight_scale = np.asarray(graph.tensors[weights].quantization.scale, np.float64)
    bias_t.quantization.scale = (float(out.scale[0]) * weight_scale).astype(np.float32)
    write_model(model, dst)
    return conv


def test_percentile_cut_drops_rare_extremes_and_keeps_zero_inside():
    counts = np.zeros(256, np.int64)
    counts[128 + 10 : 128 + 72] = 1000  # codes 10..71, all positive
    counts[255] = 1  # one outlier at code 127
    assert _percentile_codes(counts, 99.99, zero_point=-128) == (-128, 71)
    assert _percentile_codes(counts, 100.0, zero_point=-128) == (-128, 127)
    assert _percentile_codes(counts, 99.99, zero_point=20) == (10, 71)  # 0.0 (code 20) stays representable


@pytest.mark.slow
def test_percentile_ranges_repair_a_deliberately_wide_range(shufflenet_variants, tmp_path):
    int8 = shufflenet_variants / "shufflenet_v2_x0_5_int8.tflite"
    twin = shufflenet_variants / "shufflenet_v2_x0_5_fp32.tflite"
    wide = tmp_path / "wide_int8.tflite"
    _widen_range(int8, wide, factor=64.0)
    calib = calibration_batch(calibration_photos(), 224, 16)
    heldout = heldout_batch(heldout_photos()[:16], 224)
    reference = run_tflite(twin, heldout)
    damaged = sqnr_db(reference, run_tflite(wide, heldout))
    assert damaged < sqnr_db(reference, run_tflite(int8, heldout)) - 3  # 6 bits fewer on one tensor really hurt

    change = narrow_ranges(wide, code_counts(wide, calib), 99.999, tmp_path / "narrowed_int8.tflite")
    repaired = sqnr_db(reference, run_tflite(tmp_path / "narrowed_int8.tflite", heldout))
    assert change.tensors > 0 and change.biases > 0
    assert repaired > damaged + 3


@pytest.mark.slow
def test_narrowed_ranges_keep_the_contract_and_shared_quantization(shufflenet_variants, tmp_path):
    """Tensors that a layout op passes through unchanged keep one scale; the app's input and output keep theirs."""
    int8 = shufflenet_variants / "shufflenet_v2_x0_5_int8.tflite"
    narrowed = tmp_path / "narrowed_int8.tflite"
    calib = calibration_batch(calibration_photos(), 224, 8)
    change = narrow_ranges(int8, code_counts(int8, calib), 99.99, narrowed)
    assert change.groups > 0 and change.median_step_ratio < 1
    before, after = inspect_tflite(int8), inspect_tflite(narrowed)
    assert (before.inputs, before.outputs) == (after.inputs, after.outputs)
    assert after.size_bytes - before.size_bytes < 0.01 * before.size_bytes  # only shared biases get a copy
    model = read_model(narrowed)
    graph = model.subgraphs[0]
    checked = 0
    for op, (name, _, _) in zip(graph.operators, op_outputs(narrowed)):
        tensors = [graph.tensors[t] for t in [*op.inputs, *op.outputs] if t >= 0]
        params = {
            (float(t.quantization.scale[0]), int(t.quantization.zeroPoint[0]))
            for t in tensors
            if t.type == schema.TensorType.INT8 and model.buffers[t.buffer].data is None  # activations
        }
        if name in SHARED_QUANTIZATION_OPS:
            assert len(params) == 1, name
            checked += 1
    assert checked > 50  # shufflenet's transposes, reshapes, slices and concatenations


@pytest.mark.slow
def test_export_records_bias_correction(shufflenet_variants):
    info = json.loads((shufflenet_variants / "parity.json").read_text())["model"]
    correction = info["int8_bias_correction"]
    assert correction["layers_corrected"] > 0
    # the shipped int8 file is the better of the corrected and uncorrected ones on the selection crops, against
    # ONNX Runtime (nothing runs after the correction for shufflenet)
    crops = calibration_batch(calibration_photos(), 224, CALIBRATION_CROPS)[:SELECTION_IMAGES]
    simplified = shufflenet_variants / "shufflenet_v2_x0_5_simplified.onnx"
    reference = run_onnx(simplified, np.ascontiguousarray(crops.transpose(0, 3, 1, 2)))
    shipped = sqnr_db(reference, run_tflite(shufflenet_variants / "shufflenet_v2_x0_5_int8.tflite", crops))
    best = max(correction["calibration_sqnr_db_before"], correction["calibration_sqnr_db_after"])
    assert abs(shipped - best) < 1e-3
    assert "## int8 bias correction" in (shufflenet_variants / "report.md").read_text()
    ranges = info["int8_activation_ranges"]
    scores = ranges["calibration_sqnr_db"]
    best = max(v for k, v in scores.items() if k != "min-max")
    assert ranges["applied"] == (best >= scores["min-max"] + ranges["min_gain_db"])
    assert "## int8 activation ranges" in (shufflenet_variants / "report.md").read_text()
    # shufflenet's channel ranges are even (widest / median < 3): nothing to equalize, one conversion
    assert info["int8_equalization"]["pairs"] == [] and not info["int8_equalization"]["applied"]


def _export_unbalanced(tiny_model: Path, tmp_path: Path, *flags: str) -> tuple[int, Path]:
    """Export the unbalanced test model to int8; (exit code, its artifact folder)."""
    args = ["--model", f"{tiny_model}:build_unbalanced", "--input-size", "64", "--quant", "int8", *flags]
    proc = run_cli("pipeline.export", *args, "--out", "out", tmp_path=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    return proc.returncode, tmp_path / "out" / "tiny_model_build_unbalanced"


@pytest.mark.slow
def test_export_converts_int8_from_the_equalized_graph_alone(tiny_model, tmp_path):
    returncode, folder = _export_unbalanced(tiny_model, tmp_path)
    assert returncode == 0
    record = json.loads((folder / "parity.json").read_text())
    equalization = record["model"]["int8_equalization"]
    assert equalization["applied"] and equalization["channels_scaled"] > 0
    assert equalization["float_check"]["sqnr_db_vs_simplified"] > 60
    # --quant int8 alone: one conversion, of the equalized graph, which ships beside the int8 file
    assert list(record["model"]["converter_settings"]) == ["tiny_model_build_unbalanced_equalized.onnx"]
    assert (folder / "tiny_model_build_unbalanced_equalized.onnx").is_file()
    assert "converted from the equalized graph" in (folder / "report.md").read_text()


@pytest.mark.slow
def test_min_sqnr_falls_back_worst_layers(tiny_model, tmp_path):
    """An unreachable target: each worst layer is tried in dynamic-range int8, then with the float twin's biases,
    then in float, then ever longer tails of the graph, until the steps run out; judged on calibration photos no
    crop came from; every step's cost is reported, and parity fails."""
    # without the fitted rounding and the tuning, so int8 keeps an error a layer in float can still reduce (with the
    # fitted rounding: 48.2 dB, and the int8 output step caps what any layer gains); int8 outputs asked for, so the
    # app contract stays int8 in and out
    flags = ("--min-sqnr", "90", "--no-fitted-rounding", "--no-tuning", "--int8-output", "int8")
    returncode, folder = _export_unbalanced(tiny_model, tmp_path, *flags)
    assert returncode == 1
    info = json.loads((folder / "parity.json").read_text())
    fallback = info["model"]["int8_fallback"]
    steps = fallback["steps"]
    assert fallback["applied"] and not fallback["reached"] and len(steps) > 1
    assert steps[1]["form"] == "dynamic-range"  # int8 weights first
    assert fallback["judged_on"] == "348 unread calibration photos"  # 548 built-in photos, 200 crops of 200
    tails = [step["tail"] for step in steps if step["tail"]]
    # the last 1, 2, 4, ... layers (a tail the worst-layer steps already moved is not tried again), up to all of them
    assert (
        tails[0] == 1
        and max(tails) == len(steps[-1]["ops"])
        and set(FORMS) == {step["form"] for step in steps if step["tail"]}
    )
    assert set(FORMS) >= {step["form"] for step in steps[1:]}
    assert all(step["cost"]["bytes"] > 0 and step["cost"]["host_ms"] > 0 for step in steps)
    kept = [step for step in steps if step["kept"]]
    assert kept[-1]["sqnr_db"] > steps[0]["sqnr_db"]  # the int8 output quantization caps it
    assert sorted(fallback["dynamic_range_ops"] + fallback["float_ops"]) == kept[-1]["ops"]
    assert set(fallback["dynamic_range_float_bias_ops"]) <= set(fallback["dynamic_range_ops"])
    summary = inspect_tflite(folder / "tiny_model_build_unbalanced_int8.tflite")
    assert summary.ops.get("DEQUANTIZE", 0) >= 1 and summary.ops.get("QUANTIZE", 0) >= 1
    assert summary.inputs[0].dtype == "uint8" and summary.outputs[0].dtype == "uint8"  # the app contract holds
    int8_row = next(r for r in info["parity"] if r["variant"] == "int8")
    assert int8_row["thresholds"]["min_sqnr_db"] == 90 and not int8_row["passed"]
    assert "## int8 fallback (--min-sqnr / --min-top1)" in (folder / "report.md").read_text()


@pytest.mark.slow
def test_a_target_makes_the_outputs_float_first(tiny_model, tmp_path):
    """Under a target, unless --int8-output int8 says otherwise, the outputs are float32: the fallback judged the file
    with them, and a target they reach moves no layer."""
    returncode, folder = _export_unbalanced(tiny_model, tmp_path, "--min-sqnr", "10")
    assert returncode == 0
    record = json.loads((folder / "parity.json").read_text())["model"]
    fallback = record["int8_fallback"]
    assert fallback["reached"] and not fallback["applied"] and len(fallback["steps"]) == 1
    assert fallback["steps"][0]["sqnr_db"] >= 10
    assert record["int8_output"]["outputs"][0]["how"] == "dequantize"  # this model's output comes from a MEAN
    summary = inspect_tflite(folder / "tiny_model_build_unbalanced_int8.tflite")
    assert summary.inputs[0].dtype == "uint8" and summary.outputs[0].dtype == "float32"
    assert json.loads((folder / "preprocess.json").read_text())["variants"]["int8"]["output"]["dtype"] == "float32"


@pytest.mark.slow
def test_a_fallback_layer_runs_as_dynamic_range_int8(shufflenet_variants, tmp_path):
    int8 = shufflenet_variants / "shufflenet_v2_x0_5_int8.tflite"
    twin = shufflenet_variants / "shufflenet_v2_x0_5_fp32.tflite"
    ops = op_outputs(int8)
    target = next(i for i, op, _, _, _ in paired_layers(twin, int8) if op == "CONV_2D" and i > 20)
    dst = tmp_path / "dynamic_int8.tflite"
    fall_back(int8, twin, {target}, dst, dynamic={target})

    model = read_model(dst)
    graph = model.subgraphs[0]
    tensors = graph.tensors
    convs = [op for op in graph.operators if op_name(model, op) == "CONV_2D"]
    hybrid = [op for op in convs if tensors[op.inputs[0]].type == schema.TensorType.FLOAT32]
    assert len(hybrid) == 1 and len(convs) == sum(op == "CONV_2D" for op, _, _ in ops)
    x, w, b = (tensors[t] for t in hybrid[0].inputs)
    out = tensors[hybrid[0].outputs[0]]
    assert w.type == schema.TensorType.INT8 and len(w.quantization.scale) == int(w.shape[0])  # int8 per channel
    # the op versions TFLite's converter writes for these types: a runtime without such kernels refuses the file
    assert model.operatorCodes[hybrid[0].opcodeIndex].version == 5  # dynamic-range conv, per-channel weights
    (unpack,) = [op for op in graph.operators if op.outputs[0] == hybrid[0].inputs[0]]
    assert op_name(model, unpack) == "DEQUANTIZE" and model.operatorCodes[unpack.opcodeIndex].version == 2  # int8
    # and the file says so: that conv needs TFLite 2.4 (shufflenet's int8 file needs 2.9 already)
    assert min_runtime_version(read_model(int8)) == min_runtime_version(model) == "2.9.0"
    model.buffers[next(m.buffer for m in model.metadata if m.name == b"min_runtime_version")].data = b"1.14.0".ljust(
        16, b"\0"
    )
    write_model(model, tmp_path / "older.tflite")
    assert min_runtime_version(read_model(tmp_path / "older.tflite")) == "2.4.0"
    assert b.type == schema.TensorType.FLOAT32 and out.type == schema.TensorType.FLOAT32
    before, after = inspect_tflite(int8), inspect_tflite(dst)
    assert after.ops["DEQUANTIZE"] == before.ops.get("DEQUANTIZE", 0) + 1
    assert after.ops["QUANTIZE"] == before.ops.get("QUANTIZE", 0) + 1
    assert after.inputs == before.inputs and after.outputs == before.outputs
    heldout = heldout_batch(heldout_photos()[:16], 224)
    reference = run_tflite(twin, heldout)
    assert sqnr_db(reference, run_tflite(dst, heldout)) > sqnr_db(reference, run_tflite(int8, heldout)) - 1

    # the same layer with the float twin's bias instead of the one its int32 bias stands for
    file_bias = constant_view(model, b)
    twin_biased = tmp_path / "dynamic_float_bias_int8.tflite"
    fall_back(int8, twin, {target}, twin_biased, dynamic={target}, float_biases={target})
    floats = read_model(twin)
    twin_op = next(layer.twin_op for i, layer in twin_layers(twin, int8, floats).items() if i == target)
    expected = constant_view(floats, floats.subgraphs[0].tensors[twin_op.inputs[2]])
    expected_weights = constant_view(floats, floats.subgraphs[0].tensors[twin_op.inputs[1]])
    model = read_model(twin_biased)
    (op,) = [
        op
        for op in model.subgraphs[0].operators
        if op_name(model, op) == "CONV_2D"
        and op.inputs[2] != -1
        and model.subgraphs[0].tensors[op.inputs[0]].type == schema.TensorType.FLOAT32
    ]
    got = constant_view(model, model.subgraphs[0].tensors[op.inputs[2]])
    assert np.array_equal(got, expected) and not np.array_equal(file_bias, expected)
    assert sqnr_db(reference, run_tflite(twin_biased, heldout)) > sqnr_db(reference, run_tflite(int8, heldout)) - 1

    # in float form: the float twin's weights, stored as float16 and dequantized to float32 for the conv
    floated = tmp_path / "float_int8.tflite"
    assert fall_back(int8, twin, {target}, floated).float16_weights == expected_weights.size
    model = read_model(floated)
    graph = model.subgraphs[0]
    (conv,) = [
        op
        for op in graph.operators
        if op_name(model, op) == "CONV_2D" and graph.tensors[op.inputs[1]].type == schema.TensorType.FLOAT32
    ]
    (unpack,) = [op for op in graph.operators if op.outputs[0] == conv.inputs[1]]
    half = graph.tensors[unpack.inputs[0]]
    assert op_name(model, unpack) == "DEQUANTIZE" and half.type == schema.TensorType.FLOAT16
    assert np.array_equal(constant_view(model, half), expected_weights.astype(np.float16))
    assert sqnr_db(reference, run_tflite(floated, heldout)) > sqnr_db(reference, run_tflite(int8, heldout)) - 1


@pytest.mark.slow
def test_a_float_form_depthwise_layer_loads_in_tensorflows_runtime(shufflenet_variants, tmp_path):
    """Float16 weights and a float32 bias on one depthwise conv: TensorFlow 2.19's XNNPACK refuses the file (the
    interpreter does not load) and LiteRT 2.1 runs it far slower. The bias goes float16 with the weights, as in the
    converter's float16 variant, and the file loads and answers in TensorFlow's own interpreter as in LiteRT (in a
    process of its own: TensorFlow's and LiteRT's runtimes in one process abort at its exit)."""
    int8 = shufflenet_variants / "shufflenet_v2_x0_5_int8.tflite"
    twin = shufflenet_variants / "shufflenet_v2_x0_5_fp32.tflite"
    target = next(i for i, op, _, _, _ in paired_layers(twin, int8) if op == "DEPTHWISE_CONV_2D" and i > 20)
    floated = tmp_path / "float_depthwise_int8.tflite"
    fall_back(int8, twin, {target}, floated)
    model = read_model(floated)
    graph = model.subgraphs[0]
    (depthwise,) = [
        op
        for op in graph.operators
        if op_name(model, op) == "DEPTHWISE_CONV_2D" and graph.tensors[op.inputs[0]].type == schema.TensorType.FLOAT32
    ]
    for position in (1, 2):  # weights, bias
        (unpack,) = [op for op in graph.operators if op.outputs[0] == depthwise.inputs[position]]
        assert op_name(model, unpack) == "DEQUANTIZE" and model.operatorCodes[unpack.opcodeIndex].version == 3
        assert graph.tensors[unpack.inputs[0]].type == schema.TensorType.FLOAT16

    (x,) = heldout_batch(heldout_photos()[:1], 224)
    summary = inspect_tflite(floated)
    np.save(tmp_path / "x.npy", quantize(x[None], summary.inputs[0]))
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "i = tf.lite.Interpreter(model_path=sys.argv[1])\n"
        "i.allocate_tensors()\n"  # raised "failed to delegate DEPTHWISE_CONV_2D" with a float32 bias
        "i.set_tensor(i.get_input_details()[0]['index'], np.load(sys.argv[2]))\n"
        "i.invoke()\n"
        "np.save(sys.argv[3], i.get_tensor(i.get_output_details()[0]['index']))\n"
    )
    args = [str(floated), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tensorflow = dequantize(np.load(tmp_path / "y.npy"), summary.outputs[0]).reshape(1, -1)
    assert sqnr_db(run_tflite(floated, x[None]), tensorflow) > 40


@pytest.mark.slow
def test_float_outputs_after_a_fallback_keep_the_output_name(tiny_model, tmp_path):
    """A high target ends with the output layer on float activations: its float output becomes the model's, under the
    name the int8 output had, which apps may look it up by. (The float form's float16 weights and biases cap this
    model near 74 dB; int8 outputs, much lower.)"""
    flags = ("--min-sqnr", "70", "--no-fitted-rounding", "--no-tuning")
    (tmp_path / "target").mkdir()
    (tmp_path / "plain").mkdir()
    returncode, folder = _export_unbalanced(tiny_model, tmp_path / "target", *flags)
    assert returncode == 0  # reached: nothing quantizes the output any more
    assert json.loads((folder / "parity.json").read_text())["model"]["int8_output"]["outputs"][0]["how"] == "float"
    _, plain = _export_unbalanced(tiny_model, tmp_path / "plain")
    files = [f / "tiny_model_build_unbalanced_int8.tflite" for f in (folder, plain)]
    floated, quantized = (read_model(path).subgraphs[0] for path in files)
    assert [inspect_tflite(path).outputs[0].dtype for path in files] == ["float32", "uint8"]
    assert floated.tensors[floated.outputs[0]].name == quantized.tensors[quantized.outputs[0]].name


@pytest.mark.slow
def test_the_fallback_judges_the_file_as_it_will_ship(shufflenet_variants, tmp_path):
    """With float outputs to come (--int8-output float), each file is judged and costed with them: a target that the
    float logits alone reach moves no layer, though the file with int8 logits misses it."""
    int8 = tmp_path / "int8.tflite"
    shutil.copyfile(shufflenet_variants / "shufflenet_v2_x0_5_int8.tflite", int8)
    twin = shufflenet_variants / "shufflenet_v2_x0_5_fp32.tflite"
    images = heldout_batch(heldout_photos()[:24], 224)
    reference = run_tflite(twin, images)
    floated = tmp_path / "floated.tflite"
    float_output(int8, floated)
    plain, shipped = (float(sqnr_db(reference, run_tflite(path, images))) for path in (int8, floated))
    assert shipped > plain + 0.005  # without the int8 output step

    def cost(path):
        return Cost(path.stat().st_size, 1.0)

    before = int8.read_bytes()
    target = (plain + shipped) / 2
    crops = Crops(images, reference[:8])
    judge = Judge(images, "24 held-out photos")
    result = reach_targets(int8, twin, crops, judge, target, None, cost, True, float_output)
    assert result.reached and len(result.steps) == 1 and not result.applied
    assert abs(result.steps[0].sqnr_db - shipped) < 1e-3 and result.steps[0].cost.bytes == floated.stat().st_size
    assert int8.read_bytes() == before  # the float outputs are the later step's to write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["floated.tflite", "int8.tflite"]

    # a top-1 target is judged by the expected agreement, aimed one of its standard errors higher
    logits = run_tflite(floated, images)
    expected, error = expected_agreement(reference, logits)
    result = reach_targets(int8, twin, crops, judge, None, expected - error, cost, True, float_output)
    assert result.top1_aim == pytest.approx(expected) and 0 < error < 0.1
    assert result.reached and not result.applied
    (step,) = result.steps
    assert step.expected_top1 == pytest.approx(expected)
    assert step.top1_agreement == pytest.approx(np.mean(logits.argmax(1) == reference.argmax(1)))


@pytest.mark.slow
def test_float_output_drops_the_int8_output_step(shufflenet_variants, tmp_path):
    int8 = shufflenet_variants / "shufflenet_v2_x0_5_int8.tflite"
    dst = tmp_path / "float_output.tflite"
    (result,) = float_output(int8, dst).outputs
    before, after = inspect_tflite(int8), inspect_tflite(dst)
    assert result.how == "dynamic-range" and after.outputs[0].dtype == "float32"
    assert after.inputs[0] == before.inputs[0]  # the app still feeds the same int8 input
    assert after.ops["DEQUANTIZE"] == before.ops.get("DEQUANTIZE", 0) + 1
    assert after.ops["FULLY_CONNECTED"] == before.ops["FULLY_CONNECTED"]
    assert after.size_bytes <= before.size_bytes  # int8 weights kept; the int32 bias became a float32 one
    heldout = heldout_batch(heldout_photos(), 224)
    reference = run_onnx(shufflenet_variants / "shufflenet_v2_x0_5_simplified.onnx", _nchw_of(heldout))
    quantized, floating = run_tflite(int8, heldout), run_tflite(dst, heldout)
    step, zero = before.outputs[0].scale, before.outputs[0].zero_point
    codes = np.rint(quantized / step) + zero
    inside = (codes > -128) & (codes < 127)  # where the int8 output did not saturate
    assert inside.mean() > 0.99 and np.abs(floating - quantized)[inside].max() < 2 * step  # the same function
    assert np.abs(floating - quantized).max() > 0.1 * step  # without the output rounding (and clipping)
    assert sqnr_db(reference, floating) > sqnr_db(reference, quantized)


@pytest.mark.slow
def test_float_output_of_a_requantized_output_dequantizes_it(tmp_path):
    """An output a QUANTIZE makes from int8 (the uint8 output apps get) is not a float layer: it gets a DEQUANTIZE,
    and the float output is the uint8 one's value."""
    args = ["--model", f"{ROOT / 'tests' / 'data' / 'tiny_model.py'}:build", "--input-size", "32", "--quant", "int8"]
    proc = run_cli("pipeline.export", *args, "--out", "out", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    int8 = tmp_path / "out" / "tiny_model_build" / "tiny_model_build_int8.tflite"
    assert inspect_tflite(int8).outputs[0].dtype == "uint8"
    dst = tmp_path / "float_output.tflite"
    (result,) = float_output(int8, dst).outputs
    assert result.how == "dequantize" and inspect_tflite(dst).outputs[0].dtype == "float32"
    crops = heldout_batch(heldout_photos()[:8], 32)
    np.testing.assert_allclose(run_tflite(dst, crops), run_tflite(int8, crops), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_narrowed_ranges_re_express_the_biases_of_transposed_convs(tmp_path):
    """A TRANSPOSE_CONV keeps its bias at input 3: when its input's range narrows, that bias is re-expressed in the
    new input scale as a conv's is, so the narrowed file computes what the file did before the range was widened."""
    args = ["--model", f"{ROOT / 'tests' / 'data' / 'vision_models.py'}:decoder", "--input-size", "64"]
    args += ["--quant", "int8", "--int8-io", "int8", "--no-tuning", "--no-percentile-ranges"]
    proc = run_cli("pipeline.export", *args, "--out", "out", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    int8 = tmp_path / "out" / "vision_models_decoder" / "vision_models_decoder_int8.tflite"
    wide, narrowed = tmp_path / "wide_int8.tflite", tmp_path / "narrowed_int8.tflite"
    _widen_range(int8, wide, factor=64.0, reader_kind="TRANSPOSE_CONV")
    calib = calibration_batch(calibration_photos(), 64, 16).astype(np.float32)
    change = narrow_ranges(wide, code_counts(wide, calib), 99.999, narrowed)
    assert change.biases > 0
    model = read_model(narrowed)
    graph = model.subgraphs[0]
    for op in graph.operators:
        if op_name(model, op) == "TRANSPOSE_CONV":
            x, w, b = (graph.tensors[t].quantization for t in biased_operands(model, op))
            assert np.allclose(b.scale, x.scale[0] * np.asarray(w.scale), rtol=1e-5)
    heldout = heldout_batch(heldout_photos()[:8], 64).astype(np.float32)
    reference = run_tflite_outputs(int8, heldout)
    damaged, repaired = run_tflite_outputs(wide, heldout), run_tflite_outputs(narrowed, heldout)
    gains = {name: sqnr_db(v, repaired[name]) - sqnr_db(v, damaged[name]) for name, v in reference.items()}
    (classes,) = [name for name, v in reference.items() if v.shape[-1] == 4]  # the other: 2 saturated sigmoids
    assert gains[classes] > 3 and min(gains.values()) > 0
