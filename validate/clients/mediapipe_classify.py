"""Run inside the MediaPipe client venv (scripts/setup_clients.sh), never imported by the project: MediaPipe
Tasks' ImageClassifier on crops already made as the contract says. argv: MODEL CROPS_NPY (N x H x W x 3 uint8).
Prints one JSON line: {"top1": [class index per crop], "scores": [its score]} or {"error": "..."}."""

import json
import sys

import numpy as np


def main() -> None:
    model, crops = sys.argv[1], np.load(sys.argv[2])
    try:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions
        from mediapipe.tasks.python.vision import ImageClassifier, ImageClassifierOptions

        options = ImageClassifierOptions(base_options=BaseOptions(model_asset_path=model), max_results=1)
        top1, scores = [], []
        with ImageClassifier.create_from_options(options) as classifier:
            for crop in crops:
                image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(crop))
                best = classifier.classify(image).classifications[0].categories[0]
                top1.append(int(best.index))
                scores.append(float(best.score))
    except Exception as exc:  # the client's refusal is the answer: report it as one line
        print(json.dumps({"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"}))
        return
    print(json.dumps({"top1": top1, "scores": scores}))


if __name__ == "__main__":
    main()
