"""The Python API: export_model returns the artifacts' paths and parity, and refuses bad input the CLI's way."""

import json

import pytest
import torch

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
    with pytest.raises(SourceError, match="unknown quant 'int4'"):
        export_model("shufflenet_v2_x0_5", quant="int4", out=tmp_path)
    assert not any(tmp_path.iterdir())
