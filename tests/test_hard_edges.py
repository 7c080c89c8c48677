"""Edges users hit: 16-bit photos, absurd input sizes, interrupted exports, racing exports, odd checkpoints,
factories that return random weights."""

import io
import logging
import os
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image
from torch import nn

from mobile_vision_export.export.images import ImageDataError, Photo, calibration_batch, load_rgb, photos_in_dir
from mobile_vision_export.models.weights import WeightsError, read_state_dict
from mobile_vision_export.pipeline.export import EXIT_USER_ERROR, main
from mobile_vision_export.pipeline.sources import from_factory

from .conftest import ROOT, error_lines
from .data.tiny_model import TinyNet


def _fails(capsys, tmp_path, *argv: str) -> str:
    """Run the export CLI in-process; it must refuse with exit 2, one `error:` line and no artifact folder."""
    code = main([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    errors = error_lines(err)
    assert code == EXIT_USER_ERROR, err
    assert len(errors) == 1, err
    out = tmp_path / "out"
    assert not out.exists() or not [p for p in out.iterdir() if p.is_dir()], "an artifact folder was left behind"
    return errors[0]


# 1. Image modes ------------------------------------------------------------------------------------------------


def _png(width: int, height: int, bit_depth: int, color_type: int, pixels: np.ndarray) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB): big-endian samples, filter 0 on every row."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


GRADIENT = np.tile(np.arange(256, dtype=np.uint8), (24, 1))  # 24 x 256, 0..255 left to right


def test_16_bit_grayscale_png_keeps_its_gradient(tmp_path):
    Image.fromarray(GRADIENT).save(tmp_path / "gray8.png")
    Image.fromarray(GRADIENT.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    with Image.open(tmp_path / "gray16.png") as img:
        assert img.mode == "I;16"  # how Pillow opens it; convert("RGB") clips every value above 255 to white
    assert [p.path.name for p in photos_in_dir(tmp_path)] == ["gray16.png", "gray8.png"]
    sixteen, eight = (np.asarray(load_rgb(tmp_path / n), np.int32) for n in ("gray16.png", "gray8.png"))
    assert sixteen.shape == eight.shape == (24, 256, 3)
    assert len(np.unique(sixteen)) > 200, "the 16-bit gradient collapsed"
    assert np.abs(sixteen - eight).max() <= 1
    # The calibration crops are built from the same loader.
    crops16 = calibration_batch([Photo(tmp_path / "gray16.png")], 16, 3)
    crops8 = calibration_batch([Photo(tmp_path / "gray8.png")], 16, 3)
    assert np.abs(crops16 - crops8).max() <= 1 / 255 + 1e-6
    assert crops16.mean() == pytest.approx(crops8.mean(), abs=1 / 255)


def test_every_image_mode_becomes_the_same_8_bit_rgb(tmp_path):
    rgb8 = np.stack([GRADIENT, GRADIENT[:, ::-1], np.full_like(GRADIENT, 18)], -1)
    wide = rgb8.astype(">u2") * 257
    # 16 bits per channel: Pillow 13 opens these as RGB / RGBA holding the high byte, which is exact for v * 257.
    (tmp_path / "rgb48.png").write_bytes(_png(256, 24, 16, 2, wide))
    opaque = np.full((24, 256, 1), 65535, ">u2")
    (tmp_path / "rgba64.png").write_bytes(_png(256, 24, 16, 6, np.concatenate([wide, opaque], -1)))
    gray = np.repeat(GRADIENT[..., None], 3, -1)
    Image.frombytes("I;16B", (256, 24), (GRADIENT.astype(">u2") * 257).tobytes()).save(tmp_path / "gray16b.tif")
    Image.fromarray(GRADIENT.astype(np.int32) * 257).save(tmp_path / "gray_i.tif")  # mode I, 32-bit TIFF
    pgm = b"P5\n256 24\n65535\n" + (GRADIENT.astype(">u2") * 257).tobytes()
    (tmp_path / "gray16.pgm").write_bytes(pgm)  # Pillow: mode I
    Image.fromarray(GRADIENT.astype(np.float32) / 255).save(tmp_path / "gray_f.tif")  # mode F, 0..1
    Image.fromarray(rgb8).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(GRADIENT).convert("LA").save(tmp_path / "la.png")
    Image.fromarray(rgb8).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb8).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    Image.fromarray(GRADIENT > 127).save(tmp_path / "bilevel.png")
    transparent = Image.fromarray(rgb8).convert("P")
    transparent.info["transparency"] = bytes([0] + [255] * 255)
    transparent.save(tmp_path / "palette_alpha.png")
    expected = {
        "rgb48.png": rgb8,
        "rgba64.png": rgb8,
        "gray16b.tif": gray,
        "gray_i.tif": gray,
        "gray16.pgm": gray,
        "gray_f.tif": gray,
        "palette.png": np.asarray(Image.fromarray(rgb8).convert("P").convert("RGB")),
        "la.png": gray,
        "rgba.png": rgb8,
        "bilevel.png": np.repeat(np.where(GRADIENT > 127, 255, 0).astype(np.uint8)[..., None], 3, -1),
        "palette_alpha.png": np.asarray(Image.fromarray(rgb8).convert("P").convert("RGB")),  # alpha dropped
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Pillow's "Palette images with Transparency ..." must not appear
        for name, want in expected.items():
            img = load_rgb(tmp_path / name)
            assert img.mode == "RGB" and img.size == (256, 24), name
            assert np.abs(np.asarray(img, np.int32) - want).max() <= 1, name
        cmyk = np.asarray(load_rgb(tmp_path / "cmyk.jpg"), np.int32)
        assert np.abs(cmyk - rgb8).mean() < 4  # JPEG is lossy


def test_integer_and_float_pixels_without_a_white_level_are_refused_by_name(tmp_path, caplog):
    Image.fromarray(np.full((8, 8), 2.5, np.float32)).save(tmp_path / "hdr.tif")
    Image.fromarray(np.full((8, 8), 1 << 20, np.int32)).save(tmp_path / "deep.tif")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    hdr = r"hdr\.tif: floating-point pixels \(mode F, values 2\.5\.\.2\.5\) are not within 0\.\.1"
    with pytest.raises(ImageDataError, match=hdr):
        load_rgb(tmp_path / "hdr.tif")
    deep = r"deep\.tif: 32-bit integer pixels \(mode I, values 1048576\.\.1048576\) do not fit 16 bits"
    with pytest.raises(ImageDataError, match=deep):
        load_rgb(tmp_path / "deep.tif")
    with caplog.at_level(logging.WARNING):
        assert [p.path.name for p in photos_in_dir(tmp_path)] == ["ok.png"]
    assert "hdr.tif" in caplog.text and "mode F" in caplog.text and "deep.tif" in caplog.text


# 2. Input size bound -------------------------------------------------------------------------------------------


def test_input_size_has_an_upper_bound(capsys, tmp_path, tiny_model):
    line = _fails(capsys, tmp_path, "--model", f"{tiny_model}:build", "--input-size", "100000")
    assert "--input-size 100000" in line and "at most 1024" in line
    assert "at most 1024" in _fails(capsys, tmp_path, "--model", f"{tiny_model}:build", "--input-size", "1025")
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4096, 4096])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4096, 4096])],
    )
    path = tmp_path / "huge.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    line = _fails(capsys, tmp_path, "--onnx", str(path))
    assert "4096" in line and "at most 1024" in line


# 3. Interrupted export -----------------------------------------------------------------------------------------


def _processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, command line) of every process visible in /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(fields[1]), fields[0], cmdline)
    return table


def _onnx2tf_under(root: int) -> list[int]:
    table = _processes()

    def descends(pid: int) -> bool:
        for _ in range(64):
            if pid == root:
                return True
            if pid not in table or pid <= 1:
                return False
            pid = table[pid][0]
        return False

    return [pid for pid, (_, _, cmd) in table.items() if "onnx2tf" in cmd and pid != root and descends(pid)]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_export_stops_the_converter_and_leaves_nothing(tmp_path, tiny_model, signum):
    env = dict(  # as conftest.run_cli: the network guard on, the project imported as installed
        os.environ,
        PYTHONPATH=str(ROOT / "tests" / "netguard"),
        NETGUARD_LOG=str(tmp_path / "network_attempts.log"),
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline.export", "--model", f"{tiny_model}:build", "--input-size", "32"]
    cli = subprocess.Popen(
        [*cmd, "--quant", "int8", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # Ctrl-C from a terminal: a runner started with nohup or '&' hands SIGINT down ignored, and the export keeps a
        # signal it was started ignoring ignored (pipeline.signals)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    converters: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while not converters and cli.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            converters = _onnx2tf_under(cli.pid)
        assert converters, "onnx2tf never started"
        if signum == signal.SIGINT:
            os.killpg(cli.pid, signum)  # Ctrl-C: the terminal signals the whole foreground group
        else:
            cli.send_signal(signum)  # `timeout` and CI cancellation signal the process itself
        _, err = cli.communicate(timeout=60)
        assert cli.returncode == 128 + signum, err
        assert "Traceback" not in err, err
        errors = error_lines(err)
        assert len(errors) == 1 and signal.Signals(signum).name in errors[0], err
        assert "has random weights" in err  # the console warning for a factory without --weights
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in converters) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in converters), "onnx2tf kept running after the export was stopped"
        left = sorted(p.name for p in out.iterdir()) if out.exists() else []
        assert left == [], left  # no partial folder, and no converter log of a conversion that was only stopped
    finally:
        for pid in [cli.pid, *converters]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        cli.wait(timeout=10)


# 4. Racing exports ---------------------------------------------------------------------------------------------

_RACER = """
import sys, time
from pathlib import Path
from mobile_vision_export.pipeline.partial_dir import partial_dir

final, writer, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
while not (final.parent / "go").exists():
    time.sleep(0.001)
for i in range(rounds):
    with partial_dir(final) as tmp:
        for name in ("a.txt", "b.txt", "c.txt"):
            (tmp / name).write_text(f"{writer} {i}")
"""


def test_concurrent_exports_into_the_same_folder_both_complete(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    final = out / "model"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(final), f"w{k}", "25"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(8)
    ]
    time.sleep(0.5)  # let every racer start and wait for the signal, so they collide
    (out / "go").write_text("")
    results = [(p.wait(timeout=120), p.stderr.read()) for p in racers]
    failures = [err for code, err in results if code != 0]
    assert not failures, failures[0][-2000:]
    assert sorted(p.name for p in final.iterdir()) == ["a.txt", "b.txt", "c.txt"]
    contents = {(final / n).read_text() for n in ("a.txt", "b.txt", "c.txt")}
    assert len(contents) == 1 and contents.pop().endswith(" 24"), "the folder mixes writers or is not a last write"
    leftovers = [p.name for p in out.iterdir() if ".partial" in p.name or ".old" in p.name]
    assert not leftovers, leftovers


# 5. Checkpoints that are not state_dicts -----------------------------------------------------------------------


def _weights_error(path: Path) -> str:
    with pytest.raises(WeightsError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert "\n" not in message and "weights_only" not in message, message
    return message


def test_a_text_file_is_not_a_checkpoint(capsys, tmp_path, tiny_model):
    text = tmp_path / "notes.pth"
    text.write_text("epoch 12, loss 0.31\n")
    assert "not a PyTorch checkpoint (expected a file written by torch.save(model.state_dict(), path))" in (
        _weights_error(text)
    )
    line = _fails(capsys, tmp_path, "--model", f"{tiny_model}:build", "--input-size", "32", "--weights", str(text))
    assert "not a PyTorch checkpoint" in line and "weights_only" not in line


def test_a_whole_pickled_model_is_refused_without_unsafe_advice(capsys, tmp_path, tiny_model):
    whole = tmp_path / "whole.pth"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3)), whole)
    message = _weights_error(whole)
    assert "holds Python objects other than tensors" in message and "torch.nn.modules.container.Sequential" in message
    assert "save model.state_dict() instead" in message
    line = _fails(capsys, tmp_path, "--model", f"{tiny_model}:build", "--input-size", "32", "--weights", str(whole))
    assert "holds Python objects other than tensors" in line and "weights_only" not in line


def test_a_truncated_checkpoint_is_called_truncated(tmp_path):
    whole = io.BytesIO()
    torch.save(nn.Conv2d(3, 4, 3).state_dict(), whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    assert "truncated or corrupt" in _weights_error(cut)
    legacy = io.BytesIO()
    torch.save(nn.Conv2d(3, 4, 3).state_dict(), legacy, _use_new_zipfile_serialization=False)
    cut.write_bytes(legacy.getvalue()[: len(legacy.getvalue()) // 2])
    assert "truncated or corrupt" in _weights_error(cut)


# 6. Factories that return random weights ------------------------------------------------------------------------

FIXED_FACTORIES = """
import torch
from torch import nn


def _net():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


def arange():
    net = _net()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape) / p.numel())
    return net


def from_checkpoint():
    net = _net()
    net.load_state_dict(torch.load(CHECKPOINT, weights_only=True))
    return net
"""


def test_factories_with_random_weights_are_detected(tmp_path, tiny_model):
    source = from_factory(f"{tiny_model}:build", 32, None, None, None)
    assert source.random_weights
    assert source.weights.startswith("random initialization (seed 0) from build()")
    torch.manual_seed(0)
    assert torch.equal(source.module.fc.weight, TinyNet().fc.weight)  # the model is the one built under seed 0
    checkpoint = tmp_path / "fixed.pth"
    torch.manual_seed(5)
    exec_scope: dict = {}
    exec(FIXED_FACTORIES, exec_scope)
    torch.save(exec_scope["_net"]().state_dict(), checkpoint)
    path = tmp_path / "fixed.py"
    path.write_text(f"CHECKPOINT = {str(checkpoint)!r}\n" + FIXED_FACTORIES)
    for factory in ("arange", "from_checkpoint"):
        fixed = from_factory(f"{path}:{factory}", 32, None, None, None)
        assert not fixed.random_weights, factory
        assert fixed.weights == f"as returned by {factory}()"
    with_weights = from_factory(f"{tiny_model}:build", 32, str(_state_dict_of_tiny(tmp_path)), None, None)
    assert not with_weights.random_weights


def _state_dict_of_tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.pth"
    torch.save(TinyNet().state_dict(), path)
    return path
