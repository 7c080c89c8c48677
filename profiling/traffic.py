"""Memory traffic of an emulated inference: the lines each kernel family missed in simulated caches of several sizes.

The qemu plugin (caches=1) sends every load and store of the counted window through least-recently-used caches of
CACHE sizes; a line missed in a cache of size S is traffic that a core with S of last-level cache sends to DRAM.
Write-backs of dirty lines are not counted.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import asdict, dataclass

from mobile_vision_export.profiling.symbols import FAMILIES, family_of_symbol

LINE_BYTES = 64


@dataclass
class CacheTraffic:
    cache_bytes: list[int]  # the simulated cache sizes, ascending
    families: dict[str, list[int]]  # per kernel family: bytes missed in each simulated cache

    def beyond(self, family: str, cache_bytes: float) -> float:
        """Bytes the family moves past a cache of `cache_bytes` (the largest simulated size not above it; the
        smallest if it is below them all)."""
        i = max(0, bisect.bisect_right(self.cache_bytes, cache_bytes) - 1)
        return float(self.families[family][i])

    def as_dict(self) -> dict:
        return asdict(self)


def family_traffic(
    cache_bytes: list[int], misses: dict[tuple[int, int], list[int]], name_of: Callable[[int], str]
) -> CacheTraffic:
    """Missed lines per block (keyed by start address and size) -> bytes per kernel family."""
    families = {f: [0] * len(cache_bytes) for f in FAMILIES}
    for (address, _), counts in misses.items():
        row = families[family_of_symbol(name_of(address))]
        for i, count in enumerate(counts):
            row[i] += count * LINE_BYTES
    return CacheTraffic(cache_bytes, families)
