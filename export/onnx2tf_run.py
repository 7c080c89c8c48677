"""onnx2tf, building only the files asked for. Run as a child process (`python -m
mobile_vision_export.export.onnx2tf_run`) so it can be stopped with its process group.

onnx2tf writes a float16 file beside the float32 one, and with `-oiqt` (its int8 graph choices: MaxPool pads with
0 rather than the float minimum, which would wreck a calibration range) seven files, four of them calibrated on
every photo. Here the same conversion runs, but the TFLite conversions onnx2tf attempts with a representative
dataset (and its dynamic-range one, unless asked for) are turned away, which onnx2tf logs as failed and skips; its
float16 conversion, unless asked for, returns an empty file that is removed (on mobilenet_v2 it took 17 s and the
converter's peak memory). For int8 the full-integer file is then built once from its SavedModel with the converter
settings onnx2tf uses for `*_full_integer_quant`, giving the same bytes.
Usage: python -m mobile_vision_export.export.onnx2tf_run [--fp16] [--dynamic]
    [CALIB_NPY MEAN_JSON STD_JSON OUT_TFLITE] -- ONNX2TF_ARGS...  (the four int8 arguments with `-oiqt` among
    onnx2tf's)
"""

from __future__ import annotations

import gc
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

SIGNATURE = "serving_default"
TURNED_AWAY = "turned away by export.onnx2tf_run: not a requested variant"


@contextmanager
def _unwanted_turned_away(fp16: bool, dynamic: bool):
    """While inside, TFLite conversions with a representative dataset (and dynamic-range ones unless `dynamic`)
    raise RuntimeError, which onnx2tf catches, logs and moves past; float16 ones, unless `fp16`, return no bytes
    (onnx2tf does not catch there). The dynamic-range one keeps fully-connected weights per tensor: the Task
    Library's TFLite has no per-channel dynamic-range fully-connected kernel (op version 12) and refuses the file."""
    import tensorflow as tf
    from tensorflow.lite.python import lite

    classes = (lite.TFLiteSavedModelConverterV2, lite.TFLiteKerasModelConverterV2, lite.TFLiteFrozenGraphConverterV2)
    originals = {cls: cls.__dict__["convert"] for cls in classes}

    def guard(convert):
        def guarded(self, *args, **kwargs):
            float16 = list(self.target_spec.supported_types) == [tf.float16]
            if float16 and not fp16:
                return b""
            if self.representative_dataset is not None or (self.optimizations and not float16 and not dynamic):
                raise RuntimeError(TURNED_AWAY)
            if self.optimizations and not float16:  # dynamic range
                self._experimental_disable_per_channel_quantization_for_dense_layers = True
            return convert(self, *args, **kwargs)

        return guarded

    for cls, convert in originals.items():
        cls.convert = guard(convert)
    try:
        yield
    finally:
        for cls, convert in originals.items():
            cls.convert = convert


def convert_full_integer(saved_model: Path, calib_npy: Path, mean, std, out: Path) -> None:
    """Calibrate on `calib_npy` (NHWC 0..1, normalized with mean/std as onnx2tf does) and write int8-in/out `out`."""
    import tensorflow as tf

    calib = np.load(calib_npy)
    mean = np.asarray(mean, np.float32).reshape(1, 1, 1, -1)
    std = np.asarray(std, np.float32).reshape(1, 1, 1, -1)
    signature = tf.saved_model.load(str(saved_model)).signatures[SIGNATURE]
    (input_name,) = signature.structured_input_signature[1]

    def representative_dataset():
        for i in range(len(calib)):
            yield {input_name: tf.cast(tf.convert_to_tensor((calib[i : i + 1] - mean) / std), tf.float32)}

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.SELECT_TF_OPS]
    converter._experimental_disable_per_channel = False
    converter.unfold_batchmatmul = False
    converter.representative_dataset = representative_dataset
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(converter.convert())
    tmp.replace(out)


FLAGS = ("--fp16", "--dynamic")


def main(argv: list[str]) -> None:
    split = argv.index("--")
    flags = {arg for arg in argv[:split] if arg in FLAGS}
    int8, onnx2tf_args = [arg for arg in argv[:split] if arg not in FLAGS], argv[split + 1 :]
    if len(int8) not in (0, 4):
        sys.exit(f"expected CALIB_NPY MEAN_JSON STD_JSON OUT_TFLITE or nothing before --, got {int8}")
    out_dir = Path(onnx2tf_args[onnx2tf_args.index("-o") + 1])
    from onnx2tf import onnx2tf

    sys.argv = ["onnx2tf", *onnx2tf_args]
    with _unwanted_turned_away("--fp16" in flags, "--dynamic" in flags):
        onnx2tf.main()
    if "--fp16" not in flags:
        for empty in out_dir.glob("*_float16.tflite"):
            if empty.stat().st_size == 0:  # the conversion turned away
                empty.unlink()
    if int8:
        calib_npy, mean, std, out = Path(int8[0]), json.loads(int8[1]), json.loads(int8[2]), Path(int8[3])
        gc.collect()  # onnx2tf's graphs are not needed to calibrate: free them first
        convert_full_integer(out_dir, calib_npy, mean, std, out)


if __name__ == "__main__":
    main(sys.argv[1:])
