"""Default parity thresholds per variant, chosen from measurements (see README, "Parity thresholds")."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from mobile_vision_export.validate.metrics import ParityMetrics


@dataclass(frozen=True)
class Thresholds:
    min_sqnr_db: float
    min_cosine: float
    min_top1: float = 0.0

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
TRAINED_MIN_TOP1 = {"int8": 0.80, "dynamic": 0.88}


def thresholds_for(
    variant: str,
    min_sqnr: float | None = None,
    min_cosine: float | None = None,
    min_top1: float | None = None,
    trained: bool = False,
) -> Thresholds:
    """The default thresholds for `variant` (stricter for `trained` weights), with any given overrides applied."""
    t = DEFAULTS[variant]
    if trained and variant in TRAINED_MIN_TOP1:
        t = replace(t, min_top1=TRAINED_MIN_TOP1[variant])
    overrides = {
        k: v
        for k, v in (("min_sqnr_db", min_sqnr), ("min_cosine", min_cosine), ("min_top1", min_top1))
        if v is not None
    }
    return replace(t, **overrides)


def failures(metrics: ParityMetrics, t: Thresholds) -> list[str]:
    """Human-readable reasons `metrics` misses `t`; empty when it passes (NaN never passes)."""
    out = []
    if not metrics.sqnr_db >= t.min_sqnr_db:
        out.append(f"SQNR {metrics.sqnr_db:.1f} dB < {t.min_sqnr_db:g} dB")
    if not metrics.cosine_mean >= t.min_cosine:
        out.append(f"cosine {metrics.cosine_mean:.6f} < {t.min_cosine:g}")
    if metrics.top1_agreement is not None and not metrics.top1_agreement >= t.min_top1:
        out.append(f"top-1 agreement {metrics.top1_agreement:.1%} < {t.min_top1:.0%}")
    return out
