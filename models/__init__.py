"""Model zoo: lightweight CNN families with torchvision-compatible weights layouts."""

from mobile_vision_export.models.registry import (
    ModelSpec,
    UnknownModelError,
    get_model,
    get_spec,
    list_models,
)

__all__ = ["ModelSpec", "UnknownModelError", "get_model", "get_spec", "list_models"]
