"""Which tool made an artifact, for every report and for the metadata inside each .tflite."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

TOOL_NAME = "mobile-vision-export"


def tool_version() -> str:
    try:
        return version(TOOL_NAME)
    except PackageNotFoundError:
        return "source checkout"
