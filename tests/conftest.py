import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ROOT / "tests" / "data" / "tiny_model.py"


def run_cli(module: str, *args: str, tmp_path: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run `python -m module args` with the network guard on; return the finished process.

    Only the network guard goes on PYTHONPATH, not the repo root: the project is imported the way it is installed
    (editable in .venv), so a package missing from pyproject's packaging fails here too.
    """
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT / "tests" / "netguard"),
        NETGUARD_LOG=str(tmp_path / "network_attempts.log"),
    )
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


def network_attempts(tmp_path: Path) -> str:
    log = tmp_path / "network_attempts.log"
    return log.read_text() if log.exists() else ""


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def tiny_model() -> Path:
    return TINY_MODEL


@pytest.fixture(scope="session")
def shufflenet_variants(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shufflenet")
    # int8 input and output: the int8 steps' own form, which the tests of their internals take apart
    args = ["--model", "shufflenet_v2_x0_5", "--quant", "all", "--int8-io", "int8", "--profile", "--out", "out"]
    proc = run_cli("pipeline.export", *args, tmp_path=tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp / "out" / "shufflenet_v2_x0_5"


def open_in_browser(page: Path, screenshot: Path) -> list[str]:
    """Load `page` in headless Chromium and save a screenshot; return the console messages it logged."""
    proc = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,3000",
            f"--screenshot={screenshot}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert screenshot.is_file(), proc.stderr[-2000:]
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture(scope="session")
def mobilenet_imagenet(tmp_path_factory):
    """mobilenet_v2 with its ImageNet weights, every variant, with the labelled held-out photos as --val-dir (an
    ImageFolder with one folder per class index). Returns (the folder it ran in, the model's artifacts)."""
    from mobile_vision_export.export.images import heldout_photos

    tmp = tmp_path_factory.mktemp("mobilenet_imagenet")
    for photo in [p for p in heldout_photos() if p.label is not None]:
        (tmp / "val" / str(photo.label)).mkdir(parents=True, exist_ok=True)
        shutil.copy(photo.path, tmp / "val" / str(photo.label) / photo.path.name)
    args = ["--model", "mobilenet_v2", "--weights", "imagenet", "--quant", "all", "--val-dir", "val"]
    proc = run_cli("pipeline.export", *args, "--max-accuracy-drop", "20", "--out", "out", tmp_path=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert network_attempts(tmp) == ""
    return tmp, tmp / "out" / "mobilenet_v2"
