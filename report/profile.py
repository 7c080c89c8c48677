"""The profile section of the report, from profile.json data."""

from __future__ import annotations

from pathlib import Path

from mobile_vision_export.profiling.symbols import FAMILIES
from mobile_vision_export.report.html import Bar, bar_chart, scatter_chart

SECTION = "Profile"


def render_profile(data: dict) -> str:
    lines = [f"## {SECTION}", "", f"_{data['note']}._", ""]
    hosts = [(m["model"], h) for m in data["models"] for h in m["host"]]
    if hosts:
        lines += [
            "### Host (wall time, this machine's x86 CPU)",
            "",
            "| model | threads | median ms | p90 ms | min ms | RSS growth MiB | peak RSS MiB |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {name} | {h['threads']} | {h['median_ms']:.2f} | {h['p90_ms']:.2f} | {h['min_ms']:.2f} | "
            f"{h['rss_growth_mib']:.1f} | {h['peak_rss_mib']:.1f} |"
            for name, h in hosts
        ]
        lines.append("")
    arms = [(m["model"], a) for m in data["models"] for a in m["arm"]]
    if arms:
        lines += [
            "### ARM, emulated (instructions per inference, not milliseconds)",
            "",
            "| model | core | emulated instructions | repeat spread | " + " | ".join(FAMILIES) + " | core cycles "
            "(llvm-mca model, all loads in L1) | output vs x86 |",
            "|---|---|---:|---:|" + "---:|" * len(FAMILIES) + "---:|---|",
        ]
        for name, a in arms:
            total = a["instructions_per_inference"]
            shares = " | ".join(f"{a['families'][f] / total:.1%}" for f in FAMILIES)
            check = a["output_check"]
            verdict = (
                ("bit-exact" if check["rule"] == "bit-exact" else "within tolerance")
                if check["match"]
                else f"MISMATCH ({check['rule']})"
            )
            cycles = a.get("cycles")
            cycle_cell = f"{cycles['cycles'] / 1e6:.2f} M ({cycles['llvm_mca_model']})" if cycles else "-"
            lines.append(
                f"| {name} | {a['core']} | {total / 1e6:.2f} M | {a['spread']:.4%} | {shares} | {cycle_cell} | "
                f"{verdict} |"
            )
        for model, per_core in data["int8_over_fp32_instructions"].items():
            ratios = ", ".join(f"{core} {r:.2f}" for core, r in per_core.items())
            lines += ["", f"{model}: int8 / fp32 emulated instructions: {ratios}."]
        lines.append("")
    estimates = [(m["model"], e) for m in data["models"] for e in m.get("estimates", [])]
    if estimates:
        lines += [
            "### Estimated milliseconds on named devices (a cycle model, not a measurement)",
            "",
            f"_{data['estimate_note']}_",
            "",
            "| model | device | threads | estimated ms | measured ms | cycle model ms | of which DRAM ms | factor | "
            "cores | ms per G MACs |",
            "|---|---|---:|---:|---:|---:|---:|---|---|---:|",
        ]
        macs = {m["model"]: m.get("macs") for m in data["models"]}
        for name, e in estimates:
            measured = f"{e['measured_ms']:.1f}" if "measured_ms" in e else "-"
            per_gmac = f"{e['milliseconds'] / (macs[name] / 1e9):.1f}" if macs.get(name) else "-"
            lines.append(
                f"| {name} | {e['device']} | {e['threads']} | {e['milliseconds']:.1f} | {measured} | "
                f"{e['model_ms']:.1f} | {e['memory_ms']:.2f} | x{e['factor']:.2f} ({e['factor_from']}) | "
                f"{e['cores']} | {per_gmac} |"
            )
        lines.append("")
    devices = [(m["model"], m["device"]) for m in data["models"] if m["device"] is not None]
    if devices:
        lines += ["### Device (benchmark_model over adb)", ""]
        for name, d in devices:
            if d["status"] != "measured":
                lines.append(f"- {name}: {d['status']}")
                continue
            for r in d["runs"]:
                lines.append(
                    f"- {name} on {r['serial']}, {r['threads']} threads: {r['inference_avg_us'] / 1000:.2f} ms "
                    f"average (std {r.get('inference_std_us', float('nan')) / 1000:.2f} ms), init "
                    f"{r['init_us'] / 1000:.1f} ms, memory {r.get('memory_overall_mb', float('nan')):.1f} MB"
                )
        lines.append("")
    lines.append(f"Versions: {', '.join(f'{k} {v}' for k, v in data['versions'].items())}.")
    return "\n".join(lines) + "\n"


def profile_figures(data: dict) -> list[str]:
    """report.html's bars: the host median latency of each model per thread count, and the estimated milliseconds
    per device and thread count."""
    charts = []
    host = [
        Bar(f"{m['model']}, {h['threads']} thread(s)", h["median_ms"], f"{h['median_ms']:.2f} ms")
        for m in data["models"]
        for h in m["host"]
    ]
    if host:
        charts.append(bar_chart("Host median latency (this machine's x86 CPU)", host, max(b.value for b in host)))
    estimated = [
        Bar(f"{m['model']}, {e['device']}, {e['threads']} thread(s)", e["milliseconds"], f"{e['milliseconds']:.1f} ms")
        for m in data["models"]
        for e in m.get("estimates", [])
    ]
    if estimated:
        top = max(b.value for b in estimated)
        charts.append(bar_chart("Estimated milliseconds on named devices (cycle model)", estimated, top))
    for device, threads, points in _macs_and_milliseconds(data):
        title = f"Multiply-accumulates against estimated milliseconds, {device}, {threads} thread(s)"
        charts.append(scatter_chart(title, points, "MACs (millions)", "estimated ms"))
    return charts


def _macs_and_milliseconds(data: dict) -> list[tuple[str, int, list[tuple[str, float, float]]]]:
    """Per device and thread count with two models or more: each model's MACs (millions) and estimated ms. The
    same MACs can cost different times (memory traffic, element-wise ops, int8 against float kernels)."""
    series: dict[tuple[str, int], list[tuple[str, float, float]]] = {}
    for m in (m for m in data["models"] if "macs" in m):
        for e in m.get("estimates", []):
            point = (Path(m["model"]).stem, m["macs"] / 1e6, e["milliseconds"])
            series.setdefault((e["device"], e["threads"]), []).append(point)
    return [(device, threads, points) for (device, threads), points in series.items() if len(points) > 1]
