"""The model zoo: a small registry of named builders with their input contracts."""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from mobile_vision_export.errors import UserError
from mobile_vision_export.models.complexity import count_macs, count_parameters
from mobile_vision_export.models.mobilenet_v1 import mobilenet_v1
from mobile_vision_export.models.mobilenet_v2 import mobilenet_v2
from mobile_vision_export.models.shufflenet_v1 import shufflenet_v1
from mobile_vision_export.models.shufflenet_v2 import shufflenet_v2
from mobile_vision_export.models.squeezenet import squeezenet
from mobile_vision_export.models.weights import IMAGENET_MEAN, IMAGENET_STD, load_weights
from mobile_vision_export.models.xception import xception

INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: how to build it and the input it expects (RGB, NCHW, 0..1 then mean/std)."""

    name: str
    family: str
    builder: Callable[[], nn.Module]
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_shuffles: int = 0
    weights_source: str = field(default="no public checkpoint is bundled with any installable package")

    def complexity(self) -> tuple[int, int]:
        """(parameters, MACs per image), measured on a freshly built model."""
        model = self.builder()
        return count_parameters(model), count_macs(model, self.input_size)


_REGISTRY: dict[str, ModelSpec] = {}


def _register(spec: ModelSpec) -> None:
    _REGISTRY[spec.name] = spec


_TORCHVISION_HUB = "torchvision's official checkpoint ({file}); place it on disk and pass --weights PATH"

for _g in (1, 2, 3, 4, 8):
    _register(
        ModelSpec(
            f"shufflenet_v1_g{_g}",
            "shufflenet_v1",
            functools.partial(shufflenet_v1, _g),
            channel_shuffles=0 if _g == 1 else 15,
            weights_source="the ShuffleNet V1 authors' release (a different key layout); train or convert your own",
        )
    )
for _w, _file in (
    ("x0_5", "shufflenetv2_x0.5-f707e7126e.pth"),
    ("x1_0", "shufflenetv2_x1-5666bf0f80.pth"),
    ("x1_5", "shufflenetv2_x1_5-3c479a10.pth"),
    ("x2_0", "shufflenetv2_x2_0-8be3c8ee.pth"),
):
    _register(
        ModelSpec(
            f"shufflenet_v2_{_w}",
            "shufflenet_v2",
            functools.partial(shufflenet_v2, _w),
            channel_shuffles=16,
            weights_source=_TORCHVISION_HUB.format(file=_file),
        )
    )
_register(
    ModelSpec(
        "mobilenet_v1",
        "mobilenet_v1",
        mobilenet_v1,
        weights_source="no torchvision checkpoint exists; train or convert your own",
    )
)
_register(
    ModelSpec(
        "mobilenet_v2",
        "mobilenet_v2",
        mobilenet_v2,
        weights_source="'--weights imagenet' (torchvision mobilenet_v2-b0353104.pth, installed offline)",
    )
)
for _w in (0.5, 0.75, 1.4):
    _register(
        ModelSpec(
            f"mobilenet_v2_x{str(_w).replace('.', '_')}",
            "mobilenet_v2",
            functools.partial(mobilenet_v2, _w),
            weights_source="no torchvision checkpoint at this width; train or convert your own",
        )
    )
for _v, _file in (("1_0", "squeezenet1_0-b66bff10.pth"), ("1_1", "squeezenet1_1-b8a52dc0.pth")):
    _register(
        ModelSpec(
            f"squeezenet{_v}",
            "squeezenet",
            functools.partial(squeezenet, _v),
            weights_source=_TORCHVISION_HUB.format(file=_file),
        )
    )
_register(
    ModelSpec(
        "xception",
        "xception",
        xception,
        input_size=299,
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
        weights_source="the Cadene pretrainedmodels port (xception-43020ad28.pth); place it on disk and pass --weights PATH",  # noqa: E501
    )
)


class UnknownModelError(UserError, ValueError):
    """Raised for a model name that is not registered."""


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The registry entry for `name`; an unknown name suggests the closest ones."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run with --list to see every model"
        raise UnknownModelError(f"unknown model '{name}': {hint}")
    return _REGISTRY[name]


def get_model(name: str, weights: str | None = None) -> nn.Module:
    """Build model `name` in eval mode; `weights` is a checkpoint path or 'imagenet'."""
    spec = get_spec(name)
    model = spec.builder()
    if weights is not None:
        load_weights(model, name, weights, spec.weights_source)
    return model.eval()
