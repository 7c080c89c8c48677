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
from mobile_vision_export.profiling.symbols import FAMILIES, GuestCode, attribute, family_of_symbol
from mobile_vision_export.profiling.traffic import CacheTraffic, family_traffic

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
    traffic: CacheTraffic | None = None  # simulated cache misses of the last counted run

    @property
    def spread(self) -> float:
        """(max - min) / mean over the counted runs: 0 means identical counts."""
        values = np.array(self.instructions, dtype=np.float64)
        return float((values.max() - values.min()) / values.mean())


@dataclass
class Window:
    """One counted run: executions of each block, keyed by (start address, instructions in block), and with cache
    simulation the lines each block missed in each simulated cache."""

    execs: dict[tuple[int, int], int] = field(default_factory=dict)
    misses: dict[tuple[int, int], list[int]] = field(default_factory=dict)


def read_windows(counts_text: str) -> tuple[list[int], list[Window]]:
    """The simulated cache sizes (none without cache simulation) and the counted runs."""
    sizes, windows, current = [], [], None
    for line in counts_text.splitlines():
        if line.startswith("caches"):
            sizes = [int(v) for v in line.split()[1:]]
        elif line.startswith("window"):
            current = Window()
        elif line == "end":
            windows.append(current)
        elif current is not None:
            address, insns, execs, *misses = line.split()
            key = (int(address, 16), int(insns))
            current.execs[key] = current.execs.get(key, 0) + int(execs)
            if misses:
                previous = current.misses.get(key, [0] * len(misses))
                current.misses[key] = [a + int(b) for a, b in zip(previous, misses)]
    return sizes, windows


def run_guest(
    env: ArmEnvironment, core: Core, script: Path, args: list[str], counts: Path, caches: bool, timeout_s: int
) -> subprocess.CompletedProcess:
    """Run a Python script in the emulated aarch64 Python for `core`, the plugin writing its counts to `counts`."""
    cmd = [
        str(env.qemu),
        "-L",
        str(env.root(core)),
        "-cpu",
        core.qemu_cpu,
        "-plugin",
        f"{env.plugin},out={counts}" + (",caches=1" if caches else ""),
        str(env.root(core) / "usr" / "bin" / "python3.11"),
        str(script),
        *args,
    ]
    guest_env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(env.site_packages),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "LC_ALL": "C",
    }
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=guest_env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise EmulationError(f"emulated run on {core.name} did not finish within {timeout_s} s") from None


def run_emulated(
    model: Path,
    input_array: np.ndarray,
    core: Core,
    env: ArmEnvironment,
    llvm: Llvm | None = None,
    caches: bool = False,
    warmups: int = 1,
    runs: int = 3,
    timeout_s: int = 1800,
) -> EmulatedRun:
    """Invoke `model` (1 thread) on `input_array` under qemu for `core`, counting the instructions between the
    guest's two marker syscalls around invoke(): the inference plus a few hundred instructions of call overhead.
    With `llvm`, also the core cycles of the first counted run; with `caches`, the cache traffic of the last (the
    caches warm from the runs before it)."""
    with tempfile.TemporaryDirectory(prefix="mve-arm-") as tmp:
        tmp_path = Path(tmp)
        np.save(tmp_path / "input.npy", input_array)
        counts = tmp_path / "counts.txt"
        args = [str(Path(model).resolve()), str(tmp_path / "input.npy"), str(tmp_path), str(warmups), str(runs)]
        proc = run_guest(env, core, GUEST_SCRIPT, args, counts, caches, timeout_s)
        if proc.returncode != 0 or not (tmp_path / "output.npy").is_file():
            raise EmulationError(
                f"emulated run on {core.name} failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}"
            )
        seen = (tmp_path / "cpuinfo.txt").read_text()
        if f"CPU part\t: {core.part}" not in seen:
            raise EmulationError(
                f"the guest did not see the {core.name} cpuinfo (CPU part {core.part}): rerun 'mve-arm-setup'"
            )
        sizes, windows = read_windows(counts.read_text())
        if len(windows) != runs:
            raise EmulationError(f"expected {runs} counted runs on {core.name}, the plugin recorded {len(windows)}")
        code = GuestCode((tmp_path / "maps.txt").read_text(), env.root(core))
        by_address: dict[int, int] = {}
        for (address, insns), execs in windows[0].execs.items():
            by_address[address] = by_address.get(address, 0) + insns * execs
        symbols = attribute(by_address, code)
        cycles = count_cycles(read_blocks(windows[0].execs, code), core.mca_cpu, llvm, core.in_order) if llvm else None
        traffic = family_traffic(sizes, windows[-1].misses, code.name_of) if caches else None
        output = np.load(tmp_path / "output.npy")
    families = dict.fromkeys(FAMILIES, 0)
    for name, count in symbols.items():
        families[family_of_symbol(name)] += count
    top = sorted(symbols.items(), key=lambda kv: -kv[1])[:12]
    instructions = [sum(insns * execs for (_, insns), execs in w.execs.items()) for w in windows]
    return EmulatedRun(core.name, core.qemu_cpu, instructions, families, top, output, cycles, traffic)
