"""mve-arm-setup: install what ARM emulation needs into a cache folder (reused when present).

qemu-user (Debian package), an arm64 Python 3.11 sysroot (Debian arm64 packages unpacked, not installed),
aarch64 wheels of LiteRT and numpy, the project's instruction-counting qemu plugin, built from
profiling/qemu_plugin/insn_window.c against qemu-plugin.h taken from Debian's qemu source package, and Debian's
LLVM (unpacked, not installed) for llvm-mca's cycle estimates.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

from mobile_vision_export.errors import UserError
from mobile_vision_export.profiling.cores import CORES
from mobile_vision_export.profiling.cycles import LLVM_VERSION

PLUGIN_SOURCE = Path(__file__).resolve().parent / "qemu_plugin" / "insn_window.c"
ARM_PACKAGES = ["python3.11:arm64", "libstdc++6:arm64"]
# The newest aarch64 LiteRT when this was written; the Android demo builds against the same release
# (com.google.ai.edge.litert:litert in android_demo/app/build.gradle), so the profile measures what apps ship.
EMULATED_LITERT = "2.3.0"
_SKIP_PACKAGES = ("dpkg:", "install-info:", "tar:", "perl:", "perl-base:")


class ArmSetupError(UserError, RuntimeError):
    """A set-up step failed; the message names it."""


def default_cache() -> Path:
    return Path(os.environ.get("MVE_ARM_CACHE", Path.home() / ".cache" / "mobile-vision-export" / "arm"))


def _as_root(cmd: list[str]) -> list[str]:
    """apt-get and dpkg changes need root: use sudo when not root (root on these machines; CI runners vary)."""
    return cmd if os.geteuid() == 0 or shutil.which("sudo") is None else ["sudo", *cmd]


def _run(cmd: list[str], what: str, **kwargs) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    except FileNotFoundError:
        raise ArmSetupError(f"{what} needs '{cmd[0]}', which is not installed (Debian: apt-get install it)") from None
    if proc.returncode != 0:
        raise ArmSetupError(f"{what} failed ({' '.join(cmd[:4])} ...): {(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc.stdout


def _log(text: str) -> None:
    print(f"arm-setup: {text}", file=sys.stderr)


def ensure_qemu() -> Path:
    """The dynamic qemu-aarch64 (the static one cannot load plugins), installed with apt if missing."""
    if not shutil.which("qemu-aarch64"):
        _log("installing qemu-user with apt-get")
        _run(_as_root(["apt-get", "update"]), "apt-get update")
        _run(_as_root(["apt-get", "install", "-y", "qemu-user"]), "apt-get install qemu-user")
    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        raise ArmSetupError("qemu-aarch64 is still missing after installing qemu-user")
    return Path(qemu)


def ensure_sysroot(cache: Path) -> Path:
    """Debian's arm64 python3.11 and its shared-library closure, unpacked with dpkg -x."""
    sysroot = cache / "sysroot"
    if (sysroot / "usr" / "bin" / "python3.11").is_file():
        return sysroot
    if "arm64" not in _run(["dpkg", "--print-foreign-architectures"], "dpkg").split():
        _run(_as_root(["dpkg", "--add-architecture", "arm64"]), "dpkg --add-architecture arm64")
        _run(_as_root(["apt-get", "update"]), "apt-get update")
    tree = _run(
        [
            "apt-cache",
            "depends",
            "--recurse",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            "--no-pre-depends",
            *ARM_PACKAGES,
        ],
        "apt-cache depends",
    )
    packages = sorted(
        {
            line
            for line in tree.splitlines()
            if line.endswith(":arm64") and not line.startswith((" ", "<")) and not line.startswith(_SKIP_PACKAGES)
        }
    )
    _log(f"downloading {len(packages)} arm64 packages")
    _unpack_packages(packages, cache / "debs", sysroot)
    return sysroot


def _unpack_packages(packages: list[str], debs: Path, target: Path) -> None:
    """apt-get download the packages into `debs` and dpkg -x them into `target` (renamed into place when whole)."""
    shutil.rmtree(debs, ignore_errors=True)  # no stale packages from an earlier, interrupted run
    debs.mkdir(parents=True)
    _run(["apt-get", "download", *packages], "apt-get download", cwd=debs)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg", "-x", str(deb), str(staging)], f"dpkg -x {deb.name}")
    staging.rename(target)


def ensure_wheels(cache: Path) -> Path:
    """aarch64 LiteRT (EMULATED_LITERT, the release apps ship, whatever the host pins) and numpy, installed with
    pip --target."""
    target = cache / "site-aarch64"
    wanted = f"ai-edge-litert=={EMULATED_LITERT}"
    marker = target / ".installed"
    if marker.is_file() and marker.read_text() == wanted:
        return target
    _log(f"installing {wanted} and numpy for aarch64")
    shutil.rmtree(target, ignore_errors=True)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--target",
            str(target),
            "--python-version",
            "3.11",
            "--platform",
            "manylinux_2_27_aarch64",
            "--platform",
            "manylinux2014_aarch64",
            "--only-binary=:all:",
            wanted,
            f"numpy=={version('numpy')}",
        ],
        "pip install aarch64 wheels",
    )
    marker.write_text(wanted)
    return target


def emulated_litert(cache: Path) -> str:
    """The LiteRT release the emulated runs use, as installed (for the profile's versions)."""
    marker = cache / "site-aarch64" / ".installed"
    return marker.read_text().split("==")[-1] if marker.is_file() else "not installed"


def _plugin_header(cache: Path) -> Path:
    """qemu-plugin.h from Debian's qemu source package, fetched with a private deb-src apt configuration."""
    header = cache / "qemu-include" / "qemu-plugin.h"
    if header.is_file():
        return header
    apt_dir = cache / "apt-src"
    (apt_dir / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt_dir / "sources").mkdir(exist_ok=True)
    system = Path("/etc/apt/sources.list.d/debian.sources")
    if not system.is_file():
        raise ArmSetupError(f"{system} not found: the qemu plugin header comes from Debian's qemu source package")
    (apt_dir / "sources" / "debian-src.sources").write_text(
        system.read_text().replace("Types: deb\n", "Types: deb-src\n")
    )
    opts = [
        "-o",
        "Dir::Etc::SourceList=/dev/null",
        "-o",
        f"Dir::Etc::SourceParts={apt_dir / 'sources'}",
        "-o",
        f"Dir::State::Lists={apt_dir / 'lists'}",
    ]
    _run(["apt-get", *opts, "update"], "apt-get update (deb-src)")
    src = cache / "qemu-src"
    src.mkdir(exist_ok=True)
    _log("fetching Debian's qemu source package for qemu-plugin.h")
    _run(["apt-get", *opts, "source", "--download-only", "qemu"], "apt-get source qemu", cwd=src)
    tarball = next(src.glob("qemu_*.orig.tar.*"), None)
    if tarball is None:
        raise ArmSetupError(f"apt-get source qemu left no qemu_*.orig.tar.* in {src}")
    with tarfile.open(tarball) as tar:
        member = next((m for m in tar if m.name.endswith("include/qemu/qemu-plugin.h")), None)
        if member is None:
            raise ArmSetupError(f"{tarball.name} has no include/qemu/qemu-plugin.h")
        header.parent.mkdir(parents=True, exist_ok=True)
        header.write_bytes(tar.extractfile(member).read())
    return header


def ensure_plugin(cache: Path) -> Path:
    plugin = cache / "libinsn_window.so"
    if plugin.is_file() and plugin.stat().st_mtime >= PLUGIN_SOURCE.stat().st_mtime:
        return plugin
    header = _plugin_header(cache)
    _run(
        ["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-I", str(header.parent), "-o", str(plugin), str(PLUGIN_SOURCE)],
        "building the qemu plugin",
    )
    return plugin


def ensure_core_roots(cache: Path, sysroot: Path) -> dict[str, Path]:
    """One qemu -L prefix per core: the shared sysroot plus that core's /proc/cpuinfo."""
    roots = {}
    for name, core in CORES.items():
        root = cache / "cores" / name
        (root / "proc").mkdir(parents=True, exist_ok=True)
        for entry in sysroot.iterdir():
            link = root / entry.name
            if not link.exists():
                link.symlink_to(entry.resolve())
        (root / "proc" / "cpuinfo").write_text(core.cpuinfo())
        roots[name] = root
    return roots


def ensure_llvm(cache: Path) -> Path:
    """Debian's LLVM (llvm-mca, llvm-mc) unpacked with dpkg -x: its scheduling models give the cycle estimate."""
    root = cache / "llvm"
    if (root / "usr" / "lib" / f"llvm-{LLVM_VERSION}" / "bin" / "llvm-mca").is_file():
        return root
    _log(f"downloading LLVM {LLVM_VERSION} (llvm-mca)")
    _unpack_packages([f"llvm-{LLVM_VERSION}", f"libllvm{LLVM_VERSION}"], cache / "llvm-debs", root)
    shutil.rmtree(cache / "llvm-debs", ignore_errors=True)
    return root


def setup(cache: Path) -> None:
    qemu = ensure_qemu()
    sysroot = ensure_sysroot(cache)
    ensure_wheels(cache)
    ensure_plugin(cache)
    ensure_llvm(cache)
    ensure_core_roots(cache, sysroot)
    _log(f"ready in {cache} ({qemu})")
