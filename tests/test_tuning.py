"""The int8 tuning: its torch replica computes as the int8 kernels do, and training repairs a deliberate error."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ai_edge_litert.schema_py_generated import Padding

from mobile_vision_export.export.images import (
    calibration_batch,
    calibration_photos,
    heldout_batch,
    heldout_photos,
)
from mobile_vision_export.export.tflite_inspect import (
    inspect_tflite,
    paired_layers,
    quantize,
    tensor_keeping_interpreter,
)
from mobile_vision_export.export.tflite_model import op_name, read_model, read_single_graph, write_model
from mobile_vision_export.int8.crops import Crops
from mobile_vision_export.int8.tuning import CHECKS, MIN_EARLY_GAIN_DB, Replica, _depthwise, _FakeQuant, train
from mobile_vision_export.validate.metrics import sqnr_db
from mobile_vision_export.validate.runners import run_tflite
from tests.conftest import ROOT, run_cli
from tests.test_int8_fixes import _widen_range


def test_fake_quant_gradients_are_learned_step_size():
    """Straight through inside the clamp, nothing outside; the scale's gradient as LSQ defines it."""
    torch.manual_seed(0)
    x = (torch.randn(1000) * 3).requires_grad_()
    scale = torch.tensor(0.05, requires_grad=True)
    low, high = -20, 30
    grad = torch.randn(1000)
    _FakeQuant.apply(x, scale, low, high).backward(grad)
    v = x.detach() / scale.detach()
    code = torch.round(v)
    inside = (code >= low) & (code <= high)
    assert torch.equal(x.grad, grad * inside)
    expected = torch.where(inside, code - v, code.clamp(low, high)).mul(grad).sum()
    assert torch.allclose(scale.grad, expected, rtol=1e-4)
    assert 0 < inside.float().mean() < 1  # both sides of the clamp were exercised


@pytest.mark.slow
def _op_by_op(int8, images) -> tuple[set[str], int, int]:
    """Each op of the replica from the interpreter's inputs, against the interpreter's output codes: the op kinds
    met, the codes that differ (each by one at most) and the codes compared."""
    model = read_single_graph(int8)
    replica = Replica(model, {})
    interpreter = tensor_keeping_interpreter(int8)
    interpreter.set_tensor(
        interpreter.get_input_details()[0]["index"], quantize(images[:1], inspect_tflite(int8).inputs[0])
    )
    interpreter.invoke()
    graph = model.subgraphs[0]
    codes = {}
    for op in graph.operators:
        t = int(op.outputs[0])
        if t in replica.zero:  # int8; the file's uint8 input and outputs (QUANTIZE ops) are off the replica's grid
            codes[t] = interpreter.get_tensor(t).astype(np.int64)
    given = {
        t: torch.from_numpy(((c - replica.zero[t]) * replica.scale0[t]).astype(np.float32)) for t, c in codes.items()
    }
    kinds, differing, outputs = set(), 0, graph.outputs
    with torch.no_grad():
        for op in graph.operators:
            t = int(op.outputs[0])
            if t not in codes:
                continue
            graph.outputs = np.array([t])  # read this op's output, every other tensor the interpreter's
            try:
                (out,) = replica(torch.from_numpy(images[:1]), {k: v for k, v in given.items() if k != t})
                out = out.numpy()
            finally:
                graph.outputs = outputs
            ours = np.rint(out / replica.scale0[t]).astype(np.int64) + replica.zero[t]
            assert np.abs(ours - codes[t]).max() <= 1, op_name(model, op)  # a tie rounded the other way at most
            differing += int(np.sum(ours != codes[t]))
            kinds.add(op_name(model, op))
    return kinds, differing, sum(c.size for c in codes.values())


def test_replica_computes_as_the_int8_kernels(shufflenet_variants):
    """Op by op from the interpreter's inputs, and for the whole graph against the delegate the app runs."""
    int8 = shufflenet_variants / "shufflenet_v2_x0_5_int8.tflite"
    images = heldout_batch(heldout_photos()[:4], 224).astype(np.float32)  # the export takes 0..1 RGB
    kinds, differing, total = _op_by_op(int8, images)
    assert differing < 0.005 * total
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "CONCATENATION", "TRANSPOSE", "RESHAPE", "STRIDED_SLICE"} <= kinds
    replica = Replica(read_single_graph(int8), {})
    with torch.no_grad():
        whole = replica(torch.from_numpy(images))[0].numpy()
    # 23.7 dB here: the first conv (the normalization folded into the graph, on exact pixel codes) lands on a
    # rounding near-tie for 0.4 % of its outputs, which the kernels' fixed-point multiplier rounds the other way
    # (one code), and those spread through the 60 layers after it; 30+ dB before the fold
    assert sqnr_db(run_tflite(int8, images), whole) > 20


@pytest.mark.slow
def test_replica_computes_sigmoid_heads_as_the_int8_kernels(tmp_path):
    """A detector head ending in sigmoids (LOGISTIC, on the kernel's own 1/256 grid): op by op as the interpreter.
    The file keeps int8 input and outputs, as the tuning sees it."""
    model = f"{ROOT / 'tests' / 'data' / 'vision_models.py'}:det"
    args = ["--model", model, "--input-size", "64", "--quant", "int8", "--int8-io", "int8"]
    proc = run_cli("pipeline.export", *args, "--out", "out", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    int8 = tmp_path / "out" / "vision_models_det" / "vision_models_det_int8.tflite"
    kinds, differing, total = _op_by_op(int8, heldout_batch(heldout_photos()[:4], 64).astype(np.float32))
    assert "LOGISTIC" in kinds and differing < 0.005 * total


@pytest.mark.slow
@pytest.mark.parametrize(
    "factory, ops",
    [  # MobileNetV3's hard-swish and squeeze-excitation (MUL, RELU_0_TO_1), both resizes and an L2 norm (float ops
        # between DEQUANTIZE and QUANTIZE, and an int8 SUM); the activations with options or constants, and softmax
        ("mobile_heads", {"HARD_SWISH", "MUL", "RELU_0_TO_1", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "SUM"}),
        ("activations", {"PRELU", "LEAKY_RELU", "TANH", "SOFTMAX"}),
        ("decoder", {"TRANSPOSE_CONV", "STRIDED_SLICE", "CONCATENATION"}),  # U-Net-style, two outputs
    ],
)
def test_replica_computes_more_ops_as_the_int8_kernels(tmp_path, factory, ops):
    """Op by op as the interpreter, so the tuning runs on such graphs."""
    model = f"{ROOT / 'tests' / 'data' / 'vision_models.py'}:{factory}"
    args = ["--model", model, "--input-size", "64", "--quant", "int8", "--int8-io", "int8"]
    proc = run_cli("pipeline.export", *args, "--out", "out", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out" / f"vision_models_{factory}"
    int8 = out / f"vision_models_{factory}_int8.tflite"
    kinds, differing, total = _op_by_op(int8, heldout_batch(heldout_photos()[:4], 64).astype(np.float32))
    assert ops <= kinds
    assert differing < 0.005 * total
    tuning = json.loads((out / "parity.json").read_text())["model"]["int8_tuning"]
    assert tuning["skipped"] is None and tuning["steps"] >= 20


_KERAS_TRANSPOSED = """
import sys
import numpy as np, tensorflow as tf
inp = tf.keras.Input((9, 9, 3), batch_size=1)
x = tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
x = tf.keras.layers.Conv2DTranspose(6, 3, strides=2, padding="same", activation="relu")(x)
x = tf.keras.layers.Conv2DTranspose(5, 4, strides=2, padding="same")(x)
y = tf.keras.layers.Conv2DTranspose(4, 3, strides=2, padding="valid")(x)
rng = np.random.default_rng(0)
converter = tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inp, y))
converter.optimizations = [tf.lite.Optimize.DEFAULT]
converter.representative_dataset = lambda: ([rng.normal(size=(1, 9, 9, 3)).astype(np.float32)] for _ in range(20))
converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
converter.inference_input_type = converter.inference_output_type = tf.int8
open(sys.argv[1], "wb").write(converter.convert())
"""


@pytest.mark.slow
def test_replica_computes_transposed_convs_without_bias_as_the_int8_kernels(tmp_path):
    """TFLite's SAME and VALID transposed convolutions (3x3 and 4x4, stride 2), as TensorFlow's converter writes
    them: without a bias input (the zero biases dropped). The replica gives each a zero bias to train; the file it
    writes runs in the interpreter and computes as the replica does."""
    int8 = tmp_path / "transposed.tflite"
    subprocess.run([sys.executable, "-c", _KERAS_TRANSPOSED, str(int8)], check=True, capture_output=True)
    model = read_single_graph(int8)
    ops = model.subgraphs[0].operators
    paddings = {op.builtinOptions.padding for op in ops if op_name(model, op) == "TRANSPOSE_CONV"}
    assert paddings == {Padding.SAME, Padding.VALID}
    images = np.random.default_rng(1).normal(size=(4, 9, 9, 3)).astype(np.float32)
    kinds, differing, total = _op_by_op(int8, images)
    assert "TRANSPOSE_CONV" in kinds and differing < 0.005 * total
    replica = Replica(model, {})
    with torch.no_grad():
        for layer in replica.layers.values():
            layer.bias_units += 3.0  # trained biases, in units of their int32 step
        ours = replica(torch.from_numpy(images))[0].numpy()
    replica.write_back()
    written = tmp_path / "with_biases.tflite"
    write_model(model, written)
    assert sqnr_db(run_tflite(written, images), ours.reshape(len(images), -1)) > 40


@pytest.mark.slow
def test_tuning_repairs_a_deliberately_wide_range(shufflenet_variants, tmp_path):
    int8 = shufflenet_variants / "shufflenet_v2_x0_5_int8.tflite"
    twin = shufflenet_variants / "shufflenet_v2_x0_5_fp32.tflite"  # not equalized: fp32 is the int8 graph's twin
    wide = tmp_path / "wide_int8.tflite"
    conv = _widen_range(int8, wide, factor=64.0)
    tensor = read_model(wide).subgraphs[0].operators[conv].outputs[0]
    calib = calibration_batch(calibration_photos(), 224, 64).astype(np.float32)  # the export takes 0..1 RGB
    heldout = heldout_batch(heldout_photos()[:16], 224).astype(np.float32)  # the export takes 0..1 RGB
    reference = run_tflite(twin, heldout)
    damaged = sqnr_db(reference, run_tflite(wide, heldout))
    assert damaged < sqnr_db(reference, run_tflite(int8, heldout)) - 3  # 6 bits fewer on one tensor really hurt

    tuned = tmp_path / "tuned_int8.tflite"
    crops = Crops(calib, run_tflite(twin, calib[:16]))  # the first 16 judge, the other 48 train
    summary = train(wide, twin, crops, tuned)
    assert not summary.stopped_early  # the replica came closer on the 16 judging crops by step 40
    repaired = sqnr_db(reference, run_tflite(tuned, heldout))
    assert repaired > damaged + 3  # on photos it never trained on
    assert summary.fit_loss_end < summary.fit_loss_start
    scale = lambda path: float(read_model(path).subgraphs[0].tensors[tensor].quantization.scale[0])  # noqa: E731
    assert scale(tuned) < 0.75 * scale(wide)  # the widened step learned its way down
    assert inspect_tflite(tuned).inputs == inspect_tflite(wide).inputs  # the app's contract stays
    assert inspect_tflite(tuned).outputs == inspect_tflite(wide).outputs
    # the built-in kernels check each bias scale against input scale x weight scale: they accept the new file
    builtin = tensor_keeping_interpreter(tuned)
    builtin.set_tensor(builtin.get_input_details()[0]["index"], quantize(heldout[:1], inspect_tflite(tuned).inputs[0]))
    builtin.invoke()


@pytest.mark.slow
def test_export_records_tuning_and_keeps_levels_next_to_float(shufflenet_variants):
    model_info = json.loads((shufflenet_variants / "parity.json").read_text())["model"]
    info = model_info["int8_tuning"]
    assert info["steps"] > 0 and info["layers"] > 0 and info["skipped"] is None
    if info["stopped_early"]:  # random weights: the replica did not come closer on the selection crops
        (_, first), *checks = info["replica_checks"]
        assert info["steps"] == max(CHECKS) and max(db for _, db in checks) < first + MIN_EARLY_GAIN_DB
    assert (info["selection_sqnr_db_after"] > info["selection_sqnr_db_before"]) == info["applied"]
    # the fitted rounding runs only when the tuning was not kept
    assert ("reason" in model_info["int8_fitted_rounding"]) == info["applied"]
    int8 = shufflenet_variants / "shufflenet_v2_x0_5_int8.tflite"
    twin = shufflenet_variants / "shufflenet_v2_x0_5_fp32.tflite"
    model, floats = read_model(int8), read_model(twin)
    graph, f_graph = model.subgraphs[0], floats.subgraphs[0]
    producer = {int(op.outputs[0]): op for op in f_graph.operators}
    checked = 0
    for index, kind, f_tensor, _, _ in paired_layers(twin, int8):
        if kind not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        w_t = graph.tensors[graph.operators[index].inputs[1]]
        f_t = f_graph.tensors[producer[f_tensor].inputs[1]]
        levels = np.frombuffer(bytes(bytearray(model.buffers[w_t.buffer].data)), np.int8).reshape(w_t.shape)
        weights = np.frombuffer(bytes(bytearray(floats.buffers[f_t.buffer].data)), np.float32).reshape(f_t.shape)
        steps = np.asarray(w_t.quantization.scale, np.float64)
        steps = steps.reshape((1, 1, 1, -1) if kind == "DEPTHWISE_CONV_2D" else (-1, 1, 1, 1))
        slack = 1e-4
        assert np.all(levels >= np.floor(weights / steps - slack)) and np.all(
            levels <= np.ceil(weights / steps + slack)
        )
        checked += 1
    assert checked > 30


@pytest.mark.parametrize("stride,dilation,multiplier", [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 1, 3)])
def test_depthwise_as_tap_sums_is_torch_convolution(stride, dilation, multiplier):
    """The pinned arithmetic's depthwise convolution (export.reproducible): values and gradients as torch's."""
    torch.manual_seed(0)
    x = torch.randn(2, 9, 11, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 3, 3, 4 * multiplier, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4 * multiplier, dtype=torch.float64)
    ours = _depthwise(x, w, b, (stride, stride), (dilation, dilation))
    theirs = F.conv2d(
        x.permute(0, 3, 1, 2), w.permute(3, 0, 1, 2), b, stride=stride, dilation=dilation, groups=4
    ).permute(0, 2, 3, 1)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs)
    grad = torch.randn_like(ours)
    for a, b_ in zip(torch.autograd.grad(ours, (x, w), grad), torch.autograd.grad(theirs, (x, w), grad)):
        assert torch.allclose(a, b_)


@pytest.mark.slow
def test_reproducible_exports_are_identical_under_other_cpu_capabilities(tmp_path, tiny_model):
    """--reproducible: the same int8 bytes, and the same training inside the tuning, when ATen, MKL and oneDNN would
    take other vector widths and the runtimes other thread counts (what another machine changes). Without it the
    tuning's checks differ here from step 20 (this model's tuning then stops early, writing nothing)."""
    args = ["--model", f"{tiny_model}:build", "--input-size", "32", "--quant", "int8", "--reproducible", "--out", "out"]
    other_machine = {
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MVE_THREADS": "1",
    }
    files, tunings = [], []
    for name, env in (("here", {}), ("other", other_machine)):
        (tmp_path / name).mkdir()
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            proc = run_cli("pipeline.export", *args, tmp_path=tmp_path / name)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out = tmp_path / name / "out" / "tiny_model_build"
        record = json.loads((out / "parity.json").read_text())
        assert record["versions"]["arithmetic"] == "pinned (reproducible)"
        tuning = record["model"]["int8_tuning"]
        assert tuning.pop("steps") > 0 and tuning.pop("seconds") > 0  # the tuning trained
        tunings.append(tuning)
        files.append((out / "tiny_model_build_int8.tflite").read_bytes())
    assert tunings[0] == tunings[1]
    assert files[0] == files[1]
