"""Named devices for the millisecond estimate: core clusters, clocks, last-level cache and DRAM bandwidth.

Each entry names its sources. DRAM bandwidth is the memory interface's peak (transfer rate x bus width), so the
memory bound is a lower bound on the time the traffic takes.
"""

from __future__ import annotations

from dataclasses import dataclass

from mobile_vision_export.errors import UserError


@dataclass(frozen=True)
class Cluster:
    core: str  # a profiling.cores.CORES name: the core whose cycles this cluster runs at
    count: int
    ghz: float

    @property
    def hz(self) -> float:
        return self.ghz * 1e9


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    clusters: tuple[Cluster, ...]  # fastest first
    last_level_cache_mb: float
    dram_gb_per_s: float
    sources: tuple[str, ...]
    note: str = ""  # where a core is stood in for by another model

    @property
    def last_level_cache_bytes(self) -> int:
        return int(self.last_level_cache_mb * 2**20)

    @property
    def dram_bytes_per_s(self) -> float:
        return self.dram_gb_per_s * 1e9

    @property
    def cores(self) -> list[str]:
        return list(dict.fromkeys(c.core for c in self.clusters))

    def fastest_cores(self, threads: int) -> list[Cluster]:
        """One entry per thread: threads go to the fastest cores first (big cores, then little ones)."""
        placed = [Cluster(c.core, 1, c.ghz) for c in self.clusters for _ in range(c.count)]
        return placed[: max(1, min(threads, len(placed)))]


DEVICES = {
    d.name: d
    for d in (
        Device(
            "pixel-4",
            "Google Pixel 4 (Snapdragon 855: 1x Cortex-A76 2.84 GHz, 3x A76 2.42 GHz, 4x A55 1.78 GHz)",
            (Cluster("a76", 1, 2.84), Cluster("a76", 3, 2.42), Cluster("a55", 4, 1.78)),
            2.0,
            34.1,
            ("Qualcomm Snapdragon 855 product brief", "LPDDR4X-4266, 4x16 bit"),
        ),
        Device(
            "pixel-3a",
            "Google Pixel 3a (Snapdragon 670: 2x Kryo 360 Gold (Cortex-A75) 2.0 GHz, 6x Kryo 360 Silver (A55) 1.7 GHz)",
            (Cluster("a75", 2, 2.0), Cluster("a55", 6, 1.7)),
            1.0,
            14.9,
            ("Qualcomm Snapdragon 670 product brief", "LPDDR4X-1866, 2x16 bit"),
        ),
        Device(
            "pixel-2",
            "Google Pixel 2 (Snapdragon 835: 4x Kryo 280 Gold (Cortex-A73) 2.35 GHz, 4x Kryo 280 Silver (A53) 1.9 GHz)",
            (Cluster("a73", 4, 2.35), Cluster("a53", 4, 1.9)),
            2.0,
            29.8,
            ("Qualcomm Snapdragon 835 product brief", "LPDDR4X-1866, 2x32 bit"),
        ),
        Device(
            "raspberry-pi-4",
            "Raspberry Pi 4 Model B (BCM2711: 4x Cortex-A72 1.5 GHz)",
            (Cluster("a72", 4, 1.5),),
            1.0,
            12.8,
            ("Raspberry Pi 4 product brief", "LPDDR4-3200, 32 bit"),
        ),
        Device(
            "raspberry-pi-3b+",
            "Raspberry Pi 3 Model B+ (BCM2837B0: 4x Cortex-A53 1.4 GHz)",
            (Cluster("a53", 4, 1.4),),
            0.5,
            3.6,
            ("Raspberry Pi 3 Model B+ product brief", "LPDDR2-900, 32 bit"),
        ),
        Device(
            "budget-a53",
            "A budget phone with Snapdragon 450 (8x Cortex-A53 1.8 GHz)",
            (Cluster("a53", 8, 1.8),),
            0.5,
            7.5,
            ("Qualcomm Snapdragon 450 product brief", "LPDDR3-933, 2x16 bit"),
        ),
    )
}


class UnknownDeviceError(UserError, ValueError):
    """A device name we have no entry for."""


def parse_devices(text: str) -> list[Device]:
    """'pixel-4,raspberry-pi-4' -> the Device entries, or an error naming the unknown one."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in DEVICES]
    if unknown or not names:
        raise UnknownDeviceError(
            f"unknown device '{unknown[0] if unknown else text}': choose from {', '.join(DEVICES)}"
        )
    return [DEVICES[n] for n in names]
