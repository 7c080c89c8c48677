"""A batch of exports in parallel processes gives the same summary as one after another, each log kept apart."""

import pytest

from pipeline.zoo import export_many

OPTIONS = {"input_size": 32, "quant": "fp32", "calib_samples": 8}


@pytest.mark.slow
def test_parallel_batch_matches_the_serial_one(tmp_path, tiny_model):
    models = [f"{tiny_model}:build", f"{tiny_model}:not_a_module", f"{tiny_model}:build_unbalanced"]
    serial = list(export_many(models, {**OPTIONS, "out": tmp_path / "serial"}, "fp32", jobs=1))
    parallel = list(export_many(models, {**OPTIONS, "out": tmp_path / "parallel"}, "fp32", jobs=2))
    assert [row["model"] for row, _, _ in parallel][0::2] == ["tiny_model_build", "tiny_model_build_unbalanced"]
    for (s_row, s_exc, s_passed), (p_row, p_exc, p_passed) in zip(serial, parallel):
        assert s_row["parity"] == p_row["parity"] and s_passed == p_passed
        assert (s_exc is None) == (p_exc is None)
        if s_exc is None:
            assert s_row["sqnr_db"] == p_row["sqnr_db"] and s_row["size_kib"] == p_row["size_kib"]
    assert [r["parity"] for r, _, _ in parallel] == ["pass", "ERROR", "pass"]
    assert "not a torch.nn.Module" in str(parallel[1][1])
    logs = sorted(p.name for p in (tmp_path / "parallel").glob("*.log"))
    assert len(logs) == 3 and all((tmp_path / "parallel" / name).stat().st_size > 0 for name in logs)
    assert "tiny_model_build" in (tmp_path / "parallel" / "tiny_model.py_build.log").read_text()
    assert (tmp_path / "parallel" / "tiny_model_build" / "parity.json").is_file()
