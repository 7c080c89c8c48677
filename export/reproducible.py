"""The same int8 file on any x86-64 machine: the fitted steps' arithmetic pinned to code paths that do not depend on
the CPU.

The int8 tuning trains a few hundred steps in float32; sums whose order follows the CPU's vector width (ATen's
kernels, oneDNN's convolutions, MKL's and OpenBLAS's matrix products) differ in their last bits between an AVX2 and
an AVX-512 machine, and the training's roundings turn those bits into different weight levels (mobilenet_v2: a
different file after 40 steps). Pinned, every library takes one code path on every machine: ATen's `default`
kernels, MKL's `COMPATIBLE` branch, OpenBLAS's Prescott (SSE3) kernels, torch without oneDNN (the tuning's
depthwise convolutions as elementwise sums). The libraries read these variables when they load, so a process is
started with them (the export's --reproducible starts itself again), and LiteRT and ONNX Runtime run on a fixed
number of threads. Cost and what stays unpinned: docs/reference/int8.md, "Reproducible bytes".
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

ENVIRONMENT = {
    "MVE_REPRODUCIBLE": "1",
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "OPENBLAS_CORETYPE": "Prescott",
}


def pinned() -> bool:
    """Whether this process started with the pinned arithmetic."""
    return all(os.environ.get(name) == value for name, value in ENVIRONMENT.items())


def restart_pinned() -> NoReturn:
    """Run this command again, from the start, in a process with the pinned arithmetic."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **ENVIRONMENT})
