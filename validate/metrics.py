"""Numerical agreement between a reference output and a candidate output (both N x classes)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ParityMetrics:
    samples: int
    max_abs: float
    mean_abs: float
    cosine_mean: float
    cosine_min: float
    sqnr_db: float
    top1_agreement: float | None  # None: the output is not class scores (a map, boxes, an embedding)
    top5_overlap: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio: 10 log10(sum ref^2 / sum (ref - cand)^2); inf when identical."""
    noise = float(np.sum((reference.astype(np.float64) - candidate) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(signal / noise)


RIVALS = 5  # classes after the float top one whose margins `expected_agreement` weighs


def expected_agreement(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement expected on photos like these, and its standard error. A count of agreeing photos is decided
    by the few whose top classes nearly tie, so it moves by whole photos between files of nearly the same error
    (mobilenet_v2 int8, 348 photos: 91.7-96.8 % at 22.3-22.8 dB). Here each photo's float margins over its next
    RIVALS classes meet every photo's error on its own margins, scaled to the photo's own error level: the share
    of those N x N pairings in which the top class stays on top. Its pairing with its own error is the count."""
    n = len(reference)
    ref = reference.reshape(n, -1).astype(np.float64)
    error = candidate.reshape(n, -1) - ref
    k = min(RIVALS, ref.shape[1] - 1)
    if k < 1:
        return 1.0, 0.0
    order = np.argsort(-ref, axis=1, kind="stable")
    top, rivals = order[:, :1], order[:, 1 : k + 1]
    margins = np.take_along_axis(ref, top, 1) - np.take_along_axis(ref, rivals, 1)
    shifts = np.take_along_axis(error, rivals, 1) - np.take_along_axis(error, top, 1)
    level = error.std(axis=1)
    unit = shifts / np.where(level > 0, level, 1.0)[:, None]
    stays = np.ones((n, n), bool)  # photo i's margins under photo j's error
    for r in range(k):
        stays &= margins[:, r, None] >= level[:, None] * unit[None, :, r]
    # a mean over pairs of photos: its error to first order is that of the mean of each photo's row plus column
    spread = stays.mean(axis=1) + stays.mean(axis=0)
    return float(stays.mean()), float(spread.std() / np.sqrt(n))


EMPTY = 1e-6  # a photo's output whose norm is below this share of the largest photo's is empty (see _cosines)


def _cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per photo. Outputs with next to nothing in them count as zero vectors, and two of those agree: a text
    detector's map of a photo without text is 1e-30 from ONNX Runtime and exactly 0 from XNNPACK, which flushes
    such numbers to zero (PP-OCRv4's detector: fp32 at 101 dB read a mean cosine of 0.93 without this)."""
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    norm_ref, norm_cand = np.linalg.norm(ref, axis=1), np.linalg.norm(cand, axis=1)
    floor = EMPTY * max(float(norm_ref.max(initial=0.0)), float(norm_cand.max(initial=0.0)))
    empty_ref, empty_cand = norm_ref <= floor, norm_cand <= floor
    norms = norm_ref * norm_cand
    cos = np.where(norms > 0, np.sum(ref * cand, axis=1) / np.maximum(norms, 1e-300), 0.0)
    cos = np.where(empty_ref | empty_cand, 0.0, cos)
    return np.where(empty_ref & empty_cand, 1.0, cos)  # two empty outputs agree


def compare(reference: np.ndarray, candidate: np.ndarray, classes: bool = True) -> ParityMetrics:
    """All parity metrics of `candidate` against `reference`, over N samples; top-1 and top-5 only when the
    outputs are class scores (the argmax of a flattened map or box list means nothing)."""
    if reference.shape != candidate.shape or reference.ndim != 2:
        raise ValueError(f"outputs differ in shape: {reference.shape} vs {candidate.shape}")
    diff = np.abs(reference.astype(np.float64) - candidate)
    cos = _cosines(reference, candidate)
    k = min(5, reference.shape[1])
    top5_ref = np.argsort(-reference, axis=1, kind="stable")[:, :k]
    top5_cand = np.argsort(-candidate, axis=1, kind="stable")[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top5_ref, top5_cand)])
    return ParityMetrics(
        samples=int(reference.shape[0]),
        max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        cosine_mean=float(cos.mean()),
        cosine_min=float(cos.min()),
        sqnr_db=sqnr_db(reference, candidate),
        top1_agreement=float(np.mean(top5_ref[:, 0] == top5_cand[:, 0])) if classes else None,
        top5_overlap=float(overlap) if classes else None,
    )


def segmentation_agreement(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Class maps (N x C x H x W scores): the share of pixels whose argmax class agrees, and the mean over classes
    of the intersection over union of the two class maps (classes present in either)."""
    ref, cand = reference.argmax(1), candidate.argmax(1)
    ious = []
    for c in range(reference.shape[1]):
        union = np.sum((ref == c) | (cand == c))
        if union:
            ious.append(np.sum((ref == c) & (cand == c)) / union)
    return {"pixel_agreement": float(np.mean(ref == cand)), "mean_iou": float(np.mean(ious)) if ious else 1.0}


def embedding_agreement(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Feature vectors (N x D): for each photo, whether its nearest other photo by cosine is the same in both."""

    def nearest(x: np.ndarray) -> np.ndarray:
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        return similarity.argmax(1)

    ref, cand = reference.reshape(len(reference), -1), candidate.reshape(len(candidate), -1)
    return {
        "nearest_neighbour_agreement": float(
            np.mean(nearest(ref.astype(np.float64)) == nearest(cand.astype(np.float64)))
        )
    }


TOP_K_SCORES = 100  # (box, class) scores compared when the boxes are not decoded
NMS_IOU = 0.5  # boxes of one class overlapping more than this: the lower-scored one is dropped
MATCH_IOU = 0.5  # an int8 detection reproduces a float one of the same class overlapping at least this much
MAX_DETECTIONS = 100  # per photo, after NMS
MAX_LOG_SIZE = 20.0  # an anchored box's size offset is clipped here, so a wild int8 offset gives a huge box, not inf


def top_k_score_overlap(
    reference: np.ndarray, candidate: np.ndarray, threshold: float, k: int = TOP_K_SCORES
) -> float | None:
    """Scores (N x boxes x classes): the mean share of each photo's highest (box, class) scores that are also among
    the candidate's as many highest. Only the reference's scores at or above `threshold` count (at most k): below it
    a trained detector's scores are near zero and their order is rounding noise. Photos with none are left out;
    None when no photo has any."""
    ref, cand = reference.reshape(len(reference), -1), candidate.reshape(len(candidate), -1)
    shares = []
    for a, b in zip(ref, cand):
        n = min(k, int(np.sum(a >= threshold)))
        if n:
            top_ref, top_cand = np.argpartition(-a, n - 1)[:n], np.argpartition(-b, n - 1)[:n]
            shares.append(len(set(top_ref) & set(top_cand)) / n)
    return float(np.mean(shares)) if shares else None


@dataclass(frozen=True)
class BoxDecoding:
    """How a detector writes its boxes: xyxy, cxcywh, or SSD offsets from anchors (N x 4: centre x, centre y, width,
    height), in torchvision's order (anchor-xywh: dx, dy, dw, dh) or TensorFlow's (anchor-yxhw), each divided by
    its scale (x, y, w, h): centre = offset x anchor size + anchor centre, size = exp(offset) x anchor size."""

    box_format: str
    anchors: np.ndarray | None = None
    scales: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)

    def corners(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes (... x N x 4) as x1, y1, x2, y2 with x1 <= x2 and y1 <= y2. Corners given the other way round (or a
        negative width) are the same region: without the ordering they had no area and matched nothing, not even
        themselves."""
        values = boxes.astype(np.float64)
        if self.box_format == "xyxy":
            a, b = values[..., :2], values[..., 2:]
        else:
            if self.anchors is not None:
                values = self._from_anchors(values)
            centre, size = values[..., :2], values[..., 2:]
            a, b = centre - size / 2, centre + size / 2
        return np.concatenate([np.minimum(a, b), np.maximum(a, b)], axis=-1)

    def _from_anchors(self, offsets: np.ndarray) -> np.ndarray:
        if self.box_format == "anchor-yxhw":
            offsets = offsets[..., [1, 0, 3, 2]]
        d = offsets / np.asarray(self.scales, np.float64)
        centre = d[..., :2] * self.anchors[:, 2:] + self.anchors[:, :2]
        size = np.exp(np.clip(d[..., 2:], -MAX_LOG_SIZE, MAX_LOG_SIZE)) * self.anchors[:, 2:]
        return np.concatenate([centre, size], axis=-1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of corner boxes a (M x 4) against b (K x 4): M x K."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def detections(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One photo's detections, as a mobile decoder makes them: each box takes its best class; boxes scoring at
    least `threshold` go through NMS per class (NMS_IOU); the MAX_DETECTIONS best stay. Returns the kept
    detections' corner boxes and classes, best first (K x 4, K)."""
    classes, best = scores.argmax(1), scores.max(1)
    order = [i for i in np.argsort(-best, kind="stable") if best[i] >= threshold]
    kept: list[int] = []
    for i in order:
        same = [j for j in kept if classes[j] == classes[i]]
        if not same or box_iou(boxes[i : i + 1], boxes[same]).max() <= NMS_IOU:
            kept.append(i)
            if len(kept) == MAX_DETECTIONS:
                break
    return boxes[kept], classes[kept]


def detection_agreement(
    reference: tuple[np.ndarray, np.ndarray],
    candidate: tuple[np.ndarray, np.ndarray],
    decoding: BoxDecoding,
    threshold: float,
) -> dict:
    """(boxes N x B x 4, scores N x B x C) of the float reference and the candidate, decoded the same way
    (`decoding`, then `detections`): the share of the reference's detections the candidate reproduces (same class,
    IoU at least MATCH_IOU, each candidate detection matched once), and how many detections each made."""
    found = reproduced = made = 0
    for ref_boxes, ref_scores, cand_boxes, cand_scores in zip(*reference, *candidate):
        ref_b, ref_c = detections(decoding.corners(ref_boxes), ref_scores, threshold)
        cand_b, cand_c = detections(decoding.corners(cand_boxes), cand_scores, threshold)
        found, made = found + len(ref_b), made + len(cand_b)
        free = np.ones(len(cand_b), bool)
        ious = box_iou(ref_b, cand_b) if len(ref_b) and len(cand_b) else np.zeros((len(ref_b), len(cand_b)))
        for i in range(len(ref_b)):
            fits = free & (cand_c == ref_c[i]) & (ious[i] >= MATCH_IOU)
            if fits.any():
                free[np.flatnonzero(fits)[np.argmax(ious[i][fits])]] = False
                reproduced += 1
    return {
        "detections_reproduced": reproduced / found if found else None,
        "reference_detections": found,
        "candidate_detections": made,
    }
