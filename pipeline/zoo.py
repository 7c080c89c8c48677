"""A batch of exports (python -m pipeline.export --all): in parallel processes if asked, one summary table."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import re
from pathlib import Path

from export.files import write_text_atomic
from pipeline.api import export_model
from pipeline.run import ExportResult
from pipeline.signals import sigterm_raises
from pipeline.staging import OutputError


def summary_row(result: ExportResult, mode: str) -> dict:
    summary = result.summaries.get(mode)
    row = next((r for r in result.rows if r.variant == mode), None)
    return {
        "model": result.name,
        "params": result.params,
        "macs": result.macs,
        "size_kib": round(summary.size_bytes / 1024) if summary else None,
        "ops": summary.op_count if summary else None,
        "transpose": summary.ops.get("TRANSPOSE", 0) if summary else None,
        "channel_shuffles": result.channel_shuffles,
        "sqnr_db": row.metrics.sqnr_db if row else None,
        "cosine": row.metrics.cosine_mean if row else None,
        "top1_agreement": row.metrics.top1_agreement if row else None,
        "parity": "pass" if result.passed else "FAIL",
        "seconds": round(sum(result.timings.values()), 1),
    }


def failed_row(name: str, error: str) -> dict:
    return {"model": name, "parity": "ERROR", "error": error}


def render_summary(rows: list[dict], mode: str) -> str:
    lines = [
        f"# Zoo export summary ({mode})",
        "",
        "| model | params | MACs (M) | size (KiB) | ops | TRANSPOSE | shuffles | SQNR dB | cosine | top-1 agree | parity | time (s) |",  # noqa: E501
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        if r["parity"] == "ERROR":
            lines.append(f"| {r['model']} | | | | | | | | | | ERROR: {r['error']} | |")
            continue
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['macs'] / 1e6:.0f} | {r['size_kib']} | {r['ops']} | "
            f"{r['transpose']} | {r['channel_shuffles']} | {r['sqnr_db']:.1f} | {r['cosine']:.4f} | "
            f"{r['top1_agreement']:.0%} | {r['parity']} | {r['seconds']} |"
        )
    return "\n".join(lines) + "\n"


def write_summary(out_root: Path, rows: list[dict], mode: str) -> Path:
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write to output folder {out_root}: {exc.strerror or exc}") from None
    write_text_atomic(out_root / "zoo_summary.json", json.dumps({"mode": mode, "models": rows}, indent=2) + "\n")
    path = out_root / "zoo_summary.md"
    write_text_atomic(path, render_summary(rows, mode))
    return path


_LOG_NAME = re.compile(r"[^\w.-]")  # characters a model string may hold that a file name should not


def _export(model: str, options: dict, mode: str) -> tuple[dict, Exception | None, bool]:
    try:
        result = export_model(model, **options)
        return summary_row(result, mode), None, result.passed
    except Exception as exc:  # one model's failure must not lose the others' summary
        return failed_row(model, str(exc)), exc, False


def _export_logged(task: tuple[str, dict, str, Path]) -> tuple[dict, Exception | None, bool]:
    """One export in a worker process, its console output kept apart in its own log file."""
    model, options, mode, log_path = task
    with open(log_path, "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        row, exc, passed = _export(model, options, mode)
        if exc is not None:
            print(f"error: {exc}", file=log)
    return row, exc, passed


def export_many(models: list[str], options: dict, mode: str, jobs: int = 1):
    """Export each of `models` with export_model(**options); yield (row, exception or None, passed) in the order
    of `models`. With jobs > 1 they run in that many processes, each export's output in OUT/<model>.log."""
    if jobs == 1:
        for model in models:
            yield _export(model, options, mode)
        return
    out = Path(options["out"])
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(model, options, mode, out / (_LOG_NAME.sub("_", Path(model).name) + ".log")) for model in models]
    pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=sigterm_raises, maxtasksperchild=1)
    try:
        yield from pool.imap(_export_logged, tasks)
        pool.close()
    except BaseException:
        pool.terminate()  # SIGTERM to the workers: each stops its converter and removes its partial folder
        raise
    finally:
        pool.join()
