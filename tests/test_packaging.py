"""The installed CLI works anywhere: build the wheel, install it into a fresh venv, run every console script there.

Only the wheel is installed (--no-deps): the pinned dependencies (3.5 GB) are made visible by a plain path line
in a .pth file pointing at this venv's site-packages. Path lines are not scanned for further .pth files, so the
project's own editable-install finder in .venv stays inactive and every project import must come from the wheel.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

NAMESPACE = "mobile_vision_export"
# Every top-level package folder of the tree ships as NAMESPACE/<folder>, except these:
NOT_SHIPPED = {"tests", NAMESPACE}
CORE_PACKAGES = {"models", "export", "validate", "profiling", "int8", "report", "pipeline"}
# What the installed distribution puts on sys.path: the namespace, and `pipeline` for `python -m pipeline.export`.
TOP_LEVEL = {NAMESPACE, "pipeline"}
PACKAGE_DATA = [f"{NAMESPACE}/profiling/qemu_plugin/insn_window.c"]
SCRIPTS = ["mobile-vision-export", "mve-profile", "mve-diagnose", "mve-bundle", "mve-arm-setup", "mve-evaluate"]
# Never packaged; left out of the copy the wheel is built from (setuptools writes build/ and *.egg-info into it).
NOT_SOURCE = (".venv", ".git", "__pycache__", "*.egg-info", "build", "dist", "artifacts", "android_demo")


def _run(cmd: list[str], cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess, what: str) -> str:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in output, f"{what} (exit {proc.returncode}):\n{output[-3000:]}"
    return proc.stdout


def _build_wheel(tmp_path: Path) -> Path:
    """pip wheel of a copy of the working tree, offline, with the setuptools of this venv."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    dist = tmp_path / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, src]
    _ok(_run([*cmd, "--disable-pip-version-check"], cwd=tmp_path), "pip wheel")
    (wheel,) = dist.glob("mobile_vision_export-*.whl")
    return wheel


def _packages(src: Path) -> list[str]:
    return sorted(d.name for d in src.iterdir() if (d / "__init__.py").is_file() and d.name not in NOT_SHIPPED)


def _source_files(src: Path, package: str) -> set[str]:
    """Every file under a package folder, as installed in the namespace, data files included: code may read them
    next to itself (Path(__file__))."""
    return {f"{NAMESPACE}/{p.relative_to(src).as_posix()}" for p in (src / package).rglob("*") if p.is_file()}


def user_project(folder: Path) -> Path:
    """The most common PyTorch project layout: its own `models` package, and a model file that imports from it."""
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "__init__.py").write_text('"""The project\'s own models package."""\n')
    (folder / "models" / "tiny.py").write_text((ROOT / "tests" / "data" / "tiny_model.py").read_text())
    (folder / "my_net.py").write_text("from models.tiny import build  # the user's models, not ours\n")
    return folder


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A venv holding only the wheel, with this venv's site-packages appended to its sys.path by a .pth line."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(symlinks=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel]
    _ok(_run([*install, "--disable-pip-version-check"], cwd=tmp_path), "pip install of the wheel")
    site = _ok(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path), "site")
    deps = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])  # this venv's
    (Path(site.strip()) / "_mve_pinned_deps.pth").write_text("".join(f"{p}\n" for p in deps))
    return env_dir


@pytest.mark.slow
def test_wheel_installs_and_every_cli_runs_from_anywhere(tmp_path):
    assert ROOT not in tmp_path.parents, "the fresh venv and the cwd must be outside the repo"
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == TOP_LEVEL, sorted(names)[:20]
    assert {n for n in names if n.startswith("pipeline/")} == {"pipeline/__init__.py"}  # the launcher alone
    packages = _packages(tmp_path / "src")
    assert CORE_PACKAGES <= set(packages), packages
    for package in packages:
        missing = sorted(_source_files(tmp_path / "src", package) - names)
        assert not missing, f"wheel lacks files of {package}: {missing}"
    for data in PACKAGE_DATA:
        assert data in names, f"wheel lacks package data {data}"

    env_dir = _fresh_venv(tmp_path, wheel)
    python, bin_dir = env_dir / "bin" / "python", env_dir / "bin"
    elsewhere = user_project(tmp_path / "elsewhere")

    # Every project package comes from the wheel; the editable finder of .venv is not active.
    probe = (
        "import sys, importlib\n"
        f"for name in {packages!r}:\n"
        f"    print(importlib.import_module('{NAMESPACE}.' + name).__file__)\n"
        f"from {NAMESPACE}.profiling.arm_setup import PLUGIN_SOURCE\n"
        "print(PLUGIN_SOURCE, PLUGIN_SOURCE.is_file())\n"
        "print('editable finder active:', any(m.startswith('__editable__') for m in sys.modules))\n"
    )
    lines = _ok(_run([python, "-c", probe], cwd=elsewhere), "import from the fresh venv").splitlines()
    for path in lines[: len(packages)]:
        assert Path(path).is_relative_to(env_dir), f"imported from outside the fresh venv: {path}"
    plugin, found = lines[len(packages)].rsplit(" ", 1)
    assert Path(plugin).is_relative_to(env_dir) and found == "True", lines[len(packages)]
    assert lines[-1] == "editable finder active: False"

    zoo = _ok(_run([bin_dir / "mobile-vision-export", "--list"], cwd=elsewhere), "mobile-vision-export --list")
    assert "shufflenet_v2_x0_5" in zoo and "mobilenet_v2" in zoo, zoo
    for script in SCRIPTS:
        out = _ok(_run([bin_dir / script, "--help"], cwd=elsewhere), f"{script} --help")
        assert out.startswith(f"usage: {script} "), out
        out = _ok(_run([bin_dir / script, "--version"], cwd=elsewhere), f"{script} --version")
        assert out.startswith("mobile-vision-export "), out
    zoo = _ok(_run([python, "-m", "pipeline.export", "--list"], cwd=elsewhere), "python -m pipeline.export --list")
    assert "shufflenet_v2_x0_5" in zoo, zoo
    out = _ok(_run([python, "-m", "pipeline.profile", "--help"], cwd=elsewhere), "python -m pipeline.profile --help")
    assert out.startswith("usage:"), out

    # The user's project has its own `models` package, which their model file imports.
    export = [bin_dir / "mobile-vision-export", "--model", "my_net.py:build", "--input-size", "32", "--quant", "fp32"]
    _ok(_run([*export, "--out", "out"], cwd=elsewhere, timeout=600), "export of a model importing the user's models")
    assert (elsewhere / "out" / "my_net_build" / "my_net_build_fp32.tflite").is_file()
