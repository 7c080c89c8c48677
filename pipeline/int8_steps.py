"""The int8 steps, written once: each step's name, switch, parity.json key, what it runs and its summary type. The
command-line flags, the API's keyword arguments, the skips and the report are derived from STEPS; `run_int8_steps`
runs them in order and holds the rules between them."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from mobile_vision_export.export import images as imgs
from mobile_vision_export.export.tflite_inspect import inspect_tflite, quantize
from mobile_vision_export.int8.activation_ranges import cut_activation_ranges
from mobile_vision_export.int8.bias_correction import correct_biases
from mobile_vision_export.int8.equalize import equalize_for_int8
from mobile_vision_export.int8.fallback import JUDGE_PHOTOS, Cost, Judge, reach_targets
from mobile_vision_export.int8.io_types import uint8_io
from mobile_vision_export.int8.output import float_output
from mobile_vision_export.int8.rounding import fit_rounding
from mobile_vision_export.int8.tuning import tune
from mobile_vision_export.pipeline.progress import StageTimer
from mobile_vision_export.pipeline.request import ExportRequest
from mobile_vision_export.pipeline.stages import Job, nchw
from mobile_vision_export.profiling.host import measure_host


@dataclass(frozen=True)
class Int8Step:
    """One int8 step. `switch` names its API keyword and its --no-<switch> flag (on by default); a step without a
    switch runs when `asked` finds what asks for it in the request."""

    name: str  # the job's record of its summary and its parity.json key, int8_<name>
    title: str  # console, timings and report
    run: Callable[[Job], tuple[object, Job]]  # (summary with .applied, .as_dict(), .markdown(); the job); files
    # change in place
    switch: str | None = None
    off_help: str = ""
    asked: Callable[[ExportRequest], str | None] = lambda request: None  # why the request does not ask for it

    @property
    def key(self) -> str:
        return f"int8_{self.name}"

    @property
    def flag(self) -> str:
        return f"--no-{self.switch.replace('_', '-')}"


def _equalize(job: Job):
    path = job.work_dir / f"{job.source.name}_equalized.onnx"
    calib, heldout = nchw(job.photos.calib_x), nchw(job.photos.heldout)
    equalized, summary = equalize_for_int8(job.graphs.simplified, path, calib, heldout)
    return summary, replace(job, graphs=replace(job.graphs, equalized=equalized))


def _ranges(job: Job):
    return cut_activation_ranges(job.int8_file, job.crops), job


def _bias_correction(job: Job):
    return correct_biases(job.int8_file, job.tflites.float_twin, job.crops), job


def _tuning(job: Job):
    return tune(job.int8_file, job.tflites.float_twin, job.crops), job


def _fitted_rounding(job: Job):
    return fit_rounding(job.int8_file, job.tflites.float_twin, job.crops), job


def _host_cost(job: Job) -> Callable[[Path], Cost]:
    """Size and host latency of a candidate file, on a held-out photo prepared as the model expects."""
    photo = job.photos.heldout[:1]

    def cost(path: Path) -> Cost:
        info = inspect_tflite(path).inputs[0]
        x = photo if info.dtype == "float32" else quantize(photo, info)
        return Cost(path.stat().st_size, measure_host(path, x, threads=1, warmups=5, runs=30).median_ms)

    return cost


def _fallback(job: Job):
    """Judged on photos no earlier step read: the tuning fits the calibration crops themselves (mobilenet_v2
    ImageNet: 94.0 % agreement on them, 92.8 % on the unread photos)."""
    request, size, unread = job.request, job.source.input_size, job.photos.unread[:JUDGE_PHOTOS]
    if unread:
        crops = job.photos.calibration.crops(unread, lambda: imgs.heldout_batch(unread, size), "judge", size)
        images = imgs.normalize(crops, job.source.mean, job.source.std)
        judge = Judge(images, f"{len(unread)} unread calibration photos")
    else:
        selection = job.crops.selection
        judge = Judge(selection, f"{len(selection)} selection crops (no calibration photo unread)")
    targets = request.min_sqnr, request.min_top1
    classifier = job.graphs.simplified.task == "classify"
    ship = float_output if FLOAT_OUTPUT.asked(request) is None else None  # the step after this one
    summary = reach_targets(
        job.int8_file, job.tflites.float_twin, job.crops, judge, *targets, _host_cost(job), classifier, ship
    )
    return summary, job


def _float_output(job: Job):
    candidate = job.int8_file.with_name(f".{job.int8_file.name}.float_output")
    summary = float_output(job.int8_file, candidate)
    candidate.replace(job.int8_file)
    return summary, job


def _uint8_io(job: Job):
    candidate = job.int8_file.with_name(f".{job.int8_file.name}.uint8_io")
    summary = uint8_io(job.int8_file, candidate)
    candidate.replace(job.int8_file)
    return summary, job


def _no_target(request: ExportRequest) -> str | None:
    asked = request.min_sqnr is not None or request.min_top1 is not None
    return None if asked else "no target (--min-sqnr, --min-top1)"


def _int8_output(request: ExportRequest) -> str | None:
    if request.int8_output == "float":
        return None
    return "outputs stay int8 (--int8-output int8, the default without a target)"


def _int8_io(request: ExportRequest) -> str | None:
    return None if request.int8_io == "uint8" else "int8 input and output (--int8-io int8)"


EQUALIZATION = Int8Step(
    "equalization",
    "range equalization (int8 graph)",
    _equalize,
    "equalize",
    "convert int8 from the plain graph (no cross-layer range equalization)",
)
RANGES = Int8Step(
    "activation_ranges",
    "int8 percentile activation ranges",
    _ranges,
    "percentile_ranges",
    "keep the converter's min-max int8 activation ranges (no percentile narrowing)",
)
BIAS_CORRECTION = Int8Step(
    "bias_correction",
    "int8 bias correction",
    _bias_correction,
    "bias_correction",
    "keep the converter's int8 biases (no empirical bias correction)",
)
TUNING = Int8Step(
    "tuning",
    "int8 tuning",
    _tuning,
    "tuning",
    "skip the end-to-end training of int8 weight levels, biases and activation scales against float",
)
FITTED_ROUNDING = Int8Step(
    "fitted_rounding",
    "int8 fitted rounding",
    _fitted_rounding,
    "fitted_rounding",
    "keep the converter's int8 weight rounding (no refit of weights and biases to the float output)",
)
FALLBACK = Int8Step("fallback", "int8 fallback", _fallback, asked=_no_target)
FLOAT_OUTPUT = Int8Step("output", "int8 output in float", _float_output, asked=_int8_output)
UINT8_IO = Int8Step("io", "int8 file takes uint8 pixels", _uint8_io, asked=_int8_io)

STEPS = (EQUALIZATION, RANGES, BIAS_CORRECTION, TUNING, FITTED_ROUNDING, FALLBACK, FLOAT_OUTPUT, UINT8_IO)
SWITCHES = tuple(step.switch for step in STEPS if step.switch)  # export_model's keyword arguments, flags --no-*


def _skip_reason(step: Int8Step, job: Job) -> str | None:
    if not job.request.wants_int8:
        return "no int8 requested"
    if step.switch and step.switch in job.request.int8_off:
        return f"turned off ({step.flag})"
    return step.asked(job.request)


def _tuning_kept(job: Job) -> bool:
    tuning = job.int8_summaries.get(TUNING.name)
    return tuning is not None and tuning.applied


def run_int8_steps(job: Job, timer: StageTimer, steps: tuple[Int8Step, ...]) -> Job:
    """Run `steps` (some of STEPS, in order), each recorded under its name or skipped with the reason. The rules
    between them:
    - the tuning starts from the bias-corrected file; when it is kept it has trained every weight level, and the
      fitted rounding does not run (mobilenet_v2 ImageNet lands within 0.02 dB with or without it);
    - otherwise the fitted rounding starts from the file before the bias correction, which runs again after it
      (the per-layer route in that order: 0.7 dB more on shufflenet_v1_g1 than rounding after the correction)."""
    before_correction = None
    try:
        for step in steps:
            reason = _skip_reason(step, job)
            if step is FITTED_ROUNDING and reason is None and _tuning_kept(job):
                reason = "the int8 tuning was kept: it fitted the weight levels"
            if reason is not None:
                job = replace(job, skipped={**job.skipped, step.title: reason})
                continue
            if step is BIAS_CORRECTION and _skip_reason(FITTED_ROUNDING, job) is None:
                before_correction = job.int8_file.with_name(f".{job.int8_file.name}.before_correction")
                shutil.copyfile(job.int8_file, before_correction)
            if step is FITTED_ROUNDING and before_correction is not None:
                before_correction.replace(job.int8_file)
                before_correction = None
            job = _run(step, job, timer, step.title)
            if step is FITTED_ROUNDING and BIAS_CORRECTION.name in job.int8_summaries:
                job = _run(BIAS_CORRECTION, job, timer, f"{BIAS_CORRECTION.title} (after the fitted rounding)")
    finally:
        if before_correction is not None:
            before_correction.unlink(missing_ok=True)
    return job


def _run(step: Int8Step, job: Job, timer: StageTimer, title: str) -> Job:
    with timer.stage(title):
        summary, job = step.run(job)
    return replace(job, int8_summaries={**job.int8_summaries, step.name: summary})
