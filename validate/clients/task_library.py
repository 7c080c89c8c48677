"""Run inside the Task Library client venv (scripts/setup_clients.sh), never imported by the project: one of the
TensorFlow Lite Task Library's vision tasks (tflite-support, with its own TFLite runtime) on crops already made as
the contract says. The same answers as mediapipe_tasks.py (command line: client_main.py)."""

import numpy as np


def _classify(vision, processor, options, images):
    options = vision.ImageClassifierOptions(
        base_options=options, classification_options=processor.ClassificationOptions(max_results=1)
    )
    task = vision.ImageClassifier.create_from_options(options)
    return [task.classify(image).classifications[0].categories[0].index for image in images]


def _segment(vision, processor, options, images):
    options = vision.ImageSegmenterOptions(
        base_options=options,
        segmentation_options=processor.SegmentationOptions(output_type=processor.OutputType.CATEGORY_MASK),
    )
    task = vision.ImageSegmenter.create_from_options(options)
    masks = []
    for image in images:
        mask = task.segment(image).segmentations[0]
        masks.append(np.frombuffer(mask.category_mask, np.uint8).reshape(mask.height, mask.width))
    return masks


def _embed(vision, processor, options, images):
    task = vision.ImageEmbedder.create_from_options(vision.ImageEmbedderOptions(base_options=options))
    return [list(task.embed(image).embeddings[0].feature_vector.value) for image in images]


def _detect(vision, processor, options, images):
    options = vision.ObjectDetectorOptions(
        base_options=options, detection_options=processor.DetectionOptions(max_results=1, score_threshold=0.0)
    )
    task = vision.ObjectDetector.create_from_options(options)
    best = [task.detect(image).detections[0] for image in images]
    return [
        [d.bounding_box.origin_x, d.bounding_box.origin_y, d.bounding_box.width, d.bounding_box.height]
        + [d.categories[0].index, d.categories[0].score]
        for d in best
    ]


TASKS = {"classify": _classify, "segment": _segment, "embed": _embed, "detect": _detect}


def _run(task, model, crops):
    from tflite_support.task import core, processor, vision

    images = [vision.TensorImage.create_from_array(np.ascontiguousarray(c)) for c in crops]
    return TASKS[task](vision, processor, core.BaseOptions(file_name=model, num_threads=1), images)


if __name__ == "__main__":
    from client_main import main  # beside this script, which runs as a file

    main(_run)
