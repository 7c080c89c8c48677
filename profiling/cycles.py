"""Core cycles of an emulated inference: llvm-mca's steady-state cycles of each executed block, times its executions.

qemu counts how often each translated block (straight-line code ending at a branch) ran inside the invoke()
window; the block's bytes come from the aarch64 library it was loaded from. llvm-mca, given the core's
scheduling model, simulates each block repeated back to back: that is how hot kernel loops run, with every load
hitting L1 and every branch predicted. The memory side is added by profiling.estimate.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mobile_vision_export.errors import UserError
from mobile_vision_export.profiling.symbols import FAMILIES, GuestCode, family_of_symbol

LLVM_VERSION = "19"
COVERAGE = 0.999  # blocks simulated: the hottest ones holding this share of the window's instructions ...
MAX_BLOCKS = 6000  # ... at most this many; the rest take the simulated blocks' cycles per instruction
ITERATIONS = 50  # back-to-back repetitions per block in llvm-mca; the steady state is read between 50 and 100
MATTR = "+v8.2a,+dotprod,+fullfp16,+fp16fml,+i8mm,+rcpc"  # decode and schedule everything LiteRT may pick
_INVALID = re.compile(r"<stdin>:(\d+):\d+: warning: invalid instruction encoding")


class CycleModelError(UserError, RuntimeError):
    """llvm-mca or llvm-mc is missing or failed."""


@dataclass(frozen=True)
class Llvm:
    bin_dir: Path
    lib_dirs: tuple[Path, ...]

    def run(self, tool: str, args: list[str], text: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(str(d) for d in self.lib_dirs)}
        try:
            return subprocess.run(
                [str(self.bin_dir / tool), *args], input=text, capture_output=True, text=True, env=env, timeout=600
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CycleModelError(f"{tool} could not run ({exc}): rerun 'mve-arm-setup'") from None


def find_llvm(cache: Path) -> Llvm:
    """LLVM unpacked by mve-arm-setup (LLVM 19 has a Neoverse N1 model, the server twin of the Cortex-A76)."""
    root = cache / "llvm"
    bin_dir = root / "usr" / "lib" / f"llvm-{LLVM_VERSION}" / "bin"
    if not (bin_dir / "llvm-mca").is_file():
        raise CycleModelError(f"llvm-mca {LLVM_VERSION} is not set up in {root}: run 'mve-arm-setup'")
    return Llvm(
        bin_dir, (root / "usr" / "lib" / "x86_64-linux-gnu", root / "usr" / "lib" / f"llvm-{LLVM_VERSION}" / "lib")
    )


@dataclass(frozen=True)
class Block:
    address: int
    insns: int
    execs: int
    symbol: str
    words: tuple[int, ...] | None  # the block's instruction words, None when its code could not be read

    @property
    def instructions(self) -> int:
        return self.insns * self.execs


@dataclass
class CycleCount:
    mca_cpu: str  # llvm-mca scheduling model
    cycles: float
    instructions: int
    families: dict[str, float]  # cycles per kernel family
    simulated_share: float  # share of the window's instructions whose blocks llvm-mca simulated
    blocks: int

    @property
    def ipc(self) -> float:
        return self.instructions / self.cycles if self.cycles else 0.0

    def as_dict(self) -> dict:
        return {
            "llvm_mca_model": self.mca_cpu,
            "cycles": self.cycles,
            "instructions_per_cycle": self.ipc,
            "families": self.families,
            "simulated_share": self.simulated_share,
            "blocks_simulated": self.blocks,
        }


def read_blocks(window: dict[tuple[int, int], int], code: GuestCode) -> list[Block]:
    """The window's blocks with their symbol and code words, hottest first."""
    ordered = sorted(window.items(), key=lambda kv: -kv[0][1] * kv[1])
    total = sum(insns * execs for (_, insns), execs in ordered)
    blocks, covered = [], 0
    for (address, insns), execs in ordered:
        words = None
        if covered < COVERAGE * total and len(blocks) < MAX_BLOCKS:
            words = _code_words(code, address, insns)
            covered += insns * execs
        blocks.append(Block(address, insns, execs, code.name_of(address), words))
    return blocks


def _code_words(code: GuestCode, address: int, insns: int) -> tuple[int, ...] | None:
    """The block's instruction words from the library file it was loaded from, None if they cannot be read."""
    found = code.locate(address)
    if found is None or address + 4 * insns > found[0].end:
        return None
    _, host_path, offset = found
    try:
        with open(host_path, "rb") as f:
            f.seek(offset)
            data = f.read(4 * insns)
    except OSError:
        return None
    if len(data) != 4 * insns:
        return None
    return tuple(int.from_bytes(data[j : j + 4], "little") for j in range(0, len(data), 4))


def disassemble(words: set[int], llvm: Llvm) -> dict[int, str]:
    """Assembly text of each instruction word; words llvm-mc cannot decode are left out."""
    ordered = sorted(words)
    text = "".join(" ".join(f"0x{(w >> s) & 0xFF:02x}" for s in (0, 8, 16, 24)) + "\n" for w in ordered)
    proc = llvm.run("llvm-mc", ["--disassemble", "-triple=aarch64", f"-mattr={MATTR}"], text)
    invalid = {int(n) - 1 for n in _INVALID.findall(proc.stderr)}
    lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip() and not ln.strip().startswith(".")]
    valid = [w for i, w in enumerate(ordered) if i not in invalid]
    if len(lines) != len(valid):
        raise CycleModelError(f"llvm-mc decoded {len(lines)} of {len(valid)} instruction words: {proc.stderr[-300:]}")
    return dict(zip(valid, lines))


def simulate(blocks: list[list[str]], mca_cpu: str, llvm: Llvm, in_order: bool) -> list[float]:
    """Cycles per execution of each block, one llvm-mca region per block: the simulated steady state, or for an
    in-order core the busiest execution resource's cycles. XNNPACK's kernels for in-order cores are scheduled by
    hand to dual-issue without stalls, which LLVM's in-order models do not reproduce (its Cortex-A53 model runs
    the 6x8 float GEMM loop at 280 cycles where the FMA unit alone needs 48)."""
    regions = "".join(
        f"# LLVM-MCA-BEGIN b{i}\n" + "\n".join(asm) + "\n# LLVM-MCA-END\n" for i, asm in enumerate(blocks)
    )
    if in_order:
        return [v["BlockRThroughput"] for v in _mca(regions, len(blocks), mca_cpu, ITERATIONS, llvm)]
    # steady state: the cycles the second ITERATIONS repetitions add, without the pipeline's fill and drain
    once = _mca(regions, len(blocks), mca_cpu, ITERATIONS, llvm)
    twice = _mca(regions, len(blocks), mca_cpu, 2 * ITERATIONS, llvm)
    return [(b["TotalCycles"] - a["TotalCycles"]) / ITERATIONS for a, b in zip(once, twice)]


def _mca(regions: str, count: int, mca_cpu: str, iterations: int, llvm: Llvm) -> list[dict]:
    """llvm-mca's summary view of each region (NaN figures for a region it left out)."""
    proc = llvm.run(
        "llvm-mca",
        [
            "-mtriple=aarch64",
            f"-mcpu={mca_cpu}",
            f"-mattr={MATTR}",
            f"-iterations={iterations}",
            "--json",
            "--skip-unsupported-instructions=any",
            "--instruction-info=0",
            "--resource-pressure=0",
        ],
        regions,
    )
    if proc.returncode != 0:
        raise CycleModelError(f"llvm-mca -mcpu={mca_cpu} failed: {proc.stderr.strip()[-300:]}")
    found = {r["Name"]: r["SummaryView"] for r in json.loads(proc.stdout)["CodeRegions"]}
    nan = {"TotalCycles": float("nan"), "BlockRThroughput": float("nan")}
    return [found.get(f"b{i}", nan) for i in range(count)]


def count_cycles(blocks: list[Block], mca_cpu: str, llvm: Llvm, in_order: bool = False) -> CycleCount:
    """Sum of executions x simulated cycles over the simulated blocks; the others at their cycles per instruction."""
    readable = [b for b in blocks if b.words is not None]
    asm_of = disassemble({w for b in readable for w in b.words}, llvm)
    asm = [[asm_of[w] for w in b.words if w in asm_of] for b in readable]
    per_exec = simulate(asm, mca_cpu, llvm, in_order)
    simulated = [(b, c) for b, c in zip(readable, per_exec) if c == c and c > 0]  # c == c: not NaN
    simulated_cycles = sum(c * b.execs for b, c in simulated)
    simulated_insns = sum(b.instructions for b, _ in simulated)
    cpi = simulated_cycles / simulated_insns if simulated_insns else 1.0
    cycles_of = {id(b): c * b.execs for b, c in simulated}
    families = dict.fromkeys(FAMILIES, 0.0)
    for block in blocks:
        families[family_of_symbol(block.symbol)] += cycles_of.get(id(block), block.instructions * cpi)
    total_insns = sum(b.instructions for b in blocks)
    return CycleCount(
        mca_cpu,
        sum(families.values()),
        total_insns,
        families,
        simulated_insns / total_insns if total_insns else 0.0,
        len(readable),
    )
