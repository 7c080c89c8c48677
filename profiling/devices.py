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

    def cores(self, threads: int) -> list[str]:
        """The kinds of core `threads` threads run on."""
        return list(dict.fromkeys(c.core for c in self.fastest_cores(threads)))

    def fastest_cores(self, threads: int) -> list[Cluster]:
        """One entry per thread: threads go to the fastest cores first (big cores, then little ones)."""
        placed = [Cluster(c.core, 1, c.ghz) for c in self.clusters for _ in range(c.count)]
        return placed[: max(1, min(threads, len(placed)))]


DEVICES = {
    d.name: d
    for d in (
        Device(
            "pixel-4",
            "Google Pixel 4 (Snapdragon 855: 1x Kryo 485 Gold (Cortex-A76) 2.84 GHz, 3x A76 2.42 GHz, 4x A55 1.8 GHz)",
            (Cluster("a76", 1, 2.84), Cluster("a76", 3, 2.42), Cluster("a55", 4, 1.8)),
            2.0,
            34.1,
            ("smartprix.com: Snapdragon 855 vs 845 (clusters, L2/L3, LPDDR4X 4x16 bit at 2133 MHz)",),
        ),
        Device(
            "pixel-3",
            "Google Pixel 3 (Snapdragon 845: 4x Kryo 385 Gold (Cortex-A75) 2.8 GHz, 4x Kryo 385 Silver (A55) 1.77 GHz)",
            (Cluster("a75", 4, 2.8), Cluster("a55", 4, 1.77)),
            2.0,
            29.9,
            ("smartprix.com: Snapdragon 855 vs 845 (clusters, 2 MB L3, LPDDR4X 4x16 bit at 1866 MHz)",),
            note="the little cores' clock is not from the source",
        ),
        Device(
            "pixel-3a",
            "Google Pixel 3a (Snapdragon 670: 2x Kryo 360 Gold (Cortex-A75) 2.0 GHz, 6x Kryo 360 Silver (A55) 1.7 GHz)",
            (Cluster("a75", 2, 2.0), Cluster("a55", 6, 1.7)),
            1.0,
            14.9,
            ("androidcentral.com: Snapdragon 670 (clusters and clocks)",),
            note="the 1 MB L3 comes from a pre-launch leak and the LPDDR4X-1866 2x16 bit memory is not sourced",
        ),
        Device(
            "pixel-2",
            "Google Pixel 2 (Snapdragon 835: 4x Kryo 280 Gold (Cortex-A73) 2.45 GHz, 4x Kryo 280 Silver (A53) 1.9 GHz)",
            (Cluster("a73", 4, 2.45), Cluster("a53", 4, 1.9)),
            2.0,
            29.8,
            ("techspot.com: Google Pixel 2 XL review (clusters, LPDDR4X at 29.8 GB/s)",),
            note="the 2 MB L2 of the big cluster is not sourced",
        ),
        Device(
            "raspberry-pi-4",
            "Raspberry Pi 4 Model B (BCM2711 B0: 4x Cortex-A72 1.5 GHz)",
            (Cluster("a72", 4, 1.5),),
            1.0,
            12.8,
            ("The Official Raspberry Pi Beginner's Guide, appendix (cores, clock, LPDDR4-3200)",),
            note="the 1 MB L2 and the 32-bit memory bus are not sourced",
        ),
        Device(
            "raspberry-pi-3b+",
            "Raspberry Pi 3 Model B+ (BCM2837B0: 4x Cortex-A53 1.4 GHz)",
            (Cluster("a53", 4, 1.4),),
            0.5,
            3.6,
            ("The Official Raspberry Pi Beginner's Guide, appendix (cores, clock, LPDDR2 at 900 MHz)",),
            note="the 512 KB L2 and the 32-bit memory bus are not sourced",
        ),
        Device(
            "budget-a53",
            "A budget phone on a Snapdragon 450 (8x Cortex-A53 1.8 GHz), e.g. the Moto G6 or Redmi 5",
            (Cluster("a53", 8, 1.8),),
            0.5,
            7.5,
            (
                "themobileindian.com: Qualcomm's Snapdragon 450 (8x Cortex-A53 at 1.8 GHz)",
                "technewswith.me: Snapdragon 450 (single-channel LPDDR3)",
            ),
            note="the 512 KB L2 and the 32-bit LPDDR3-1866 bus are not sourced",
        ),
        Device(
            "snapdragon-810",
            "The ShuffleNet V2 paper's ARM platform (Snapdragon 810: 4x Cortex-A57 1.958 GHz, 4x A53 1.555 GHz)",
            (Cluster("a57", 4, 1.958), Cluster("a53", 4, 1.555)),
            2.0,
            24.8,
            ("anandtech.com: Snapdragon 810 performance preview (clusters, 2 MB L2, LPDDR4 2x32 bit, 24.8 GB/s)",),
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
