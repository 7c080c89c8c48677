"""Run inside the MediaPipe client venv (scripts/setup_clients.sh), never imported by the project: one of MediaPipe
Tasks' vision tasks on crops already made as the contract says. argv: TASK MODEL CROPS_NPY ANSWERS_NPY, with crops
N x H x W x 3 uint8. Writes the answers (classify: top-1 class per crop; segment: the category mask per crop,
N x H x W; embed: the embedding per crop, N x D; detect: the best detection per crop, N x 6: x, y, width, height in
pixels, category index, score) and prints one JSON line: {"answers": N} or {"error": "..."}."""

import json
import sys

import numpy as np


def _classify(vision, options, images):
    options = vision.ImageClassifierOptions(base_options=options, max_results=1)
    with vision.ImageClassifier.create_from_options(options) as task:
        return [task.classify(image).classifications[0].categories[0].index for image in images]


def _segment(vision, options, images):
    options = vision.ImageSegmenterOptions(base_options=options, output_category_mask=True)
    with vision.ImageSegmenter.create_from_options(options) as task:
        return [task.segment(image).category_mask.numpy_view().squeeze(-1).copy() for image in images]


def _embed(vision, options, images):
    options = vision.ImageEmbedderOptions(base_options=options)
    with vision.ImageEmbedder.create_from_options(options) as task:
        return [task.embed(image).embeddings[0].embedding for image in images]


def _detect(vision, options, images):
    options = vision.ObjectDetectorOptions(base_options=options, max_results=1, score_threshold=0.0)
    with vision.ObjectDetector.create_from_options(options) as task:
        best = [task.detect(image).detections[0] for image in images]
    return [
        [d.bounding_box.origin_x, d.bounding_box.origin_y, d.bounding_box.width, d.bounding_box.height]
        + [-1 if d.categories[0].index is None else d.categories[0].index, d.categories[0].score]
        for d in best
    ]


TASKS = {"classify": _classify, "segment": _segment, "embed": _embed, "detect": _detect}


def main() -> None:
    task, model, crops, answers = sys.argv[1], sys.argv[2], np.load(sys.argv[3]), sys.argv[4]
    try:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        images = [mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(c)) for c in crops]
        result = np.asarray(TASKS[task](vision, BaseOptions(model_asset_path=model), images))
    except Exception as exc:  # the client's refusal is the answer: report it as one line
        print(json.dumps({"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"}))
        return
    np.save(answers, result)
    print(json.dumps({"answers": len(result)}))


if __name__ == "__main__":
    main()
