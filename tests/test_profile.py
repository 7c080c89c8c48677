"""Profiling: host latency, emulated ARM instruction counts (real qemu, real aarch64 LiteRT), device output parsing."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mobile_vision_export.errors import UserError
from mobile_vision_export.pipeline.profile import main as profile_main
from mobile_vision_export.profiling.arm_setup import EMULATED_LITERT
from mobile_vision_export.profiling.cores import CORES, UnknownCoreError, parse_cores
from mobile_vision_export.profiling.corrections import CorrectionsError, correction, record
from mobile_vision_export.profiling.cycles import Block, CycleCount, count_cycles, find_llvm
from mobile_vision_export.profiling.device import DeviceError, parse_benchmark_output
from mobile_vision_export.profiling.devices import Cluster, Device, UnknownDeviceError, parse_devices
from mobile_vision_export.profiling.emulated import find_environment, read_windows, run_guest
from mobile_vision_export.profiling.estimate import calibration, estimate
from mobile_vision_export.profiling.run import compare_outputs
from mobile_vision_export.profiling.symbols import FAMILIES, executable_mappings, family_of
from mobile_vision_export.profiling.traffic import CacheTraffic
from mobile_vision_export.report.document import Report, read_report
from mobile_vision_export.report.profile import profile_figures
from tests.conftest import ROOT, error_lines


def test_benchmark_model_output_is_parsed():
    text = (ROOT / "tests" / "data" / "benchmark_model_output.txt").read_text()
    parsed = parse_benchmark_output(text)
    assert parsed["init_us"] == 21734 and parsed["first_inference_us"] == 9871
    assert parsed["inference_avg_us"] == 4736.46 and parsed["warmup_avg_us"] == 4853.22
    assert parsed["runs"] == 211 and parsed["inference_std_us"] == 96  # the timed block, not the warm-up block
    assert parsed["memory_overall_mb"] == 9.51562
    with pytest.raises(DeviceError, match="no 'Inference timings in us' line"):
        parse_benchmark_output("ERROR: Could not open model\n")


def test_core_names_and_kernel_families():
    assert [c.qemu_cpu for c in parse_cores("a53,A76")] == ["cortex-a53", "cortex-a76"]
    with pytest.raises(UnknownCoreError, match="unknown ARM core 'a78': choose from a53, a55, a57, a72, a73, a75, a76"):
        parse_cores("a53,a78")
    assert family_of("xnn_qs8_qc8w_igemm_minmax_fp32_ukernel_4x16c4__asm_aarch64_neondot_ld128") == "convolution/GEMM"
    assert family_of("xnn_qs8_qc8w_dwconv_minmax_fp32_ukernel_9p16c__neonv8_mla8_ld64") == "depthwise"
    assert family_of("xnn_x8_transposec_ukernel__16x16_reuse_dec_zip_neon") == "transpose/reshape/copy"
    assert family_of("xnn_s8_maxpool_minmax_ukernel_9p8x__neon_c16") == "pooling"
    assert family_of("PyEval_EvalFrameDefault") == "other"
    maps = (
        "5500000000-5500001000 r-xp 00001000 fe:00 1 /lib/libfoo.so\n"
        "5500001000-5500002000 rw-p 00000000 00:00 0 [heap]\n"
    )
    assert [(m.start, m.path) for m in executable_mappings(maps)] == [(0x5500000000, "/lib/libfoo.so")]


def test_arm_outputs_are_compared_by_what_the_kernels_guarantee():
    rng = np.random.default_rng(0)
    x86 = rng.normal(size=1000).astype(np.float32)
    codes = np.arange(10, dtype=np.int8)
    assert compare_outputs(codes, codes.copy())["match"] and not compare_outputs(codes, codes + 1)["match"]
    assert compare_outputs(x86 + 1e-5, x86)["match"] and not compare_outputs(x86 + 1e-2, x86)["match"]
    nearby = x86 + 0.03 * rng.normal(size=1000).astype(np.float32)  # 30 dB: activations quantized another way
    assert compare_outputs(nearby, x86, dynamic_range=True)["match"]
    assert not compare_outputs(rng.permutation(x86), x86, dynamic_range=True)["match"]  # another function


def test_profile_bad_input(tmp_path, capsys):
    not_model = tmp_path / "model.tflite"
    not_model.write_text("not a flatbuffer")
    assert profile_main([str(not_model)]) == 2
    assert "not a TFLite model" in error_lines(capsys.readouterr().err)[0]
    assert profile_main([str(tmp_path / "absent.tflite")]) == 2
    assert "model not found" in error_lines(capsys.readouterr().err)[0]


@pytest.fixture(scope="module")
def arm_cache(tmp_path_factory):
    """The ARM set-up, made (or reused) by its own one command."""
    cache = Path.home() / ".cache" / "mobile-vision-export" / "arm"
    proc = subprocess.run(
        [sys.executable, "-m", "mobile_vision_export.pipeline.arm_setup", "--cache", str(cache)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return cache


@pytest.mark.slow
def test_export_profile_flag_profiles_every_variant(shufflenet_variants):
    data = json.loads((shufflenet_variants / "profile.json").read_text())
    assert [m["model"] for m in data["models"]] == [
        f"shufflenet_v2_x0_5_{v}.tflite" for v in ("fp32", "fp16", "dynamic", "int8")
    ]
    assert all(len(m["host"]) == 2 and m["arm"] == [] for m in data["models"])
    report = (shufflenet_variants / "report.md").read_text()
    assert "## Parity" in report and "### Host (wall time, this machine's x86 CPU)" in report
    page = (shufflenet_variants / "report.html").read_text()  # rendered from the same record as report.md
    assert "<h2>Parity</h2>" in page and "<h3>Host (wall time, this machine's x86 CPU)</h3>" in page
    assert "Host median latency" in page  # the profile's figure


def test_a_later_section_is_rendered_into_both_report_files(tmp_path):
    Report("# m\n\n## Parity\n\nok\n\n## Versions\n\n- x: 1\n", {"Parity": ["<p>bars</p>"]}).write(tmp_path)
    for text in ("first", "second"):  # profiling again replaces the section
        read_report(tmp_path).with_section("Profile", f"## Profile\n\n{text} run\n", ["<p>fig</p>"]).write(tmp_path)
    markdown, page = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    assert markdown.count("## Profile") == 1 and "second run" in markdown and "first run" not in markdown
    assert "<h2>Profile</h2>" in page and "second run" in page and "first run" not in page
    assert page.count("<p>fig</p>") == 1 and "<p>bars</p>" in page and "<h2>Versions</h2>" in page
    (tmp_path / "report.json").unlink()  # an export made before the record: its report.html keeps its figures
    read_report(tmp_path).with_section("Profile", "## Profile\n\nthird run\n").write(tmp_path)
    assert "third run" in (tmp_path / "report.md").read_text() and (tmp_path / "report.html").read_text() == page
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(UserError, match="report.json is damaged"):
        read_report(tmp_path)


@pytest.mark.slow
def test_missing_arm_setup_names_the_fix(tmp_path, capsys, shufflenet_variants):
    model = shufflenet_variants / "shufflenet_v2_x0_5_int8.tflite"
    assert (
        profile_main([str(model), "--arm", "a53", "--arm-cache", str(tmp_path / "empty"), "--out", str(tmp_path)]) == 2
    )
    line = error_lines(capsys.readouterr().err)[0]
    assert "ARM emulation is not set up" in line and "mve-arm-setup" in line


@pytest.mark.slow
def test_emulated_arm_profile_is_exact_and_repeatable(tmp_path, arm_cache, shufflenet_variants):
    models = [shufflenet_variants / f"shufflenet_v2_x0_5_{v}.tflite" for v in ("fp32", "int8", "dynamic")]
    code = profile_main(
        [
            *map(str, models),
            "--host",
            "--arm",
            "a53,a76",
            "--runs",
            "5",
            "--warmups",
            "2",
            "--arm-cache",
            str(arm_cache),
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    data = json.loads((tmp_path / "profile.json").read_text())
    fp32, int8, dynamic = data["models"]
    for arm in dynamic["arm"]:  # its layers quantize activations per inference: ARM and x86 may round apart
        assert arm["output_check"]["match"] and "SQNR" in arm["output_check"]["rule"], arm["output_check"]
    for model in (fp32, int8):
        assert [h["threads"] for h in model["host"]] == [1, 2] and model["host"][0]["median_ms"] > 0
        for arm in model["arm"]:
            assert arm["output_check"]["match"], arm["output_check"]
            assert arm["spread"] < 0.001  # repeatable to within 0.1 %
            total = arm["instructions_per_inference"]
            assert arm["families"]["convolution/GEMM"] > total / 2  # the convolutions dominate
            assert arm["families"]["transpose/reshape/copy"] > 0  # the shuffles' transposes are found and named
    assert all(a["output_check"]["rule"] == "bit-exact" for a in int8["arm"])
    a53, a76 = int8["arm"]
    assert a53["instructions_per_inference"] > a76["instructions_per_inference"]  # no dot-product kernels on A53
    assert any("neondot" in name for name, _ in a76["top_symbols"])
    assert not any("neondot" in name for name, _ in a53["top_symbols"])
    ratios = data["int8_over_fp32_instructions"]["shufflenet_v2_x0_5"]
    assert set(ratios) == {"a53", "a76"} and all(0 < r < 1 for r in ratios.values())
    assert "### ARM, emulated (instructions per inference, not milliseconds)" in (tmp_path / "report.md").read_text()
    # the LiteRT release apps ship (the Android demo's), whatever the host pins; int8 stays bit-exact across the two
    assert data["versions"]["ai-edge-litert (emulated ARM runs)"] == EMULATED_LITERT


@pytest.mark.slow
def test_adb_without_a_device_measures_nothing(tmp_path, capsys, shufflenet_variants):
    model = shufflenet_variants / "shufflenet_v2_x0_5_int8.tflite"
    missing = tmp_path / "benchmark_model"
    assert profile_main([str(model), "--adb", "--benchmark-binary", str(missing), "--out", str(tmp_path)]) == 2
    assert f"benchmark binary not found: {missing}" in error_lines(capsys.readouterr().err)[0]
    code = profile_main([str(model), "--adb", "--out", str(tmp_path)])
    if shutil.which("adb") is None:
        assert code == 2 and "adb not found: install it with 'apt-get install adb'" in capsys.readouterr().err
        return
    assert code == 0
    device = json.loads((tmp_path / "profile.json").read_text())["models"][0]["device"]
    assert device == {"status": "not measured: no Android device attached"}


def _encode(asm: str, llvm) -> tuple[int, ...]:
    """Instruction words of aarch64 assembly, by llvm-mc."""
    proc = llvm.run("llvm-mc", ["-triple=aarch64", "--show-encoding"], asm)
    return tuple(
        int.from_bytes(bytes(int(b, 16) for b in enc.split(",")), "little")
        for enc in re.findall(r"encoding: \[([^\]]+)\]", proc.stdout)
    )


@pytest.mark.slow
def test_cycle_model_on_hand_written_kernels(arm_cache):
    """Loops whose cycles the Neoverse N1 (Cortex-A76) optimization guide fixes: FMLA (vector) has latency 4 and
    two pipelines. Eight independent FMLAs take 4 cycles an iteration, a chain of four dependent ones 16."""
    llvm = find_llvm(arm_cache)
    independent = "".join(f"fmla v{i}.4s, v8.4s, v9.4s\n" for i in range(8))
    chain = "".join(f"fmla v0.4s, v{i}.4s, v{i + 1}.4s\n" for i in range(8, 16, 2))
    blocks = [
        Block(0x1000, 8, 1000, "lib!xnn_f32_gemm_kernel", _encode(independent, llvm)),
        Block(0x2000, 4, 10, "lib!xnn_f32_dwconv_kernel", _encode(chain, llvm)),
        Block(0x3000, 5, 7, "[unmapped]", None),  # code that could not be read: at the others' cycles/instruction
    ]
    count = count_cycles(blocks, "neoverse-n1", llvm)
    assert count.families["convolution/GEMM"] == pytest.approx(4 * 1000)
    assert count.families["depthwise"] == pytest.approx(16 * 10)
    simulated_cpi = (4 * 1000 + 16 * 10) / (8 * 1000 + 4 * 10)
    assert count.families["other"] == pytest.approx(5 * 7 * simulated_cpi)
    assert count.instructions == 8 * 1000 + 4 * 10 + 5 * 7 and count.blocks == 2
    # in-order cores: the busiest execution resource (the A53's one FP multiply pipeline: 8 cycles for 8 FMLAs)
    assert count_cycles(blocks[:1], "cortex-a53", llvm, in_order=True).cycles == pytest.approx(8 * 1000)


def test_estimate_splits_kernels_over_threads_and_bounds_them_by_dram():
    device = Device(
        "test-phone",
        "two fast cores, two slow ones",
        (Cluster("a76", 2, 2.0), Cluster("a55", 2, 1.0)),
        last_level_cache_mb=1.0,
        dram_gb_per_s=1.0,
        sources=("a test",),
    )
    fast = CycleCount(
        "neoverse-n1", 0, 0, {**dict.fromkeys(FAMILIES, 0.0), "convolution/GEMM": 4e6, "other": 2e6}, 1, 1
    )
    slow = CycleCount("cortex-a55", 0, 0, {**dict.fromkeys(FAMILIES, 0.0), "convolution/GEMM": 8e6, "other": 4e6}, 1, 1)
    cycles = {"a76": fast, "a55": slow}
    mib = 2**20
    sizes = [mib // 4, mib // 2, mib]

    def traffic(gemm_bytes: list[int]) -> dict[str, CacheTraffic]:
        families = {f: [0, 0, 0] for f in FAMILIES}
        return {"a76": CacheTraffic(sizes, {**families, "convolution/GEMM": gemm_bytes})}

    small = traffic([4000, 2000, 1000])  # a little traffic at every cache size
    one = estimate(device, cycles, small, 1)
    assert one.milliseconds == pytest.approx((4e6 + 2e6) / 2e9 * 1e3) and one.cores == "1x a76 @ 2 GHz"
    four = estimate(device, cycles, small, 4)  # GEMM over 2 fast + 2 slow cores at their own rates; "other" on one
    assert four.milliseconds == pytest.approx((1 / (2 * 2e9 / 4e6 + 2 * 1e9 / 8e6) + 2e6 / 2e9) * 1e3)
    assert four.cores == "2x a76 @ 2 GHz + 2x a55 @ 1 GHz"
    # 8 MiB missed in a 256 KiB cache: with 4 threads each has a quarter of the 1 MiB cache, and DRAM at 1 GB/s
    # takes longer than the compute; one thread keeps the whole cache and stays compute-bound
    spilling = traffic([8 * mib, 4 * mib, 1000])
    assert estimate(device, cycles, spilling, 1).bound["convolution/GEMM"] == "compute"
    bound = estimate(device, cycles, spilling, 4)
    assert bound.bound["convolution/GEMM"] == "memory"
    assert bound.milliseconds == pytest.approx((8 * mib / 1e9 + 2e6 / 2e9) * 1e3)
    assert estimate(device, cycles, spilling, 4, factor=1.5).milliseconds == pytest.approx(1.5 * bound.milliseconds)
    # each thread beyond the first adds its share of the time: 3 more threads at 10 % each, none for one thread
    assert estimate(device, cycles, small, 4, overhead=0.1).milliseconds == pytest.approx(1.3 * four.milliseconds)
    assert estimate(device, cycles, small, 1, overhead=0.1).milliseconds == pytest.approx(one.milliseconds)
    with pytest.raises(UnknownDeviceError, match="unknown device 'pixel-1': choose from pixel-4"):
        parse_devices("pixel-4,pixel-1")


GUEST_STREAM = """
import ctypes, sys
import numpy as np
libc = ctypes.CDLL(None)
data = np.ones(2**20 // 8)  # 1 MiB, read whole by sum()
data.sum()
for _ in range(2):
    libc.syscall(0x4D56)
    data.sum()
    libc.syscall(0x4D57)
"""


@pytest.mark.slow
def test_cache_simulation_counts_the_lines_a_known_stream_misses(tmp_path, arm_cache):
    """Reading the same 1 MiB again: every one of its 16384 lines misses in a cache smaller than 1 MiB (LRU evicts
    each line before its reuse) and almost none does in a 2 or 4 MiB cache."""
    script = tmp_path / "stream.py"
    script.write_text(GUEST_STREAM)
    counts = tmp_path / "counts.txt"
    proc = run_guest(find_environment(arm_cache), CORES["a76"], script, [], counts, True, 600)
    assert proc.returncode == 0, proc.stderr[-1000:]
    sizes, windows = read_windows(counts.read_text())
    assert sizes == [2**17, 2**18, 2**19, 2**20, 2**21, 2**22] and len(windows) == 2
    missed = [sum(m[i] for m in windows[-1].misses.values()) for i in range(len(sizes))]
    lines = 2**20 // 64
    assert all(lines <= m <= lines * 1.05 for m in missed[:3]), missed
    assert all(m < lines * 0.05 for m in missed[4:]), missed


@pytest.mark.slow
def test_device_estimate_in_milliseconds(tmp_path, capsys, monkeypatch, arm_cache, shufflenet_variants):
    monkeypatch.setenv("MVE_DEVICE_CORRECTIONS", str(tmp_path / "corrections.json"))
    model = shufflenet_variants / "shufflenet_v2_x0_5_int8.tflite"
    args = [str(model), "--device", "pixel-4", "--arm-runs", "1", "--arm-cache", str(arm_cache), "--out", str(tmp_path)]
    assert profile_main(args) == 0
    printed = capsys.readouterr().out
    assert "### Estimated milliseconds on named devices (a cycle model, not a measurement)" in printed
    assert "fitted on the others" in printed  # every estimate carries its measured error
    data = json.loads((tmp_path / "profile.json").read_text())
    (result,) = data["models"]
    assert [a["core"] for a in result["arm"]] == ["a76"]  # 4 threads run on the Pixel 4's four A76 cores
    for arm in result["arm"]:
        assert arm["cycles"]["llvm_mca_model"] == "neoverse-n1" and arm["cycles"]["cycles"] > 0
        traffic = arm["cache_traffic"]["families"]["convolution/GEMM"]
        assert traffic[0] > traffic[-1] > 0  # a 128 KiB cache misses more than a 4 MiB one
    one, four = result["estimates"]
    assert (one["threads"], four["threads"]) == (1, 4) and 0 < four["milliseconds"] < one["milliseconds"] < 100
    assert one["milliseconds"] == pytest.approx(one["model_ms"] * calibration()) and one["factor_from"] == "published"
    assert one["cores"] == "1x a76 @ 2.84 GHz" and four["cores"] == "1x a76 @ 2.84 GHz + 3x a76 @ 2.42 GHz"
    assert "Estimated milliseconds on named devices" in (tmp_path / "report.html").read_text()
    assert 35e6 < result["macs"] < 50e6  # ShuffleNet V2 0.5x: 41 M multiply-accumulates per 224 px image
    assert f"| {one['milliseconds'] / (result['macs'] / 1e9):.1f} |" in printed  # ms per G MACs
    # your own measurement of that phone replaces the published calibration for it
    measured = 2 * one["model_ms"]
    assert profile_main([*args, "--estimate-threads", "1", "--measured", f"1:{measured}"]) == 0
    assert f"| {measured:.1f} |" in capsys.readouterr().out
    (mine,) = json.loads((tmp_path / "profile.json").read_text())["models"][0]["estimates"]
    # two emulated runs' cycle counts agree to within a few parts per million, not exactly
    assert mine["factor"] == pytest.approx(2.0, rel=1e-3) and mine["factor_from"] == "your 1 measurement(s)"
    assert mine["milliseconds"] == pytest.approx(measured, rel=1e-3) and mine["measured_ms"] == measured
    assert profile_main([str(model), "--device", "pixel-4,pixel-3", "--measured", "1:5"]) == 2
    assert "--measured goes with one --device and one model" in error_lines(capsys.readouterr().err)[0]
    assert profile_main([str(model), "--device", "pixel-9"]) == 2
    assert "unknown device 'pixel-9': choose from pixel-4" in error_lines(capsys.readouterr().err)[0]


def test_stored_measurements_make_the_device_correction(tmp_path):
    path = tmp_path / "corrections.json"
    assert correction("pixel-4", path) is None
    record("pixel-4", [{"model": "a", "sha256": "1", "threads": 1, "measured_ms": 20.0, "model_ms": 10.0}], path)
    record("pixel-4", [{"model": "a", "sha256": "1", "threads": 4, "measured_ms": 4.0, "model_ms": 4.0}], path)
    assert correction("pixel-4", path) == (pytest.approx(2**0.5), 2)  # geometric mean of 2.0 and 1.0
    record("pixel-4", [{"model": "a", "sha256": "1", "threads": 4, "measured_ms": 8.0, "model_ms": 4.0}], path)
    assert correction("pixel-4", path) == (pytest.approx(2.0), 2)  # the newer measurement replaced the older
    assert correction("pixel-3", path) is None
    with pytest.raises(CorrectionsError, match="must be positive"):
        record("pixel-4", [{"model": "a", "sha256": "2", "threads": 1, "measured_ms": 0.0, "model_ms": 1.0}], path)
    path.write_text("{not json")
    with pytest.raises(CorrectionsError, match="is damaged: delete it"):
        correction("pixel-4", path)


def test_macs_against_milliseconds_is_drawn_per_device_for_several_models():
    """The FLOPs-are-not-speed chart: one point per model at its MACs and estimated ms, per device and threads."""
    estimate = {"device": "pixel-4", "threads": 1, "milliseconds": 5.0}
    data = {
        "models": [
            {"model": "a.tflite", "macs": 300e6, "host": [], "estimates": [{**estimate, "milliseconds": 10.0}]},
            {"model": "b.tflite", "macs": 40e6, "host": [], "estimates": [{**estimate, "milliseconds": 4.0}]},
            {
                "model": "c.tflite",
                "macs": 40e6,
                "host": [],
                "estimates": [{**estimate, "device": "pixel-3", "milliseconds": 5.0}],
            },
        ]
    }
    charts = [c for c in profile_figures(data) if "Multiply-accumulates" in c]
    assert len(charts) == 1 and "pixel-4, 1 thread(s)" in charts[0]  # pixel-3 has one model: no chart
    assert charts[0].count("<circle") == 2 and ">a<" in charts[0] and "MACs (millions) (0 to 300)" in charts[0]
    assert 'text-anchor="end">a<' in charts[0] and 'text-anchor="start">b<' in charts[0]  # labels stay inside
