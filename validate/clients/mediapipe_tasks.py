"""Run inside the MediaPipe client venv (scripts/setup_clients.sh), never imported by the project: one of MediaPipe
Tasks' vision tasks on crops already made as the contract says (command line: client_main.py). The answers:
classify, the top-1 class per crop; segment, the category mask per crop, N x H x W; embed, the embedding per crop,
N x D; detect, the best detection per crop, N x 6: x, y, width, height in pixels, category index, score."""

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


def _run(task, model, crops):
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    images = [mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(c)) for c in crops]
    return TASKS[task](vision, BaseOptions(model_asset_path=model), images)


if __name__ == "__main__":
    from client_main import main  # beside this script, which runs as a file

    main(_run)
