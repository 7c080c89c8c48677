"""Where the model comes from: the zoo, a user's Python factory, or an existing ONNX file."""

from __future__ import annotations

import importlib.util
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobile_vision_export.errors import UserError
from mobile_vision_export.export.images import hw, size_text
from mobile_vision_export.export.normalization import IDENTITY, FoldedNormalization
from mobile_vision_export.export.onnx_graph import describe_onnx, fix_input_size, load_onnx
from mobile_vision_export.models import get_model, get_spec
from mobile_vision_export.models.complexity import count_macs, count_parameters
from mobile_vision_export.models.random_init import estimate_batchnorm_stats
from mobile_vision_export.models.weights import BUNDLED_IMAGENET, IMAGENET_MEAN, IMAGENET_STD, load_weights, sha256_file
from mobile_vision_export.pipeline.arguments import input_size_problem

log = logging.getLogger(__name__)
RANDOM_INIT = "random initialization (seed 0)"
RANDOM_CAVEAT = "parity is meaningful, accuracy is not"


class SourceError(UserError, ValueError):
    """A model source that cannot be loaded."""


@dataclass
class ModelSource:
    name: str
    description: str
    input_size: tuple[int, int]  # height, width
    mean: tuple
    std: tuple
    module: nn.Module | None = None
    onnx_path: Path | None = None
    weights: str = "as built"
    weights_sha256: str | None = None
    random_weights: bool = False  # no checkpoint and randomly initialised (zoo or factory): accuracy means nothing
    channel_shuffles: int | None = None
    folded: tuple[tuple, tuple] | None = None  # the (mean, std) the graph now applies itself; mean/std are then 0/1

    def complexity(self) -> tuple[int | None, int | None]:
        """(parameters, MACs) of the PyTorch model, or (None, None) for an ONNX source."""
        if self.module is None:
            return None, None
        model = self.module.model if isinstance(self.module, FoldedNormalization) else self.module  # the network's own
        return count_parameters(model), count_macs(model, self.input_size)


def _preprocessing(name: str, weights: str | None, input_size, mean, std) -> tuple[tuple[int, int], tuple, tuple]:
    """A zoo model's input size and normalization: those its bundled weights were trained with, else the zoo's
    defaults for the architecture; a flag that differs overrides them, with a warning naming what it replaces."""
    spec = get_spec(name)
    bundled = BUNDLED_IMAGENET.get(name) if weights == "imagenet" else None
    known = bundled or spec
    where = f"the ImageNet weights of {name} were trained with" if bundled else f"the zoo's default for {name} is"
    chosen = []
    for flag, given, default in (
        ("--input-size", None if input_size is None else hw(input_size), hw(known.input_size)),
        ("--mean", mean, known.mean),
        ("--std", std, known.std),
    ):
        if given is not None and tuple(np.atleast_1d(given)) != tuple(np.atleast_1d(default)):
            shown = size_text(default) if flag == "--input-size" else ",".join(f"{v:g}" for v in default)
            log.warning("%s overrides %s: %s %s", flag, name, f"{where} {shown}", "(use it if yours was trained so)")
        chosen.append(default if given is None else given)
    size, mean, std = chosen
    if problem := input_size_problem(size, f"--input-size {size_text(size)}"):
        raise SourceError(problem)
    return size, tuple(mean), tuple(std)


def from_registry(name: str, weights: str | None, input_size=None, mean=None, std=None) -> ModelSource:
    spec = get_spec(name)
    size, mean, std = _preprocessing(name, weights, input_size, mean, std)
    torch.manual_seed(0)
    model = get_model(name)
    source = ModelSource(
        name,
        f"model zoo: {spec.family}",
        size,
        mean,
        std,
        module=model,
        channel_shuffles=spec.channel_shuffles,
    )
    if weights is None:
        source.weights, source.random_weights = RANDOM_INIT, True
    else:
        path = load_weights(model, name, weights, spec.weights_source)
        source.weights = f"imagenet ({path})" if weights == "imagenet" else str(path)
        source.weights_sha256 = sha256_file(path)
    return source


def _import_file(path: Path):
    """Import a user's Python file as a module, with its folder importable for sibling modules."""
    module_name = f"user_model_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise SourceError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
    finally:
        sys.path.remove(str(path.parent.resolve()))
    return module


def _call_factory(factory, target: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    try:
        model = factory()
    except Exception as exc:
        raise SourceError(f"{target}() raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise SourceError(f"{target} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _state_differs(a: nn.Module, b: nn.Module) -> bool:
    """Whether two builds of a model differ in any floating-point parameter or buffer (or in their keys)."""
    state_a, state_b = a.state_dict(), b.state_dict()
    if state_a.keys() != state_b.keys():
        return True
    return any(
        t.is_floating_point() and (t.shape != state_b[k].shape or not torch.equal(t, state_b[k]))
        for k, t in state_a.items()
    )


def from_factory(target: str, input_size, weights: str | None, mean, std) -> ModelSource:
    """Load `path/to/file.py:factory`, call it, and check it returns an nn.Module."""
    file_part, _, factory_name = target.rpartition(":")
    path = Path(file_part)
    if not path.is_file():
        raise SourceError(f"model file not found: {path} (expected path/to/file.py:factory)")
    if input_size is None:
        raise SourceError(f"--input-size is required with a model from a file ({target})")
    if problem := input_size_problem(input_size, f"--input-size {size_text(input_size)}"):
        raise SourceError(problem)
    if weights == "imagenet":
        raise SourceError("--weights imagenet only applies to zoo models; pass a checkpoint path")
    factory = getattr(_import_file(path), factory_name, None)
    if not callable(factory):
        raise SourceError(f"{path} has no callable '{factory_name}': name a function that returns an nn.Module")
    # Without a checkpoint, build it twice under different seeds: weights that change with the seed come from the
    # random number generator, and a random network's parity is trivial unless it is treated like the zoo's.
    probe = _call_factory(factory, target, seed=1) if weights is None else None
    model = _call_factory(factory, target, seed=0)
    random_weights = probe is not None and _state_differs(model, probe)
    del probe
    name = f"{path.stem}_{factory_name}"
    source = ModelSource(
        name,
        f"user factory {target}",
        hw(input_size),
        tuple(mean or IMAGENET_MEAN),
        tuple(std or IMAGENET_STD),
        module=model.eval(),
        weights=f"{RANDOM_INIT} from {factory_name}()" if random_weights else f"as returned by {factory_name}()",
        random_weights=random_weights,
    )
    if weights is not None:
        loaded = load_weights(model, name, weights)
        source.weights, source.weights_sha256 = str(loaded), sha256_file(loaded)
    return source


def from_module(model: nn.Module, name: str | None, input_size, mean, std) -> ModelSource:
    """A torch.nn.Module passed in by a caller of the Python API, taken as trained (it cannot be rebuilt)."""
    if input_size is None:
        raise SourceError("input_size is required with a torch.nn.Module")
    if problem := input_size_problem(input_size, f"input_size {size_text(input_size)}", "choose a smaller input_size"):
        raise SourceError(problem)
    return ModelSource(
        name or type(model).__name__.lower(),
        f"Python object {type(model).__name__}",
        hw(input_size),
        tuple(mean or IMAGENET_MEAN),
        tuple(std or IMAGENET_STD),
        module=model.eval(),
        weights="as passed in",
    )


def from_onnx(path: Path, mean, std, input_size=None) -> ModelSource:
    """An ONNX file; `input_size` fixes its dynamic dimensions (batch 1)."""
    if not path.is_file():
        raise SourceError(f"ONNX file not found: {path}")
    if input_size is None:
        size = describe_onnx(path).input_size
    else:
        fix_input_size(load_onnx(path), input_size)  # a contradicted static size fails here, before any work
        size = hw(input_size)
    if problem := input_size_problem(size, f"the {size_text(size)} input of {path}", "export it at a smaller size"):
        raise SourceError(problem)
    return ModelSource(
        path.stem,
        f"ONNX file {path}",
        size,
        tuple(mean or IMAGENET_MEAN),
        tuple(std or IMAGENET_STD),
        onnx_path=path,
        weights="as stored in the ONNX file",
        weights_sha256=sha256_file(path),
    )


def with_normalization_folded(source: ModelSource) -> ModelSource:
    """`source` with its mean/std as the graph's first op, so every file takes pixel / 255 (and int8 the pixels):
    the module is wrapped here, an ONNX graph gets the same op when it is exported (stages.to_onnx)."""
    module = None if source.module is None else FoldedNormalization(source.module, source.mean, source.std).eval()
    mean, std = IDENTITY
    return replace(source, module=module, mean=mean, std=std, folded=(source.mean, source.std))


def calibrate_random_weights(source: ModelSource, images_nchw: torch.Tensor) -> None:
    """Give a randomly initialised model (zoo or factory) image-dependent outputs (see models.random_init)."""
    count = estimate_batchnorm_stats(source.module, images_nchw)
    detail = f", BatchNorm statistics of {count} layers estimated on the calibration photos" if count else ""
    source.weights = f"{source.weights}{detail}: {RANDOM_CAVEAT}"
