"""The ARM cores we emulate: which qemu CPU model to run and which /proc/cpuinfo LiteRT should read."""

from __future__ import annotations

from dataclasses import dataclass

from mobile_vision_export.errors import UserError

_BASE_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
_V82_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"


@dataclass(frozen=True)
class Core:
    name: str
    qemu_cpu: str  # must offer the instructions the cpuinfo claims, or chosen kernels hit SIGILL
    part: str  # ARM "CPU part" number that cpuinfo-based kernel selection keys on
    features: str
    mca_cpu: str  # llvm-mca scheduling model for the cycle estimate
    in_order: bool = False
    variant: str = "0x0"
    revision: str = "4"

    def cpuinfo(self) -> str:
        return (
            f"processor\t: 0\nBogoMIPS\t: 38.40\nFeatures\t: {self.features}\nCPU implementer\t: 0x41\n"
            f"CPU architecture: 8\nCPU variant\t: {self.variant}\nCPU part\t: {self.part}\n"
            f"CPU revision\t: {self.revision}\n\n"
        )


# qemu 7.2 has no cortex-a55 model; cortex-a76 offers the same ARMv8.2 dot-product and fp16 instructions.
CORES = {
    "a53": Core("a53", "cortex-a53", "0xd03", _BASE_FEATURES, "cortex-a53", in_order=True),
    "a55": Core("a55", "cortex-a76", "0xd05", _V82_FEATURES, "cortex-a55", in_order=True, variant="0x2", revision="0"),
    "a57": Core("a57", "cortex-a57", "0xd07", _BASE_FEATURES, "cortex-a57", variant="0x1", revision="1"),
    "a72": Core("a72", "cortex-a72", "0xd08", _BASE_FEATURES, "cortex-a72", revision="3"),
    # LLVM times the A72, A73 and A75 with its Cortex-A57 model. qemu 7.2 has no A73 or A75: the A72 model (no dot
    # product, like the A73) and the A76 model (ARMv8.2 with dot product, like the A75) run their kernels.
    "a73": Core("a73", "cortex-a72", "0xd09", _BASE_FEATURES, "cortex-a73", revision="2"),
    "a75": Core("a75", "cortex-a76", "0xd0a", _V82_FEATURES, "cortex-a75", variant="0x2", revision="1"),
    # LLVM has no Cortex-A76 model of its own; the Neoverse N1 is the same microarchitecture in a server chip.
    "a76": Core("a76", "cortex-a76", "0xd0b", _V82_FEATURES, "neoverse-n1", variant="0x4", revision="1"),
}


class UnknownCoreError(UserError, ValueError):
    """A core name we have no profile for."""


def parse_cores(text: str) -> list[Core]:
    """'a53,a76' -> the Core entries, or an error naming the unknown one."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CORES]
    if unknown or not names:
        raise UnknownCoreError(f"unknown ARM core '{unknown[0] if unknown else text}': choose from {', '.join(CORES)}")
    return [CORES[n] for n in names]
