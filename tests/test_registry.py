import pytest
import torch

from mobile_vision_export.models import UnknownModelError, get_model, get_spec, list_models
from mobile_vision_export.models.complexity import count_macs, count_parameters
from mobile_vision_export.models.random_init import estimate_batchnorm_stats

# Parameter counts of torchvision's implementations of the same models.
TORCHVISION_PARAMS = {
    "shufflenet_v2_x0_5": 1_366_792,
    "shufflenet_v2_x1_0": 2_278_604,
    "shufflenet_v2_x1_5": 3_503_624,
    "shufflenet_v2_x2_0": 7_393_996,
    "mobilenet_v2": 3_504_872,
    "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
}

# A sample of torchvision state_dict keys and shapes, so official checkpoints load unchanged.
TORCHVISION_KEYS = {
    "shufflenet_v2_x0_5": {
        "conv1.0.weight": (24, 3, 3, 3),
        "stage2.0.branch1.0.weight": (24, 1, 3, 3),
        "stage2.0.branch1.2.weight": (24, 24, 1, 1),
        "stage2.1.branch2.0.weight": (24, 24, 1, 1),
        "stage4.3.branch2.6.running_var": (96,),
        "conv5.0.weight": (1024, 192, 1, 1),
        "fc.weight": (1000, 1024),
    },
    "mobilenet_v2": {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.1.conv.0.0.weight": (32, 1, 3, 3),
        "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.2.conv.0.0.weight": (96, 16, 1, 1),
        "features.2.conv.3.num_batches_tracked": (),
        "features.18.0.weight": (1280, 320, 1, 1),
        "classifier.1.weight": (1000, 1280),
    },
    "squeezenet1_0": {
        "features.0.weight": (96, 3, 7, 7),
        "features.3.squeeze.weight": (16, 96, 1, 1),
        "features.12.expand3x3.weight": (256, 64, 3, 3),
        "classifier.1.weight": (1000, 512, 1, 1),
    },
    "squeezenet1_1": {
        "features.0.weight": (64, 3, 3, 3),
        "features.12.expand1x1.bias": (256,),
        "classifier.1.bias": (1000,),
    },
}


def test_every_family_is_registered():
    names = list_models()
    for family in (
        "shufflenet_v1_g1",
        "shufflenet_v1_g2",
        "shufflenet_v1_g3",
        "shufflenet_v1_g4",
        "shufflenet_v1_g8",
        "shufflenet_v2_x0_5",
        "shufflenet_v2_x2_0",
        "mobilenet_v1",
        "mobilenet_v2",
        "mobilenet_v2_x0_5",
        "squeezenet1_0",
        "squeezenet1_1",
        "xception",
    ):
        assert family in names


@pytest.mark.parametrize("name,expected", sorted(TORCHVISION_PARAMS.items()))
def test_parameter_counts_match_torchvision(name, expected):
    assert count_parameters(get_model(name)) == expected


@pytest.mark.parametrize("name", sorted(TORCHVISION_KEYS))
def test_state_dict_keys_match_torchvision(name):
    state = get_model(name).state_dict()
    for key, shape in TORCHVISION_KEYS[name].items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key


def test_xception_matches_the_reference_port():
    model = get_model("xception")
    assert count_parameters(model) == 22_855_952
    keys = model.state_dict()
    assert "block1.rep.0.conv1.weight" in keys and "block12.skip.weight" in keys and "conv4.pointwise.weight" in keys
    assert get_spec("xception").input_size == 299


def test_shufflenet_v1_unit_widths_follow_the_paper():
    # Table 1 of the paper: stage-4 output channels for g = 1, 2, 3, 4, 8 at 1x.
    for groups, channels in ((1, 576), (2, 800), (3, 960), (4, 1088), (8, 1536)):
        assert get_model(f"shufflenet_v1_g{groups}").fc.in_features == channels


def test_each_entry_knows_its_contract_and_cost():
    spec = get_spec("mobilenet_v2")
    assert (spec.input_size, spec.mean, spec.std) == (224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    params, macs = spec.complexity()
    assert params == 3_504_872 and 290e6 < macs < 310e6


def test_macs_are_measured_from_the_graph():
    model = get_model("shufflenet_v2_x0_5")
    macs_224 = count_macs(model, 224)
    assert 40e6 < macs_224 < 42e6  # the paper's 41 MFLOPs
    assert 290e6 < count_macs(get_model("mobilenet_v2"), 224) < 310e6  # the paper's 300 M
    # A larger input costs proportionally more: the figure is computed, not looked up.
    assert count_macs(model, 448) == pytest.approx(4 * macs_224, rel=0.03)


@pytest.mark.parametrize("name", ["shufflenet_v1_g3", "mobilenet_v1", "squeezenet1_1", "mobilenet_v2_x0_5"])
def test_models_classify_a_batch(name):
    size = get_spec(name).input_size
    with torch.no_grad():
        out = get_model(name)(torch.randn(2, 3, size, size))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match="did you mean shufflenet_v2_x0_5"):
        get_spec("shufflenet_v2_x05")


def _batchnorm_stats_with(threads: int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = get_model("shufflenet_v2_x0_5")
    # a batch of 8 at 224 pixels: the size where the per-channel sums split differently across 1 and 2 threads
    images = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        estimate_batchnorm_stats(model, images)
    finally:
        torch.set_num_threads(before)
    return [t.clone() for name, t in model.state_dict().items() if name.endswith(("running_mean", "running_var"))]


def test_batchnorm_statistics_do_not_depend_on_the_threads_a_batch_gives_an_export():
    one, default = _batchnorm_stats_with(1), _batchnorm_stats_with(2)
    assert len(one) == 2 * 56
    assert all(torch.equal(a, b) for a, b in zip(one, default))
