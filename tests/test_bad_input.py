"""Bad input: a one-line error naming the problem and the fix, exit code 2, and no artifact folder."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

from mobile_vision_export.errors import UserError
from mobile_vision_export.export.images import heldout_photos
from mobile_vision_export.export.wording import plural
from mobile_vision_export.models import get_model
from mobile_vision_export.models.weights import IMAGENET_MEAN, IMAGENET_STD
from mobile_vision_export.pipeline.api import model_source
from mobile_vision_export.pipeline.export import EXIT_USER_ERROR, main


def _fails(capsys, tmp_path, *argv: str) -> str:
    code = main([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == EXIT_USER_ERROR, err
    assert len(errors) == 1, err
    assert not (tmp_path / "out").exists(), "an output folder was left behind"
    return errors[0]


def test_unknown_model(capsys, tmp_path):
    assert "did you mean shufflenet_v2_x0_5" in _fails(capsys, tmp_path, "--model", "shufflenet_v2_x05")


def test_unreadable_weights(capsys, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    assert "cannot read weights" in _fails(capsys, tmp_path, "--model", "mobilenet_v2", "--weights", str(bad))
    assert "weights file not found" in _fails(capsys, tmp_path, "--model", "mobilenet_v2", "--weights", "nope.pth")


def test_mismatched_weights(capsys, tmp_path):
    path = tmp_path / "sq.pth"
    torch.save(get_model("squeezenet1_1").state_dict(), path)
    line = _fails(capsys, tmp_path, "--model", "mobilenet_v2", "--weights", str(path))
    assert "missing keys ['features.0.0.weight'" in line and "unexpected keys" in line


def test_imagenet_weights_for_a_model_without_them(capsys, tmp_path):
    line = _fails(capsys, tmp_path, "--model", "squeezenet1_1", "--weights", "imagenet")
    assert "squeezenet1_1-b8a52dc0.pth" in line and "nothing is downloaded" in line


def test_calibration_folder_without_images(capsys, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.txt").write_text("text")
    line = _fails(capsys, tmp_path, "--model", "shufflenet_v2_x0_5", "--calib-dir", str(folder))
    assert "no readable images" in line


def test_unsupported_op(capsys, tmp_path):
    node = helper.make_node("FancyNorm", ["x"], ["y"], name="norm_7", domain="com.example")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])],
    )
    path = tmp_path / "custom.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]),
        path,
    )
    line = _fails(capsys, tmp_path, "--onnx", str(path), "--quant", "fp32")
    assert "'FancyNorm'" in line and "'norm_7'" in line


def test_output_folder_that_cannot_be_written(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    line = _fails(capsys, blocker, "--model", "shufflenet_v2_x0_5")
    assert "cannot write to output folder" in line and "--out" in line


def test_custom_model_mistakes(capsys, tmp_path, tiny_model):
    assert "--input-size is required" in _fails(capsys, tmp_path, "--model", f"{tiny_model}:build")
    assert "no callable 'missing'" in _fails(capsys, tmp_path, "--model", f"{tiny_model}:missing", "--input-size", "64")
    assert "not a torch.nn.Module" in _fails(
        capsys, tmp_path, "--model", f"{tiny_model}:not_a_module", "--input-size", "64"
    )
    assert "model file not found" in _fails(capsys, tmp_path, "--model", "absent.py:build", "--input-size", "64")


def test_onnx_with_dynamic_input(capsys, tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, "h", "w"])],
    )
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert "has a dynamic size [1, 3, None, None]: give --input-size S" in _fails(capsys, tmp_path, "--onnx", str(path))


def test_labels_that_do_not_fit(capsys, tmp_path, tiny_model):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    line = _fails(capsys, tmp_path, "--model", f"{tiny_model}:build", "--input-size", "32", "--labels", str(labels))
    assert "2 names but the model has 10 outputs" in line
    assert "cannot read labels file" in _fails(capsys, tmp_path, "--model", "mobilenet_v2", "--labels", "absent.txt")


def test_truncated_photos_are_skipped_then_refused(capsys, tmp_path, caplog):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(folder / "whole.jpg")
    (folder / "cut.jpg").write_bytes((folder / "whole.jpg").read_bytes()[:300])
    from mobile_vision_export.export.images import photos_in_dir

    assert [p.path.name for p in photos_in_dir(folder)] == ["whole.jpg"]
    assert "cut.jpg" in caplog.text
    (folder / "whole.jpg").unlink()
    assert "no readable images" in _fails(capsys, tmp_path, "--model", "shufflenet_v2_x0_5", "--calib-dir", str(folder))


def test_factory_that_raises_or_cannot_export(capsys, tmp_path):
    source = tmp_path / "nets.py"
    source.write_text(
        "import torch\n"
        "def broken():\n    raise RuntimeError('no such layer')\n"
        "class Inv(torch.nn.Module):\n    def forward(self, x):\n        return torch.linalg.inv(x[0, 0, :8, :8])[None]\n"  # noqa: E501
        "def inverse():\n    return Inv()\n"
    )
    assert "broken() raised RuntimeError: no such layer" in _fails(
        capsys, tmp_path, "--model", f"{source}:broken", "--input-size", "32"
    )
    line = _fails(capsys, tmp_path, "--model", f"{source}:inverse", "--input-size", "32")
    assert "torch.onnx.export failed" in line and "--onnx" in line


def test_flags_that_do_not_apply_or_make_no_sense(capsys, tmp_path, tiny_model):
    assert "apply to one model, not to --all" in _fails(capsys, tmp_path, "--all", "--input-size", "160")
    assert "--std must be positive" in _fails(
        capsys, tmp_path, "--model", f"{tiny_model}:build", "--input-size", "32", "--std", "0,1,1"
    )
    assert "does not apply to --onnx" in _fails(capsys, tmp_path, "--onnx", "x.onnx", "--weights", "w.pth")
    zoo = ("--model", "shufflenet_v2_x0_5")
    assert "--min-top1 is a fraction of photos" in _fails(capsys, tmp_path, *zoo, "--min-top1", "95")
    assert "--min-top1 is an int8 target" in _fails(capsys, tmp_path, *zoo, "--quant", "fp32", "--min-top1", "0.9")
    assert "--profile-device goes with --profile" in _fails(capsys, tmp_path, *zoo, "--profile-device", "pixel-4")
    assert "unknown device 'pixel-9'" in _fails(capsys, tmp_path, *zoo, "--profile", "--profile-device", "pixel-9")
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "mobilenet_v2", "--calib-samples", "0"])
    assert exit_info.value.code == EXIT_USER_ERROR and "must be at least 1" in capsys.readouterr().err


def test_zoo_weights_carry_their_preprocessing_and_flags_override_with_a_warning(caplog):
    source = model_source("mobilenet_v2", "imagenet")
    assert (source.input_size, source.mean, source.std) == ((224, 224), IMAGENET_MEAN, IMAGENET_STD)
    assert caplog.records == []
    source = model_source("mobilenet_v2", "imagenet", input_size=160, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert (source.input_size, source.mean, source.std) == ((160, 160), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3 and all("the ImageNet weights of mobilenet_v2 were trained with" in w for w in warnings)
    assert "--mean overrides mobilenet_v2" in warnings[1] and "0.485,0.456,0.406" in warnings[1]


def test_non_finite_thresholds_are_refused_before_the_export(capsys, tmp_path):
    zoo = ["--model", "shufflenet_v2_x0_5", "--quant", "fp32"]
    assert "--min-sqnr-fp32 must be a finite number" in _fails(capsys, tmp_path, *zoo, "--min-sqnr-fp32", "nan")
    (tmp_path / "val").mkdir()
    line = _fails(capsys, tmp_path, *zoo, "--val-dir", str(tmp_path / "val"), "--max-accuracy-drop", "nan")
    assert "--max-accuracy-drop must be a finite number" in line


def test_a_usage_mistake_is_one_line(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--model", "shufflenet_v2_x0_5", "--quant", "int4"])
    assert exited.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: argument --quant: invalid choice: 'int4'"), err
    assert err[0].endswith("--help)")


def test_plural_counts():
    assert [plural(1, "photo"), plural(2, "photo"), plural(1, "class"), plural(3, "class")] == [
        "1 photo",
        "2 photos",
        "1 class",
        "3 classes",
    ]


@pytest.mark.slow
def test_evaluate_and_profile_refuse_what_would_be_a_wrong_answer(shufflenet_variants, tmp_path, capsys):
    from mobile_vision_export.pipeline.evaluate import main as evaluate_main
    from mobile_vision_export.pipeline.profile import main as profile_main

    int8 = shufflenet_variants / "shufflenet_v2_x0_5_int8.tflite"
    val = tmp_path / "val"
    for index, photo in enumerate(heldout_photos()[:4]):
        (val / str(index % 2)).mkdir(parents=True, exist_ok=True)
        shutil.copy(photo.path, val / str(index % 2) / photo.path.name)
    three = tmp_path / "three.txt"
    three.write_text("a\nb\nc\n")
    assert evaluate_main([str(int8), "--val-dir", str(val), "--labels", str(three)]) == EXIT_USER_ERROR
    assert "3 names but the model has 1000 outputs" in capsys.readouterr().err
    truncated = tmp_path / "t.tflite"
    truncated.write_bytes(int8.read_bytes()[:1000])
    assert evaluate_main([str(truncated), "--val-dir", str(val)]) == EXIT_USER_ERROR
    assert "truncated or damaged TFLite file" in capsys.readouterr().err
    assert profile_main([str(truncated), "--runs", "2", "--warmups", "1"]) == EXIT_USER_ERROR
    assert "truncated or damaged TFLite file" in capsys.readouterr().err
    assert evaluate_main([str(int8), "--val-dir", str(val), "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "evaluate.json").read_text())["accuracy"]
    assert "drop_points" not in record and "top1_agreement_with_reference" not in record  # no reference here


def test_an_input_size_the_onnx_file_contradicts(capsys, tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])
    graph = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])])
    path = tmp_path / "static.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    line = _fails(capsys, tmp_path, "--onnx", str(path), "--input-size", "48")
    assert "has a fixed height of 32: --input-size 48 contradicts it" in line


@pytest.mark.slow
def test_a_dynamic_size_onnx_classifier_exports_at_the_size_given(tmp_path, tiny_model):
    """As other frameworks export them: batch, height and width symbolic; --input-size fixes them (batch 1)."""
    from tests.data.tiny_model import build

    path = tmp_path / "dynamic.onnx"
    torch.onnx.export(
        build().eval(),
        torch.zeros(1, 3, 64, 64),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n"}},
        dynamo=False,
    )
    assert main(["--onnx", str(path), "--input-size", "48", "--quant", "fp32", "--out", str(tmp_path / "out")]) == 0
    record = json.loads((tmp_path / "out" / "dynamic" / "parity.json").read_text())
    fp32 = next(r for r in record["parity"] if r["variant"] == "fp32")
    assert fp32["passed"] and fp32["metrics"]["sqnr_db"] > 60
    contract = json.loads((tmp_path / "out" / "dynamic" / "preprocess.json").read_text())
    assert contract["input_size"] == [48, 48] and contract["variants"]["fp32"]["input"]["shape"] == [1, 48, 48, 3]


def test_messages_name_the_right_fix(tmp_path, capsys):
    from mobile_vision_export.pipeline.diagnose import main as diagnose_main
    from mobile_vision_export.validate.labelled import read_labelled

    text = tmp_path / "notes.tflite"
    text.write_text("not a model\n")
    assert diagnose_main([str(text)]) == EXIT_USER_ERROR
    assert "is not a TFLite model" in capsys.readouterr().err  # not "is not a float model"
    (tmp_path / "val" / "cat").mkdir(parents=True)
    shutil.copy(heldout_photos()[0].path, tmp_path / "val" / "cat")
    (tmp_path / "val" / "dog").mkdir()
    with pytest.raises(UserError, match="add photos of that class to it, or remove the folder") as caught:
        read_labelled(tmp_path / "val", ["cat", "dog"])
    assert "--calib-dir" not in str(caught.value)


def test_the_installed_scripts_name_themselves():
    bin_dir = Path(sys.executable).parent
    for script in ("mobile-vision-export", "mve-bundle", "mve-evaluate"):
        proc = subprocess.run([bin_dir / script, "--help"], capture_output=True, text=True, timeout=120)
        assert proc.stdout.startswith(f"usage: {script} "), proc.stdout[:200]
        version = subprocess.run([bin_dir / script, "--version"], capture_output=True, text=True, timeout=120)
        assert version.returncode == 0 and version.stdout.startswith("mobile-vision-export "), version.stdout
    bundle_help = subprocess.run([bin_dir / "mve-bundle", "--help"], capture_output=True, text=True).stdout
    assert "app's Java preprocessing is tested against." in " ".join(bundle_help.split())  # not cut mid-sentence
