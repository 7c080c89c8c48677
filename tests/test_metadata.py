"""TFLite Metadata in every exported variant, read back with the official reader (tflite-support's
MetadataDisplayer), and kept equal to preprocess.json and labels.txt."""

import io
import json
import zipfile
from dataclasses import replace

import numpy as np
import pytest

from mobile_vision_export.export.metadata import _without_zip_times, disagreements, read_metadata
from mobile_vision_export.export.tflite_model import read_model, write_model
from mobile_vision_export.validate.runners import run_tflite


@pytest.mark.slow
def test_every_variant_carries_labels_and_normalization(shufflenet_variants):
    contract = json.loads((shufflenet_variants / "preprocess.json").read_text())
    labels = (shufflenet_variants / "labels.txt").read_text().splitlines()
    assert set(contract["variants"]) == {"fp32", "fp16", "dynamic", "int8"}
    for mode, variant in contract["variants"].items():
        model = shufflenet_variants / variant["file"]
        metadata = read_metadata(model)
        assert metadata.name == f"shufflenet_v2_x0_5 ({mode})" and metadata.outputs == ("logits",)
        assert metadata.labels[:2] == ["tench", "goldfish"] and len(metadata.labels) == 1000
        assert metadata.color_space == "RGB" and metadata.size == (224, 224)
        assert disagreements(metadata, contract, labels) == [], mode
        assert [i.date_time for i in zipfile.ZipFile(model).infolist()] == [(1980, 1, 1, 0, 0, 0)]


def test_packed_files_carry_no_time_of_writing():
    """The same model and labels packed at two times give the same bytes, still a readable zip after the model."""
    packed = []
    for year in (2021, 2026):
        buffer = io.BytesIO()
        buffer.write(b"TFL3 model bytes")
        with zipfile.ZipFile(buffer, "a") as archive:
            archive.writestr(zipfile.ZipInfo("labels.txt", (year, 5, 6, 7, 8, 10)), "tench\ngoldfish\n")
        packed.append(_without_zip_times(buffer.getvalue()))
    assert packed[0] == packed[1] and packed[0].startswith(b"TFL3 model bytes")
    with zipfile.ZipFile(io.BytesIO(packed[0])) as archive:
        assert archive.read("labels.txt") == b"tench\ngoldfish\n"
        assert archive.infolist()[0].date_time == (1980, 1, 1, 0, 0, 0)


@pytest.mark.slow
def test_a_contract_that_drifts_from_the_metadata_is_caught(shufflenet_variants):
    contract = json.loads((shufflenet_variants / "preprocess.json").read_text())
    labels = (shufflenet_variants / "labels.txt").read_text().splitlines()
    metadata = read_metadata(shufflenet_variants / contract["variants"]["int8"]["file"])
    drifted = {**contract, "mean": [0.5, 0.5, 0.5], "input_size": [256, 256]}
    problems = disagreements(metadata, drifted, labels[::-1])
    assert [p.split(":")[0] for p in problems] == ["mean", "size", "labels"]
    assert disagreements(replace(metadata, color_space="BGR"), contract, labels)[0].startswith("color")


@pytest.mark.slow
def test_metadata_leaves_the_model_unchanged(shufflenet_variants, tmp_path):
    """The metadata is an extra buffer: the interpreter computes the same logits as from the bare graph."""
    contract = json.loads((shufflenet_variants / "preprocess.json").read_text())
    model = shufflenet_variants / contract["variants"]["int8"]["file"]
    graph = read_model(model)
    assert b"TFLITE_METADATA" in [m.name for m in graph.metadata]
    graph.metadata = [m for m in graph.metadata if m.name != b"TFLITE_METADATA"]
    bare = tmp_path / "bare.tflite"
    write_model(graph, bare)
    with pytest.raises(ValueError, match="no TFLite Metadata"):
        read_metadata(bare)
    x = np.random.default_rng(0).uniform(-2, 2, (2, 224, 224, 3)).astype(np.float32)
    np.testing.assert_array_equal(run_tflite(model, x), run_tflite(bare, x))
