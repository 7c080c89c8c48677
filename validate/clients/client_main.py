"""The command line the client scripts share, run inside a client's venv (never imported by the project): argv
TASK MODEL CROPS_NPY ANSWERS_NPY, with crops N x H x W x 3 uint8. Saves the answers and prints one JSON line:
{"answers": N} or {"error": "..."}."""

import json
import sys

import numpy as np


def main(run) -> None:
    """`run(task, model, crops)` gives one answer per crop; anything it raises is the client's refusal."""
    task, model, crops, answers = sys.argv[1], sys.argv[2], np.load(sys.argv[3]), sys.argv[4]
    try:
        result = np.asarray(run(task, model, crops))
    except Exception as exc:  # the client's refusal is the answer: report it as one line
        print(json.dumps({"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"}))
        return
    np.save(answers, result)
    print(json.dumps({"answers": len(result)}))
