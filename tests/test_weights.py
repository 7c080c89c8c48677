import dataclasses

import numpy as np
import pytest
import torch

from mobile_vision_export.export.images import heldout_batch, heldout_photos, normalize
from mobile_vision_export.models import get_model, get_spec
from mobile_vision_export.models import weights as weights_mod
from mobile_vision_export.models.weights import WeightsError, load_weights


def test_imagenet_weights_load_offline_and_classify_real_photos():
    model = get_model("mobilenet_v2", "imagenet")
    photos = [p for p in heldout_photos() if p.label is not None]
    spec = get_spec("mobilenet_v2")
    x = normalize(heldout_batch(photos, 224), spec.mean, spec.std).transpose(0, 3, 1, 2)
    with torch.no_grad():
        predicted = model(torch.from_numpy(np.ascontiguousarray(x))).argmax(1).numpy()
    correct = int(np.sum(predicted == np.array([p.label for p in photos])))
    assert correct >= 17, f"torchvision's MobileNetV2 gets 18/20 of these photos; got {correct}/20"


def test_imagenet_weights_are_verified_by_sha256(monkeypatch):
    bundled = weights_mod.BUNDLED_IMAGENET["mobilenet_v2"]
    monkeypatch.setitem(weights_mod.BUNDLED_IMAGENET, "mobilenet_v2", dataclasses.replace(bundled, sha256="0" * 64))
    with pytest.raises(WeightsError, match="SHA-256"):
        get_model("mobilenet_v2", "imagenet")


def test_imagenet_for_other_models_says_where_weights_come_from():
    with pytest.raises(WeightsError, match="shufflenetv2_x0.5-f707e7126e.pth.*nothing is downloaded"):
        get_model("shufflenet_v2_x0_5", "imagenet")


def test_a_checkpoint_round_trips(tmp_path):
    source = get_model("squeezenet1_1")
    path = tmp_path / "sq.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    target = get_model("squeezenet1_1", str(path))
    assert torch.equal(target.features[0].weight, source.features[0].weight)


def test_mismatched_checkpoint_names_the_first_keys(tmp_path):
    path = tmp_path / "shufflenet.pth"
    torch.save(get_model("shufflenet_v2_x0_5").state_dict(), path)
    with pytest.raises(WeightsError, match=r"missing keys \['features.0.0.weight'.*unexpected keys \['conv1.0.weight'"):
        get_model("mobilenet_v2", str(path))


def test_shape_mismatch_is_named(tmp_path):
    path = tmp_path / "x1.pth"
    torch.save(get_model("shufflenet_v2_x1_0").state_dict(), path)
    with pytest.raises(
        WeightsError, match=r"'stage2.0.branch1.2.weight' has shape \(58, 24, 1, 1\), the model needs \(24, 24, 1, 1\)"
    ):
        load_weights(get_model("shufflenet_v2_x0_5"), "shufflenet_v2_x0_5", str(path))


class NotATensor:
    pass


def test_arbitrary_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.0.weight": NotATensor()}, path)
    with pytest.raises(WeightsError, match="cannot read weights"):
        get_model("shufflenet_v2_x0_5", str(path))


def test_garbage_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights"):
        get_model("mobilenet_v2", str(garbage))
    with pytest.raises(WeightsError, match="not found"):
        get_model("mobilenet_v2", str(tmp_path / "absent.pth"))
