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


def _cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    norm_ref, norm_cand = np.linalg.norm(ref, axis=1), np.linalg.norm(cand, axis=1)
    norms = norm_ref * norm_cand
    cos = np.where(norms > 0, np.sum(ref * cand, axis=1) / np.maximum(norms, 1e-300), 0.0)
    return np.where((norm_ref == 0) & (norm_cand == 0), 1.0, cos)  # two zero vectors agree


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
