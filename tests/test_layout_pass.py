"""The .tflite layout pass: fewer TRANSPOSEs, identical outputs, identical quantization."""

import numpy as np
import pytest
import torch
from ai_edge_litert import schema_py_generated as schema

from mobile_vision_export.export.images import (
    calibration_batch,
    calibration_photos,
    heldout_batch,
    heldout_photos,
    normalize,
)
from mobile_vision_export.export.layout_pass import rewrite_layout
from mobile_vision_export.export.onnx_graph import export_onnx, simplify_onnx
from mobile_vision_export.export.tflite_convert import convert_tflite
from mobile_vision_export.export.tflite_inspect import inspect_tflite
from mobile_vision_export.export.tflite_model import buffer_spans, read_model, serialize
from mobile_vision_export.validate.runners import run_tflite
from tests.data.tiny_model import build_shuffle

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def tiny_shuffle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny_shuffle")
    torch.manual_seed(0)
    raw = export_onnx(build_shuffle(), 64, tmp / "shuffle.onnx")
    simplified = simplify_onnx(raw, tmp / "shuffle_sim.onnx")
    calib = calibration_batch(calibration_photos(), 64, 16)
    return convert_tflite(simplified, tmp / "work", ["fp32", "int8"], calib, MEAN, STD).files


def _quantization(path):
    graph = schema.ModelT.InitFromObj(schema.Model.GetRootAs(path.read_bytes(), 0)).subgraphs[0]
    return {t.name: _params(t.quantization) for t in graph.tensors}


def _params(q):
    if q is None:
        return None
    return [list(v) if v is not None else [] for v in (q.scale, q.zeroPoint, q.min, q.max)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fp32", "int8"])
@pytest.mark.parametrize("nhwc_shuffles", [False, True])
def test_islands_go_and_outputs_stay(tiny_shuffle, tmp_path, mode, nhwc_shuffles):
    src = tiny_shuffle[mode]
    dst = tmp_path / src.name
    result = rewrite_layout(src, dst, nhwc_shuffles=nhwc_shuffles)
    assert result.ops_before["TRANSPOSE"] == 4  # shuffle island (in, 5-D, out) and one before the global average
    if nhwc_shuffles:
        assert result.islands == 2 and inspect_tflite(dst).ops["TRANSPOSE"] == 1  # one 5-D TRANSPOSE per shuffle
    else:
        assert result.islands == 1 and inspect_tflite(dst).ops["TRANSPOSE"] == 3  # the shuffle island is kept
    assert inspect_tflite(dst).ops["MEAN"] == 1 and inspect_tflite(dst).ops["RESHAPE"] == 2
    x = normalize(heldout_batch(heldout_photos()[:6], 64), MEAN, STD)
    before_out, after_out = run_tflite(src, x), run_tflite(dst, x)
    if mode == "int8":
        assert np.array_equal(before_out, after_out)  # bit for bit
    else:  # a global average over (H, W) of NHWC sums in another order: float rounding only
        assert np.max(np.abs(before_out - after_out)) <= 1e-6 * np.max(np.abs(before_out))
    before, after = _quantization(src), _quantization(dst)
    assert all(after[name] == before[name] for name in after if name in before)


@pytest.mark.slow
def test_shufflenet_islands_with_slices_rewrite_exactly(shufflenet_variants, tmp_path):
    """The full rewrite on a real ShuffleNet V2: shuffles become one 5-D TRANSPOSE each, slices move to NHWC."""
    x = normalize(heldout_batch(heldout_photos()[:4], 224), MEAN, STD)
    for mode in ("fp32", "int8"):
        src = shufflenet_variants / f"shufflenet_v2_x0_5_{mode}.tflite"
        result = rewrite_layout(src, tmp_path / src.name, nhwc_shuffles=True)
        assert result.islands == 16 and result.ops_before["TRANSPOSE"] == 61 and result.ops_after["TRANSPOSE"] == 16
        assert result.ops_after["STRIDED_SLICE"] == result.ops_before["STRIDED_SLICE"]
        assert np.array_equal(run_tflite(src, x), run_tflite(tmp_path / src.name, x))
        # the default keeps the shuffle islands: nothing to rewrite in ShuffleNet V2
        assert rewrite_layout(src, tmp_path / f"default_{src.name}").islands == 0


@pytest.mark.slow
def test_a_constant_patched_in_place_equals_the_model_packed_again(tiny_shuffle):
    """buffer_spans: rewriting a constant's bytes in the serialized model gives what packing the changed model gives."""
    model = read_model(tiny_shuffle["int8"])
    constants = [t for t in model.subgraphs[0].tensors if model.buffers[t.buffer].data is not None]
    weights = next(t for t in constants if t.type == schema.TensorType.INT8)
    packed = serialize(model)
    start, length = buffer_spans(packed)[weights.buffer]
    changed = (np.asarray(model.buffers[weights.buffer].data, np.uint8) + 7).astype(np.uint8)
    model.buffers[weights.buffer].data = changed
    patched = bytearray(packed)
    patched[start : start + length] = changed.tobytes()
    assert length == changed.size and bytes(patched) == serialize(model)
