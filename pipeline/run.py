"""One export as an ordered list of named stages, run in a staged folder that appears only when all finished."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from mobile_vision_export.export.tflite_inspect import TfliteSummary
from mobile_vision_export.pipeline import stages as s
from mobile_vision_export.pipeline.int8_steps import EQUALIZATION, STEPS, Int8Step, run_int8_steps
from mobile_vision_export.pipeline.partial_dir import partial_dir
from mobile_vision_export.pipeline.progress import StageTimer
from mobile_vision_export.pipeline.reports import write_reports
from mobile_vision_export.pipeline.request import ExportRequest
from mobile_vision_export.pipeline.sources import ModelSource
from mobile_vision_export.validate.parity import VariantParity

__all__ = ["STAGES", "ExportRequest", "ExportResult", "Stage", "run_export"]


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[s.Job], s.Job] | None = None
    skip: Callable[[s.Job], str | None] = lambda job: None  # why the stage does not run for this job, or None
    title: Callable[[s.Job], str] | None = None  # what the console and the timings call it, if not `name`
    int8_steps: tuple[Int8Step, ...] = ()  # instead of `run`: int8 steps, each timed and recorded on its own


def _no_int8(job: s.Job) -> str | None:
    return None if job.request.wants_int8 else "no int8 requested"


def _trained(job: s.Job) -> str | None:
    return None if job.source.random_weights else "trained weights"


def _no_optimize(job: s.Job) -> str | None:
    return None if job.request.optimize else "turned off (--no-optimize)"


def _no_val_dir(job: s.Job) -> str | None:
    return None if job.request.val_dir else "no photos of yours (--val-dir)"


def _no_labelled_photos(job: s.Job) -> str | None:
    return None if job.labelled is not None else "no labelled photos (--val-dir, for a classifier)"


def _not_fp32_and_int8(job: s.Job) -> str | None:
    return None if {"fp32", "int8"} <= set(job.request.modes) else "needs the fp32 and int8 variants"


STAGES = (
    Stage("load photos", s.load_photos),
    Stage("BatchNorm statistics (random weights)", s.estimate_batchnorm, _trained),
    Stage("ONNX export", s.to_onnx),
    Stage("onnxsim", s.simplify),
    Stage("class names", s.name_classes),
    Stage("your photos", s.read_labelled_photos, _no_val_dir),
    Stage("int8 selection crops", s.hold_out_selection_crops, _no_int8),
    Stage("int8 graph steps", int8_steps=(EQUALIZATION,)),
    Stage("onnx2tf", s.convert, title=s.convert_title),
    Stage("layout pass", s.optimize_layout, _no_optimize),
    Stage("int8 file steps", int8_steps=tuple(step for step in STEPS if step is not EQUALIZATION)),
    Stage("drop the float twin", s.drop_float_twin, _no_int8),
    Stage("TFLite metadata", s.embed_metadata),
    Stage("GPU delegate readiness", s.check_gpu_delegate),
    Stage("parity", s.parity),
    Stage("accuracy on your labelled photos", s.measure_accuracy, _no_labelled_photos),
    Stage("per-layer int8 diagnosis", s.diagnose_int8, _not_fp32_and_int8),
)


@dataclass
class ExportResult:
    name: str
    out_dir: Path
    failures: list[str]  # every check that failed, one line each (empty: the files can ship)
    rows: list[VariantParity]
    summaries: dict[str, TfliteSummary]
    timings: dict[str, float]
    params: int | None
    macs: int | None
    channel_shuffles: int | None

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def files(self) -> dict[str, Path]:
        """The .tflite of each variant written."""
        return {mode: self.out_dir / f"{self.name}_{mode}.tflite" for mode in self.summaries}

    @property
    def report(self) -> Path:
        return self.out_dir / "report.md"

    def parity(self, variant: str) -> VariantParity:
        """The parity row of `variant` ('onnx' is ONNX Runtime against PyTorch)."""
        return next(row for row in self.rows if row.variant == variant)


def run_stages(job: s.Job, timer: StageTimer) -> s.Job:
    for stage in STAGES:
        reason = stage.skip(job)
        if reason is not None:
            job = replace(job, skipped={**job.skipped, stage.name: reason})
        elif stage.int8_steps:
            job = run_int8_steps(job, timer, stage.int8_steps)
        else:
            with timer.stage(stage.title(job) if stage.title else stage.name):
                job = stage.run(job)
    return job


def run_export(source: ModelSource, request: ExportRequest, timer: StageTimer) -> ExportResult:
    """Run every stage for `source`; artifacts land in out_root/<name>/ only if all stages complete."""
    out_dir = request.out_root / source.name
    with partial_dir(out_dir) as work_dir:
        job = run_stages(s.Job(source, request, work_dir), timer)
        params, macs = source.complexity()
        summaries = job.tflites.summaries()
        write_reports(job, summaries, dict(timer.timings), params, macs)
    (request.out_root / f"{source.name}.onnx2tf-error.log").unlink(missing_ok=True)  # stale from an earlier failure
    return ExportResult(
        source.name,
        out_dir,
        job.failures,
        job.rows,
        summaries,
        dict(timer.timings),
        params,
        macs,
        source.channel_shuffles,
    )
