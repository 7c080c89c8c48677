"""A batch of exports in parallel processes gives the same summary as one after another, each log kept apart; the
same summary merges from exports made apart (the workflow's one job per model)."""

import json
import os
import shutil

import pytest

from mobile_vision_export.pipeline.zoo import export_many, main

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
    # each of the two exports ran with its share of the cores' threads; the serial one with the default
    share = max(1, (os.cpu_count() or 1) // 2)
    parity = json.loads((tmp_path / "parallel" / "tiny_model_build" / "parity.json").read_text())
    assert parity["runtime_threads"] == min(2, share)
    assert json.loads((tmp_path / "serial" / "tiny_model_build" / "parity.json").read_text())["runtime_threads"] == 2
    assert "MVE_THREADS" not in os.environ  # the batch's environment is not left behind

    # Exports made apart (one CI job per model) merge into the same rows.
    assert main([str(tmp_path / "parallel"), "--out", str(tmp_path / "merged"), "--quant", "fp32"]) == 0
    merged = json.loads((tmp_path / "merged" / "zoo_summary.json").read_text())["models"]
    assert merged == [row for row, exc, _ in parallel if exc is None]


@pytest.mark.slow
def test_merge_reads_each_models_parity_json(tmp_path, shufflenet_variants, capsys):
    one = tmp_path / "job_1" / "shufflenet_v2_x0_5"
    one.mkdir(parents=True)
    shutil.copy(shufflenet_variants / "parity.json", one)
    assert main([str(tmp_path / "job_1"), "--out", str(tmp_path / "summary")]) == 0
    row = json.loads((tmp_path / "summary" / "zoo_summary.json").read_text())["models"][0]
    record = json.loads((shufflenet_variants / "parity.json").read_text())
    int8 = next(r for r in record["parity"] if r["variant"] == "int8")
    assert row["model"] == "shufflenet_v2_x0_5" and row["sqnr_db"] == int8["metrics"]["sqnr_db"]
    assert row["channel_shuffles"] == 16 and row["ops"] > 0 and row["seconds"] > 0
    assert "| shufflenet_v2_x0_5 |" in capsys.readouterr().out
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "summary")]) == 2
    assert capsys.readouterr().err.startswith("error: no <model>/parity.json under")
