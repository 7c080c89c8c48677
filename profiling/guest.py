"""Runs inside the emulated aarch64 Python: invoke a model with instruction-count windows around invoke().

Only the standard library, numpy and ai_edge_litert are available here (see profiling.arm_setup).
Usage: guest.py MODEL INPUT.npy OUT_DIR WARMUPS RUNS
"""

import ctypes
import sys

import numpy as np
from ai_edge_litert.interpreter import Interpreter

MARK_START, MARK_STOP = 0x4D56, 0x4D57  # must match profiling/qemu_plugin/insn_window.c


def main(model: str, input_path: str, out_dir: str, warmups: int, runs: int) -> None:
    libc = ctypes.CDLL(None)
    with open("/proc/cpuinfo") as src, open(f"{out_dir}/cpuinfo.txt", "w") as dst:
        dst.write(src.read())  # what LiteRT's CPU detection sees, checked by the host
    interpreter = Interpreter(model_path=model, num_threads=1)  # the plugin counts one vCPU's instructions
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.load(input_path))
    for _ in range(warmups):
        interpreter.invoke()
    for _ in range(runs):
        libc.syscall(MARK_START)
        interpreter.invoke()
        libc.syscall(MARK_STOP)
    np.save(f"{out_dir}/output.npy", interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    with open("/proc/self/maps") as src, open(f"{out_dir}/maps.txt", "w") as dst:
        dst.write(src.read())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
