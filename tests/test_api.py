"""The Python API: export_model returns the artifacts' paths and parity, and refuses bad input the CLI's way."""

import json

import pytest
import torch

from mobile_vision_export.errors import UserError
from mobile_vision_export.pipeline.api import export_model
from mobile_vision_export.pipeline.sources import SourceError
from tests.data.tiny_model import build


@pytest.mark.slow
def test_export_model_from_a_module(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the caller's folder, not the repo
    torch.manual_seed(3)
    result = export_model(build(), input_size=32, quant="fp32", out="out", name="tiny")
    assert result.passed and result.out_dir == tmp_path.joinpath("out", "tiny").relative_to(tmp_path)
    assert result.files["fp32"].is_file() and result.report.is_file()
    fp32 = result.parity("fp32")
    recorded = json.loads((result.out_dir / "parity.json").read_text())
    row = next(r for r in recorded["parity"] if r["variant"] == "fp32")
    assert fp32.metrics.sqnr_db > 60 and row["metrics"]["sqnr_db"] == pytest.approx(fp32.metrics.sqnr_db)


def test_export_model_refuses_bad_input(tmp_path):
    with pytest.raises(SourceError, match="input_size is required"):
        export_model(build(), out=tmp_path)
    with pytest.raises(UserError, match="unknown quant 'int4'"):
        export_model("shufflenet_v2_x0_5", quant="int4", out=tmp_path)
    with pytest.raises(UserError, match="reproducible=True needs .* ATEN_CPU_CAPABILITY=default"):
        export_model(build(), input_size=32, reproducible=True, out=tmp_path)  # pytest's process is not pinned
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "model, options, message",
    [
        ("shufflenet_v2_x0_5", {"input_size": "big"}, "--input-size must be S or \\(H, W\\) in whole pixels"),
        ("module", {"input_size": "big"}, "--input-size must be S or \\(H, W\\) in whole pixels"),
        ("shufflenet_v2_x0_5", {"max_accuracy_drop": 2}, "--max-accuracy-drop needs --val-dir"),
        ("shufflenet_v2_x0_5", {"calib_samples": 0}, "--calib-samples must be a whole number"),
        ("shufflenet_v2_x0_5", {"calib_samples": -5}, "--calib-samples must be a whole number"),
        ("shufflenet_v2_x0_5", {"calib_samples": 100_000}, "give at most 2853"),
        ("shufflenet_v2_x0_5", {"min_sqnr": float("nan")}, "--min-sqnr must be a finite number"),
        ("shufflenet_v2_x0_5", {"thresholds": {"fp32": {"min_sqnr": float("nan")}}}, "--min-sqnr-fp32 must be finite"),
        ("shufflenet_v2_x0_5", {"mean": (0.5, 0.5)}, "--mean takes three numbers"),
    ],
)
def test_the_api_refuses_what_the_command_line_refuses(tmp_path, model, options, message):
    """One set of checks serves both; the caller's module comes back in the mode it was passed in."""
    module = build().train() if model == "module" else None
    with pytest.raises(UserError, match=message.replace("must be finite", "must be a finite number")):
        export_model(module if module is not None else model, out=tmp_path, **options)
    assert not any(tmp_path.iterdir())
    if module is not None:
        assert module.training


def test_a_module_passed_in_train_mode_comes_back_in_train_mode(tmp_path):
    module = build().train()
    with pytest.raises(UserError, match="give at most"):  # fails after the module was wrapped and set to eval
        export_model(module, input_size=32, calib_samples=10**9, out=tmp_path)
    assert module.training and all(m.training for m in module.modules())
