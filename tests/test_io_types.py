"""The int8 file as clients take it: the camera's uint8 pixels in, uint8 logits out, the same function."""

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from mobile_vision_export.export.images import heldout_batch, heldout_photos, pixel_codes
from mobile_vision_export.export.tflite_inspect import inspect_tflite
from mobile_vision_export.int8.io_types import uint8_io
from mobile_vision_export.validate.runners import run_tflite


@pytest.mark.slow
def test_uint8_io_takes_the_pixels_and_computes_the_same(shufflenet_variants, tmp_path):
    int8 = shufflenet_variants / "shufflenet_v2_x0_5_int8.tflite"  # exported with --int8-io int8
    dst = tmp_path / "uint8_io.tflite"
    summary = uint8_io(int8, dst)
    before, after = inspect_tflite(int8), inspect_tflite(dst)
    assert before.inputs[0].dtype == "int8"
    assert after.inputs[0].dtype == "uint8" and after.inputs[0].zero_point == 0
    assert abs(after.inputs[0].scale * 255 - 1) < 1e-6
    # the normalization folded into the graph makes the calibrated int8 input grid the pixel grid itself
    assert summary.input_shift_only
    assert after.outputs[0].dtype == "uint8" and after.outputs[0].zero_point == before.outputs[0].zero_point + 128
    assert after.outputs[0].scale == before.outputs[0].scale
    assert after.ops["QUANTIZE"] == before.ops.get("QUANTIZE", 0) + 2
    crops = heldout_batch(heldout_photos()[:16], 224)
    np.testing.assert_array_equal(run_tflite(dst, crops), run_tflite(int8, crops))
    interpreter = Interpreter(model_path=str(dst))  # the pixel codes go in as they are, nothing computed
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixel_codes(crops[:1]))
    interpreter.invoke()
    raw = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    logits = (raw.astype(np.float32) - after.outputs[0].zero_point) * after.outputs[0].scale
    np.testing.assert_array_equal(logits.reshape(1, -1), run_tflite(int8, crops[:1]))
