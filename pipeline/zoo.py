"""A batch of exports (python -m pipeline.export --all): in parallel processes if asked, one summary table; and
`python -m pipeline.zoo DIR...`, the same table merged from exports made apart (one CI job per model)."""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import sys
from pathlib import Path

from mobile_vision_export.errors import UserError
from mobile_vision_export.export.files import write_text_atomic
from mobile_vision_export.export.threads import batch_environment
from mobile_vision_export.models import get_spec, list_models
from mobile_vision_export.models.complexity import count_parameters
from mobile_vision_export.pipeline.api import export_model
from mobile_vision_export.pipeline.cli import Parser, add_common_flags, prog_name
from mobile_vision_export.pipeline.partial_dir import OutputError
from mobile_vision_export.pipeline.signals import sigterm_raises
from mobile_vision_export.report.parity import format_sqnr


def summary_row(record: dict, mode: str) -> dict:
    """One model's row of the summary, from its parity.json."""
    variant = record.get("variants", {}).get(mode)
    row = next((r for r in record["parity"] if r["variant"] == mode), None)
    model = record["model"]
    return {
        "model": model["name"],
        "params": model["params"],
        "macs": model["macs"],
        "size_kib": round(variant["size_bytes"] / 1024) if variant else None,
        "ops": variant["ops"] if variant else None,
        "transpose": variant["transpose"] if variant else None,
        "channel_shuffles": model.get("channel_shuffles"),
        "sqnr_db": row["metrics"]["sqnr_db"] if row else None,
        "cosine": row["metrics"]["cosine_mean"] if row else None,
        "top1_agreement": row["metrics"]["top1_agreement"] if row else None,
        "parity": "pass" if record["passed"] else "FAIL",
        "seconds": round(sum(record.get("timings_s", {}).values()), 1),
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
            f"{r['transpose']} | {r['channel_shuffles']} | {format_sqnr(r['sqnr_db'])} | {r['cosine']:.4f} | "
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
        record = json.loads((result.out_dir / "parity.json").read_text())
        return summary_row(record, mode), None, result.passed
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


def _expected_cost(model: str) -> int:
    """A registered model's parameters times its input pixels, what its export time grows with; 0 for others (and
    for a model that cannot be built: its export reports why)."""
    if model not in list_models():
        return 0
    spec = get_spec(model)
    try:
        return count_parameters(spec.builder()) * spec.input_size**2
    except Exception:
        return 0


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """os.environ with `values` set, for the processes started meanwhile; restored afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def export_many(models: list[str], options: dict, mode: str, jobs: int = 1):
    """Export each of `models` with export_model(**options); yield (row, exception or None, passed) in the order
    of `models`. With jobs > 1 they run in that many processes, each with its share of the cores' threads and its
    output in OUT/<model>.log, the costliest started first so that no long export is left running alone at the end
    (xception: 11 minutes)."""
    if jobs == 1:
        for model in models:
            yield _export(model, options, mode)
        return
    out = Path(options["out"])
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(model, options, mode, out / (_LOG_NAME.sub("_", Path(model).name) + ".log")) for model in models]
    costliest_first = sorted(range(len(tasks)), key=lambda i: -_expected_cost(models[i]))
    with _environment(batch_environment(jobs)):  # workers start throughout (one per export)
        pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=sigterm_raises, maxtasksperchild=1)
        try:
            pending = {i: pool.apply_async(_export_logged, (tasks[i],)) for i in costliest_first}
            for i in range(len(tasks)):
                yield pending[i].get()
            pool.close()
        except BaseException:
            pool.terminate()  # SIGTERM to the workers: each stops its converter and removes its partial folder
            raise
        finally:
            pool.join()


def merge(dirs: list[Path], out: Path, mode: str) -> tuple[Path, list[dict]]:
    """One summary from the <model>/parity.json of exports made elsewhere (one CI job per model, say)."""
    records = [json.loads(p.read_text()) for d in dirs for p in sorted(d.glob("*/parity.json"))]
    if not records:
        raise OutputError(f"no <model>/parity.json under {', '.join(map(str, dirs))}: nothing to merge")
    order = {name: i for i, name in enumerate(list_models())}
    rows = sorted((summary_row(r, mode) for r in records), key=lambda row: order.get(row["model"], len(order)))
    return write_summary(out, rows, mode), rows


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=prog_name("python -m pipeline.zoo"),
        description="Merge exports' parity.json into zoo_summary.md and .json.",
    )
    add_common_flags(p)
    p.add_argument("dirs", nargs="+", type=Path, help="folders holding <model>/parity.json")
    p.add_argument("--out", type=Path, required=True, help="where zoo_summary.md and .json go")
    p.add_argument("--quant", default="int8", help="the variant the table shows (default: int8)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path, rows = merge(args.dirs, args.out, args.quant)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path.read_text(), end="")
    return 0 if all(r["parity"] == "pass" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
