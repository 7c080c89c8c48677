"""Run a .tflite under qemu user-mode emulation of an ARM core and count instructions per inference."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobile_vision_export.errors import UserError
from mobile_vision_export.profiling.cores import Core
from mobile_vision_export.profiling.cycles import CycleCount, Llvm, count_cycles, read_blocks
from mobile_vision_export.profiling.symbols import FAMILIES, attribute, family_of

GUEST_SCRIPT = Path(__file__).resolve().parent / "guest.py"
SETUP_HINT = "run 'mve-arm-setup' to set it up"


class EmulationError(UserError, RuntimeError):
    """The emulated run could not happen or did not finish."""


@dataclass(frozen=True)
class ArmEnvironment:
    qemu: Path
    cache: Path
    plugin: Path
    site_packages: Path

    def root(self, core: Core) -> Path:
        return self.cache / "cores" / core.name


def find_environment(cache: Path) -> ArmEnvironment:
    """The set-up made by profiling.arm_setup, or an error naming what is missing and how to fix it."""
    qemu = shutil.which("qemu-aarch64")
    missing = [
        what
        for what, ok in (
            ("qemu-aarch64", qemu is not None),
            ("the arm64 sysroot", (cache / "sysroot" / "usr" / "bin" / "python3.11").is_file()),
            ("the aarch64 LiteRT wheels", (cache / "site-aarch64" / "ai_edge_litert").is_dir()),
            ("the qemu plugin", (cache / "libinsn_window.so").is_file()),
            ("the per-core roots", (cache / "cores" / "a76" / "proc" / "cpuinfo").is_file()),
        )
        if not ok
    ]
    if missing:
        raise EmulationError(f"ARM emulation is not set up ({', '.join(missing)} missing in {cache}): {SETUP_HINT}")
    return ArmEnvironment(Path(qemu), cache, cache / "libinsn_window.so", cache / "site-aarch64")


@dataclass
class EmulatedRun:
    core: str
    qemu_cpu: str
    instructions: list[int]  # per inference, one entry per counted run
    families: dict[str, int]  # of the first counted run
    top_symbols: list[tuple[str, int]]
    output: np.ndarray = field(repr=False)
    cycles: CycleCount | None = None  # llvm-mca's core cycles of the first counted run

    @property
    def spread(self) -> float:
        """(max - min) / mean over the counted runs: 0 means identical counts."""
        values = np.array(self.instructions, dtype=np.float64)
        return float((values.max() - values.min()) / values.mean())


def _windows(counts_text: str) -> list[dict[tuple[int, int], int]]:
    """Per counted run: executions of each block, keyed by (start address, instructions in block)."""
    windows, current = [], None
    for line in counts_text.splitlines():
        if line.startswith("window"):
            current = {}
        elif line == "end":
            windows.append(current)
        elif current is not None:
            address, insns, execs = line.split()
            key = (int(address, 16), int(insns))
            current[key] = current.get(key, 0) + int(execs)
    return windows


def run_emulated(
    model: Path,
    input_array: np.ndarray,
    core: Core,
    env: ArmEnvironment,
    llvm: Llvm | None = None,
    warmups: int = 1,
    runs: int = 3,
    timeout_s: int = 1800,
) -> EmulatedRun:
    """Invoke `model` (1 thread) on `input_array` under qemu for `core`, counting the instructions between the
    guest's two marker syscalls around invoke(): the inference plus a few hundred instructions of call overhead."""
    with tempfile.TemporaryDirectory(prefix="mve-arm-") as tmp:
        tmp_path = Path(tmp)
        np.save(tmp_path / "input.npy", input_array)
        counts = tmp_path / "counts.txt"
        cmd = [
            str(env.qemu),
            "-L",
            str(env.root(core)),
            "-cpu",
            core.qemu_cpu,
            "-plugin",
            f"{env.plugin},out={counts}",
            str(env.root(core) / "usr" / "bin" / "python3.11"),
            str(GUEST_SCRIPT),
            str(Path(model).resolve()),
            str(tmp_path / "input.npy"),
            str(tmp_path),
            str(warmups),
            str(runs),
        ]
        guest_env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(env.site_packages),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONNOUSERSITE": "1",
            "LC_ALL": "C",
        }
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=guest_env, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise EmulationError(f"emulated run on {core.name} did not finish within {timeout_s} s") from None
        if proc.returncode != 0 or not (tmp_path / "output.npy").is_file():
            raise EmulationError(
                f"emulated run on {core.name} failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}"
            )
        seen = (tmp_path / "cpuinfo.txt").read_text()
        if f"CPU part\t: {core.part}" not in seen:
            raise EmulationError(
                f"the guest did not see the {core.name} cpuinfo (CPU part {core.part}): rerun 'mve-arm-setup'"
            )
        windows = _windows(counts.read_text())
        if len(windows) != runs:
            raise EmulationError(f"expected {runs} counted runs on {core.name}, the plugin recorded {len(windows)}")
        maps_text = (tmp_path / "maps.txt").read_text()
        by_address: dict[int, int] = {}
        for (address, insns), execs in windows[0].items():
            by_address[address] = by_address.get(address, 0) + insns * execs
        symbols = attribute(by_address, maps_text, env.root(core))
        cycles = (
            count_cycles(read_blocks(windows[0], maps_text, env.root(core)), core.mca_cpu, llvm, core.in_order)
            if llvm
            else None
        )
        output = np.load(tmp_path / "output.npy")
    families = dict.fromkeys(FAMILIES, 0)
    for name, count in symbols.items():
        families[family_of(name.split("!", 1)[-1])] += count
    top = sorted(symbols.items(), key=lambda kv: -kv[1])[:12]
    instructions = [sum(insns * execs for (_, insns), execs in w.items()) for w in windows]
    return EmulatedRun(core.name, core.qemu_cpu, instructions, families, top, output, cycles)
