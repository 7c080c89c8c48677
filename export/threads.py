"""How many threads one export's runtimes use, and the share each export gets when a batch runs several at once.

Every library sizes its thread pool to the machine by default. Two exports side by side on two cores then run four
or more busy threads, and the spinning and switching cost more than they win (shufflenet_v2_x0_5 int8: 62 CPU
seconds with default pools, 52 with one thread each). A batch worker's environment caps them all.
"""

from __future__ import annotations

import os

from mobile_vision_export.export.reproducible import pinned

THREADS_ENV = "MVE_THREADS"  # the cap on ONNX Runtime's and LiteRT's threads in this process, if set
RUNTIME_THREADS = 2  # ONNX Runtime's and LiteRT's threads otherwise


def runtime_threads() -> int:
    """Threads for an ONNX Runtime session or a LiteRT interpreter of the export. Always RUNTIME_THREADS when the
    arithmetic is pinned: LiteRT's built-in kernels split some sums between their threads."""
    cap = os.environ.get(THREADS_ENV)
    return min(RUNTIME_THREADS, max(1, int(cap))) if cap and not pinned() else RUNTIME_THREADS


def batch_environment(jobs: int) -> dict[str, str]:
    """Environment variables that give each of `jobs` parallel exports its share of the cores: NumPy's BLAS,
    PyTorch (OpenMP), TensorFlow in the converter, ONNX Runtime and LiteRT. They must be set before the process
    starts, since the libraries read them when they load. OpenMP threads wait asleep, not spinning: the int8 tuning
    trains on a fixed 2 threads in every export, and two such trainings side by side on 2 cores took 66 s each for
    what one alone does in 12 s when spinning, 23-25 s when asleep."""
    share = str(max(1, (os.cpu_count() or 1) // jobs))
    names = (THREADS_ENV, "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    return {
        **dict.fromkeys((*names, "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"), share),
        "OMP_WAIT_POLICY": "PASSIVE",
    }
