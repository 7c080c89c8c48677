"""Map guest code addresses to ELF function symbols, and symbols to kernel families."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

FAMILIES = ("convolution/GEMM", "depthwise", "transpose/reshape/copy", "pooling", "other")
# First match wins; names are XNNPACK micro-kernels (xnn_...) or mangled TFLite/C++ and libc symbols.
_FAMILY_PATTERNS = [
    ("depthwise", re.compile(r"dwconv|DepthwiseConv", re.I)),
    ("convolution/GEMM", re.compile(r"gemm|conv|FullyConnected|fully_connected|packw", re.I)),
    (
        "transpose/reshape/copy",
        re.compile(r"transpose|copy|memmove|memset|reshape|concat|slice|pad|split|gather", re.I),
    ),
    ("pooling", re.compile(r"pool|rsum|rdsum|reduce|Mean", re.I)),
]


def family_of(symbol: str) -> str:
    for family, pattern in _FAMILY_PATTERNS:
        if pattern.search(symbol):
            return family
    return "other"


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    file_offset: int
    path: str


def executable_mappings(maps_text: str) -> list[Mapping]:
    """The file-backed executable mappings of a /proc/<pid>/maps listing."""
    out = []
    for line in maps_text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and "x" in parts[1] and parts[5].startswith("/"):
            start, end = (int(v, 16) for v in parts[0].split("-"))
            out.append(Mapping(start, end, int(parts[2], 16), parts[5].strip()))
    return sorted(out, key=lambda m: m.start)


class ElfSymbols:
    """Function symbols of one ELF file, looked up by file offset."""

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            elf = ELFFile(f)
            self._segments = [
                (s["p_offset"], s["p_filesz"], s["p_vaddr"]) for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"
            ]
            symbols = {}
            for name in (".symtab", ".dynsym"):
                section = elf.get_section_by_name(name)
                for sym in section.iter_symbols() if section else ():
                    if sym["st_info"]["type"] == "STT_FUNC" and sym["st_value"] and sym.name:
                        symbols.setdefault(sym["st_value"], (sym["st_size"], sym.name))
        self._starts = sorted(symbols)
        self._entries = [symbols[s] for s in self._starts]

    def name_at(self, file_offset: int) -> str | None:
        vaddr = next(
            (
                off - p_off + p_vaddr
                for p_off, size, p_vaddr in self._segments
                for off in (file_offset,)
                if p_off <= off < p_off + size
            ),
            None,
        )
        if vaddr is None:
            return None
        i = bisect.bisect_right(self._starts, vaddr) - 1
        if i < 0:
            return None
        size, name = self._entries[i]
        return name if vaddr < self._starts[i] + max(size, 1) else None


@lru_cache(maxsize=None)
def _symbols_for(path: str) -> ElfSymbols | None:
    try:
        return ElfSymbols(Path(path))
    except (OSError, ValueError, ELFError):
        return None


class GuestCode:
    """Where guest code addresses come from: the host file and offset behind each executable mapping."""

    def __init__(self, maps_text: str, root: Path):
        self._mappings = executable_mappings(maps_text)
        self._starts = [m.start for m in self._mappings]
        self._root = root

    def locate(self, address: int) -> tuple[Mapping, str, int] | None:
        """(mapping, host path, file offset) of a code address, None outside file-backed code."""
        i = bisect.bisect_right(self._starts, address) - 1
        if i < 0 or address >= self._mappings[i].end:
            return None
        m = self._mappings[i]
        in_root = self._root / m.path.lstrip("/")  # qemu -L resolves guest paths under the root first
        return m, str(in_root) if in_root.is_file() else m.path, address - m.start + m.file_offset

    def name_of(self, address: int) -> str:
        """'library!function' ('[unmapped]' outside file-backed code)."""
        found = self.locate(address)
        if found is None:
            return "[unmapped]"
        m, host_path, offset = found
        table = _symbols_for(host_path)
        name = table.name_at(offset) if table else None
        return f"{Path(m.path).name}!{name or '?'}"


def family_of_symbol(symbol: str) -> str:
    """The kernel family of a 'library!function' name."""
    return family_of(symbol.split("!", 1)[-1])


def attribute(blocks: dict[int, int], code: GuestCode) -> dict[str, int]:
    """Instruction counts per symbol ('library!function'), from per-block-address counts."""
    totals: dict[str, int] = {}
    for address, count in blocks.items():
        key = code.name_of(address)
        totals[key] = totals.get(key, 0) + count
    return totals
