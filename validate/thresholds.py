"""Default parity thresholds per variant, chosen from measurements (see README, "Parity thresholds")."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from mobile_vision_export.validate.metrics import ParityMetrics


@dataclass(frozen=True)
class Thresholds:
    min_sqnr_db: float
    min_cosine: float
    min_top1: float = 0.0  # a classifier's top-1 agreement
    min_pixel_agreement: float = 0.0  # a segmenter's per-pixel argmax agreement
    min_detections_reproduced: float = 0.0  # a detector's, with --box-format

    def as_dict(self) -> dict:
        return asdict(self)


# onnx = ONNX Runtime vs PyTorch; the others are each TFLite variant vs ONNX Runtime.
DEFAULTS = {
    "onnx": Thresholds(min_sqnr_db=60.0, min_cosine=0.99999, min_top1=1.0),
    "fp32": Thresholds(min_sqnr_db=60.0, min_cosine=0.99999, min_top1=1.0),
    "fp16": Thresholds(min_sqnr_db=30.0, min_cosine=0.999),
    "dynamic": Thresholds(min_sqnr_db=15.0, min_cosine=0.98),
    "int8": Thresholds(min_sqnr_db=4.0, min_cosine=0.80),
}
# With trained weights, top-1 agreement with float on the held-out photos is gated too: the int8 gate lies between
# plain onnx2tf int8 and this tool's int8 on mobilenet_v2 (ImageNet weights), as bench/accuracy.py measures them. A
# random-weight network's top two logits are nearly tied, so its agreement means nothing and only SQNR and cosine
# gate it.
# A trained segmenter's and detector's gates (tests/data/shapes.py, 100 scenes of painted shapes on photos calibration
# never saw) sit below plain onnx2tf int8, which measured 98.8 % pixel agreement and 98.2 % of 170 detections
# reproduced (this tool's int8 99.2 % and 98.8 %): they catch a broken file, not a tenth of a point.
TRAINED_MINIMUMS = {
    "int8": {"min_top1": 0.80, "min_pixel_agreement": 0.95, "min_detections_reproduced": 0.90},
    "dynamic": {"min_top1": 0.88, "min_pixel_agreement": 0.95, "min_detections_reproduced": 0.90},
}


def thresholds_for(
    variant: str,
    min_sqnr: float | None = None,
    min_cosine: float | None = None,
    min_top1: float | None = None,
    min_pixel_agreement: float | None = None,
    min_detections_reproduced: float | None = None,
    trained: bool = False,
) -> Thresholds:
    """The default thresholds for `variant` (stricter for `trained` weights), with any given overrides applied."""
    t = DEFAULTS[variant]
    if trained and variant in TRAINED_MINIMUMS:
        t = replace(t, **TRAINED_MINIMUMS[variant])
    overrides = {
        "min_sqnr_db": min_sqnr,
        "min_cosine": min_cosine,
        "min_top1": min_top1,
        "min_pixel_agreement": min_pixel_agreement,
        "min_detections_reproduced": min_detections_reproduced,
    }
    return replace(t, **{k: v for k, v in overrides.items() if v is not None})


def failures(metrics: ParityMetrics, t: Thresholds, task_metrics: dict | None = None) -> list[str]:
    """Human-readable reasons `metrics` (and an output's `task_metrics`, as parity.json has them) miss `t`; empty
    when they pass (NaN never passes)."""
    out = []
    if not metrics.sqnr_db >= t.min_sqnr_db:
        out.append(f"SQNR {metrics.sqnr_db:.1f} dB < {t.min_sqnr_db:g} dB")
    if not metrics.cosine_mean >= t.min_cosine:
        out.append(f"cosine {metrics.cosine_mean:.6f} < {t.min_cosine:g}")
    if metrics.top1_agreement is not None and not metrics.top1_agreement >= t.min_top1:
        out.append(f"top-1 agreement {metrics.top1_agreement:.1%} < {t.min_top1:.0%}")
    task_metrics = task_metrics or {}
    for key, limit in (
        ("pixel_agreement", t.min_pixel_agreement),
        ("detections_reproduced", t.min_detections_reproduced),
    ):
        value = task_metrics.get(key)
        if value is not None and not value >= limit:
            out.append(f"{key.replace('_', ' ')} {value:.1%} < {limit:.0%}")
    return out
