"""The user's own labelled photos: reading them (ImageFolder or CSV), and accuracy with honest error bars."""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobile_vision_export.export.images import ImageDataError, Photo, photos_in_dir, pixel_hashes
from mobile_vision_export.export.wording import plural
from mobile_vision_export.validate.metrics import compare

log = logging.getLogger(__name__)

FEW_PHOTOS = 100  # below this, say how much one photo moves the accuracy
BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class LabelledSet:
    photos: list[Photo]  # each with its class index as label
    description: str

    @property
    def labels(self) -> np.ndarray:
        return np.array([p.label for p in self.photos])


def _class_index(name: str, labels: list[str]) -> int | None:
    """A folder or CSV label: a class name (case-insensitive, '_' for ' ') or a class index."""
    wanted = name.strip().lower().replace("_", " ")
    for index, label in enumerate(labels):
        if label.strip().lower().replace("_", " ") == wanted:
            return index
    if name.strip().isdigit() and int(name) < len(labels):
        return int(name)
    return None


HEADER_NAMES = {"path", "file", "filename", "image", "photo"}  # a first row naming the photo column is a header


def _from_csv(path: Path, labels: list[str]) -> list[Photo]:
    """`path,label` rows, as spreadsheets write them too: a UTF-8 byte-order mark, a header row naming the columns,
    `;` or tab separators."""
    photos, unknown = [], set()
    with open(path, newline="", encoding="utf-8-sig") as f:
        text = f.read()
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    for number, row in enumerate(csv.reader(text.splitlines(), dialect)):
        if len(row) < 2 or not row[0].strip():
            continue
        if number == 0 and row[0].strip().lower() in HEADER_NAMES:
            continue
        index = _class_index(row[1], labels)
        if index is None:
            unknown.add(row[1].strip())
            continue
        photos.append(Photo((path.parent / row[0].strip()).resolve(), index))
    if unknown:
        raise ImageDataError(
            f"{path}: labels {sorted(unknown)[:5]} match no class name or index of the model's {len(labels)} classes"
        )
    missing = [p.path for p in photos if not p.path.is_file()]
    if missing:
        raise ImageDataError(f"{path} lists {plural(len(missing), 'missing photo')}, e.g. {missing[0]}")
    return photos


def _from_folders(folder: Path, labels: list[str]) -> list[Photo]:
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise ImageDataError(f"{folder} has no class subfolders: use one folder per class, or a CSV of path,label")
    unmatched = [c.name for c in classes if _class_index(c.name, labels) is None]
    if unmatched:
        raise ImageDataError(
            f"{plural(len(unmatched), 'folder')} in {folder} match no class name or index: {unmatched[:5]}; name each "
            "folder after a line of the labels file (or its index)"
        )
    photos = []
    for c in classes:
        index = _class_index(c.name, labels)
        photos += [
            Photo(p.path, index) for p in photos_in_dir(c, "add photos of that class to it, or remove the folder")
        ]
    return photos


def read_labelled(where: Path, labels: list[str]) -> LabelledSet:
    """Photos and class indices from an ImageFolder layout (one subfolder per class) or a CSV of path,label."""
    if where.is_file() and where.suffix.lower() == ".csv":
        photos = _from_csv(where, labels)
    elif where.is_dir():
        photos = _from_folders(where, labels)
    else:
        raise ImageDataError(f"--val-dir {where} is neither a folder of class subfolders nor a .csv file")
    if not photos:
        raise ImageDataError(f"no labelled photos in {where}")
    classes = len({p.label for p in photos})
    if len(photos) < FEW_PHOTOS:
        log.warning(
            "%d labelled photos: one photo moves accuracy by %.1f points",
            len(photos),
            100 / len(photos),
        )
    return LabelledSet(photos, f"{plural(len(photos), 'labelled photo')} of {plural(classes, 'class')} ({where})")


def content_hashes(photos: list[Photo]) -> dict[str, Path]:
    """SHA-256 of each photo file -> its path: what a record names its inputs by."""
    return {hashlib.sha256(p.path.read_bytes()).hexdigest(): p.path for p in photos}


def check_disjoint(validation: list[Photo], calibration: list[Photo], user_calibration: bool) -> None:
    """Refuse validation photos that calibration saw, compared by their decoded pixels (a re-saved copy is the same
    photo): their accuracy would flatter the int8 model."""
    seen = pixel_hashes(validation, cacheable=False)
    shared = seen.keys() & pixel_hashes(calibration, cacheable=not user_calibration).keys()
    if shared:
        fix = "keep --val-dir and --calib-dir apart" if user_calibration else "remove them from --val-dir"
        raise ImageDataError(
            f"{plural(len(shared), 'validation photo')} {'is' if len(shared) == 1 else 'are'} also calibration "
            f"photos (same pixels), e.g. {seen[sorted(shared)[0]]}: {fix}"
        )


@dataclass(frozen=True)
class Accuracy:
    """Accuracy of one model on the labelled photos, and its drop against the reference model."""

    model: str
    top1: float
    top5: float
    per_class: dict[int, float]
    drop_points: float = 0.0  # reference top-1 minus this top-1, in points
    drop_ci95: tuple[float, float] = (0.0, 0.0)  # paired bootstrap over photos
    agreement: float = 1.0  # top-1 agreement with the reference on these photos (parity on the user's data)
    sqnr_db: float = float("inf")  # of the logits against the reference's
    correct: np.ndarray = field(default=None, repr=False, compare=False)
    predicted: np.ndarray = field(default=None, repr=False, compare=False)  # top-1 class per photo
    compared: bool = False  # measured against a reference (the drop and agreement fields mean something)

    def as_dict(self) -> dict:
        out = {"model": self.model, "top1": self.top1, "top5": self.top5}
        if self.compared:
            out.update(
                drop_points=self.drop_points,
                drop_ci95=list(self.drop_ci95),
                top1_agreement_with_reference=self.agreement,
                sqnr_db_vs_reference=self.sqnr_db if np.isfinite(self.sqnr_db) else None,
            )
        return {**out, "per_class_top1": {str(k): v for k, v in sorted(self.per_class.items())}}


def accuracy(
    model: str,
    logits: np.ndarray,
    labels: np.ndarray,
    reference: Accuracy | None = None,
    reference_logits: np.ndarray | None = None,
) -> Accuracy:
    """Top-1/top-5 of `logits` against `labels`; with a `reference` (and its logits), the paired drop and the
    parity of the two models on these photos."""
    order = np.argsort(-logits, axis=1, kind="stable")
    correct = order[:, 0] == labels
    top5 = np.mean([label in row[:5] for row, label in zip(order, labels)])
    per_class = {int(c): float(correct[labels == c].mean()) for c in np.unique(labels)}
    if reference is None:
        return Accuracy(model, float(correct.mean()), float(top5), per_class, correct=correct, predicted=order[:, 0])
    diff = reference.correct.astype(np.float64) - correct
    rng = np.random.default_rng(0)
    samples = diff[rng.integers(0, len(diff), size=(BOOTSTRAP_RESAMPLES, len(diff)))].mean(axis=1) * 100
    low, high = np.percentile(samples, [2.5, 97.5])
    drop, interval = float(diff.mean() * 100), (float(low), float(high))
    parity = compare(reference_logits, logits) if reference_logits is not None else None
    agreement, sqnr = (parity.top1_agreement, parity.sqnr_db) if parity else (float("nan"), float("nan"))
    return Accuracy(
        model,
        float(correct.mean()),
        float(top5),
        per_class,
        drop,
        interval,
        agreement,
        sqnr,
        correct=correct,
        predicted=order[:, 0],
        compared=True,
    )


@dataclass(frozen=True)
class LabelledAccuracy:
    """Every model's accuracy on the user's labelled photos, against the reference (PyTorch, else ONNX Runtime)."""

    description: str
    rows: list[Accuracy]  # the reference first
    class_names: list[str]
    max_drop_points: float | None = None

    @property
    def failures(self) -> list[str]:
        if self.max_drop_points is None:
            return []
        return [
            f"{r.model} top-1 drops {r.drop_points:.1f} points > {self.max_drop_points:g} on your photos"
            for r in self.rows[1:]
            if r.drop_points > self.max_drop_points
        ]

    def as_dict(self) -> dict:
        return {
            "photos": self.description,
            "reference": self.rows[0].model,
            "max_drop_points": self.max_drop_points,
            "passed": not self.failures,
            "models": [r.as_dict() for r in self.rows],
        }

    def markdown(self) -> list[str]:
        n = len(self.rows[0].correct)
        lines = [
            "## Accuracy on your labelled photos",
            "",
            f"{self.description}. Drop: top-1 of {self.rows[0].model} minus the model's, in points, with a 95 % "
            f"interval from a paired bootstrap over the photos (one photo moves accuracy by {100 / n:.1f} points). "
            f"Top-1 agreement and SQNR: each model's logits against {self.rows[0].model}'s on the same photos.",
            "",
            "| model | top-1 | top-5 | drop (points) | 95 % interval | top-1 agreement | SQNR dB | classes losing most"
            " |",
            "|---|---:|---:|---:|---|---:|---:|---|",
        ]
        reference = self.rows[0]
        for r in self.rows:
            losses = sorted(
                ((reference.per_class[c] - acc, c) for c, acc in r.per_class.items() if reference.per_class[c] > acc),
                reverse=True,
            )[:3]
            worst = ", ".join(f"{self.class_names[c]} -{100 * loss:.0f}" for loss, c in losses) or "-"
            interval = "-" if r is reference else f"{r.drop_ci95[0]:+.1f} .. {r.drop_ci95[1]:+.1f}"
            drop = "-" if r is reference else f"{r.drop_points:+.1f}"
            parity = "- | -" if r is reference else f"{r.agreement:.1%} | {r.sqnr_db:.1f}"
            lines.append(f"| {r.model} | {r.top1:.1%} | {r.top5:.1%} | {drop} | {interval} | {parity} | {worst} |")
        if self.max_drop_points is not None:
            verdict = "; ".join(self.failures) or f"every variant within {self.max_drop_points:g} points"
            lines += ["", f"--max-accuracy-drop {self.max_drop_points:g}: {verdict}."]
        return lines
