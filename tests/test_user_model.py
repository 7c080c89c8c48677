"""A user's own classifier, trained here on real labelled photos (5 Fashion-MNIST classes), taken through the
export with --labels, --calib-dir and --val-dir, TFLite Metadata, mve-evaluate and report.html in a browser; and
its accurate int8 file, deliberately mis-rounded, repaired by the fitted rounding."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mobile_vision_export.export.images import calibration_batch, heldout_batch, normalize, photo_cache, photos_in_dir
from mobile_vision_export.export.metadata import read_metadata
from mobile_vision_export.export.tflite_inspect import paired_layers
from mobile_vision_export.export.tflite_model import read_model, write_model
from mobile_vision_export.int8.rounding import refit_layers
from mobile_vision_export.validate.labelled import read_labelled
from mobile_vision_export.validate.metrics import sqnr_db
from mobile_vision_export.validate.runners import run_tflite
from tests.conftest import network_attempts, open_in_browser, run_cli

CLASSES = {0: "t-shirt", 1: "trouser", 5: "sandal", 8: "bag", 9: "ankle boot"}  # Fashion-MNIST index -> name
NAMES = list(CLASSES.values())
TRAIN, CALIB, VAL = 200, 20, 24  # photos per class
SIZE, MEAN, STD = 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
MISROUNDING = 1  # level added to every weight of one layer: a rounding error with one sign
MODEL_FILE = """
from torch import nn


def build():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5),
    )
"""


def _idx(name: str) -> np.ndarray:
    """An IDX file of the Fashion-MNIST set that scripts/setup_photos.sh unpacked."""
    data = gzip.decompress((photo_cache() / "fashion-mnist" / name).read_bytes())
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def _write_photos(images, labels, per_class: int, root: Path, skip: int = 0, folders: bool = True) -> None:
    for index, name in CLASSES.items():
        for k in np.flatnonzero(labels == index)[skip : skip + per_class]:
            folder = root / name if folders else root
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[k]).convert("RGB").save(folder / f"{name.replace(' ', '_')}_{k}.png")


@pytest.fixture(scope="module")
def user_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("user_model")
    train_x, train_y = _idx("train-images-idx3-ubyte.gz"), _idx("train-labels-idx1-ubyte.gz")
    test_x, test_y = _idx("t10k-images-idx3-ubyte.gz"), _idx("t10k-labels-idx1-ubyte.gz")
    _write_photos(train_x, train_y, TRAIN, tmp / "train")
    _write_photos(train_x, train_y, CALIB, tmp / "calib", skip=TRAIN, folders=False)
    _write_photos(test_x, test_y, VAL, tmp / "val")
    (tmp / "labels.txt").write_text("\n".join(NAMES) + "\n")
    (tmp / "my_net.py").write_text(MODEL_FILE)

    # Train with the export's own preprocessing, as a user whose app follows preprocess.json would.
    train = read_labelled(tmp / "train", NAMES)
    x = torch.from_numpy(normalize(heldout_batch(train.photos, SIZE), MEAN, STD).transpose(0, 3, 1, 2).copy())
    y = torch.from_numpy(train.labels)
    namespace = {}
    exec(MODEL_FILE, namespace)
    torch.manual_seed(0)
    model = namespace["build"]()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        for batch in torch.randperm(len(x)).split(50):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    torch.save(model.eval().state_dict(), tmp / "my_net.pt")

    args = ["--model", "my_net.py:build", "--weights", "my_net.pt", "--input-size", str(SIZE), "--mean", "0.5,0.5,0.5"]
    args += ["--std", "0.5,0.5,0.5", "--labels", "labels.txt", "--calib-dir", "calib", "--val-dir", "val"]
    proc = run_cli("pipeline.export", *args, "--quant", "all", "--out", "out", tmp_path=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert network_attempts(tmp) == ""
    return tmp, tmp / "out" / "my_net_build"


@pytest.mark.slow
def test_accuracy_on_the_users_photos_matches_an_independent_count(user_export):
    tmp, out = user_export
    counted = json.loads((out / "parity.json").read_text())["accuracy_on_your_photos"]
    models = {m["model"]: m for m in counted["models"]}
    assert list(models) == ["pytorch", "onnxruntime", "fp32", "fp16", "dynamic", "int8"]
    assert models["pytorch"]["top1"] >= 0.85  # 5 distinct kinds of clothes: a trained model tells them apart
    val = read_labelled(tmp / "val", NAMES)
    x = heldout_batch(val.photos, SIZE)  # 0..1 RGB: the export folds the normalization into the graph
    for mode in ("fp32", "int8"):
        independent = float(np.mean(run_tflite(out / f"my_net_build_{mode}.tflite", x).argmax(1) == val.labels))
        assert models[mode]["top1"] == independent, mode
    assert models["int8"]["drop_points"] <= 5


@pytest.mark.slow
def test_metadata_and_evaluate_carry_the_users_classes(user_export):
    tmp, out = user_export
    for mode in ("fp32", "int8"):
        metadata = read_metadata(out / f"my_net_build_{mode}.tflite")
        assert metadata.labels == NAMES and metadata.size == (SIZE, SIZE)
        # the model's own mean/std are in the graph: the file takes pixel / 255, one scalar for every channel
        assert metadata.mean == pytest.approx((0, 0, 0)) and metadata.std == pytest.approx((1, 1, 1))
    # The int8 file alone, as an app developer receives it: labels and normalization from its metadata.
    alone = tmp / "alone" / "my_net_build_int8.tflite"
    alone.parent.mkdir()
    alone.write_bytes((out / alone.name).read_bytes())
    proc = run_cli("pipeline.evaluate", str(alone), "--val-dir", "val", tmp_path=tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((alone.parent / "evaluate.json").read_text())
    counted = json.loads((out / "parity.json").read_text())["accuracy_on_your_photos"]
    assert record["accuracy"]["top1"] == next(m["top1"] for m in counted["models"] if m["model"] == "int8")
    assert record["normalization"]["mean"] == pytest.approx((0, 0, 0))
    contract = json.loads((out / "preprocess.json").read_text())
    assert contract["normalization_in_graph"] == {"mean": list(MEAN), "std": list(STD)}


@pytest.mark.slow
def test_html_report_opens_in_a_browser(user_export, tmp_path):
    _, out = user_export
    page = (out / "report.html").read_text()
    assert "Accuracy on your labelled photos" in page and "Top-1 accuracy on your" in page
    assert page.count("<svg") >= 4  # parity bars (2), accuracy bars, per-layer SQNR curve
    console = open_in_browser(out / "report.html", tmp_path / "report.png")
    assert console == []
    shot = np.asarray(Image.open(tmp_path / "report.png").convert("L"))
    assert (shot < 128).mean() > 0.01  # text and bars were drawn, not a blank page


def _misround(int8: Path, twin: Path, op_index: int, dst: Path) -> np.ndarray:
    """Rewrite op `op_index`'s int8 weights with every value MISROUNDING levels above its nearest level; returns
    the float weights in units of their step."""
    model, float_model = read_model(int8), read_model(twin)
    graph, float_graph = model.subgraphs[0], float_model.subgraphs[0]
    f_tensor = next(f for i, _, f, _, _ in paired_layers(twin, int8) if i == op_index)
    f_op = next(op for op in float_graph.operators if op.outputs[0] == f_tensor)
    w_t, f_w = graph.tensors[graph.operators[op_index].inputs[1]], float_graph.tensors[f_op.inputs[1]]
    scaled = np.frombuffer(bytes(bytearray(float_model.buffers[f_w.buffer].data)), np.float32).reshape(f_w.shape)
    scaled = scaled / np.asarray(w_t.quantization.scale).reshape(-1, *[1] * (scaled.ndim - 1))
    levels = np.clip(np.rint(scaled) + MISROUNDING, -127, 127).astype(np.int8)
    model.buffers[w_t.buffer].data = levels.view(np.uint8).ravel()
    write_model(model, dst)
    return scaled


@pytest.mark.slow
def test_fitted_rounding_repairs_a_misrounded_layer(user_export, tmp_path):
    tmp, out = user_export
    int8, twin = out / "my_net_build_int8.tflite", out / "my_net_build_fp32.tflite"  # not equalized: fp32 is the twin
    target = [i for i, op, _, _, _ in paired_layers(twin, int8) if op == "CONV_2D"][-1]
    broken = tmp_path / "broken_int8.tflite"
    scaled = _misround(int8, twin, target, broken)
    crops = calibration_batch(photos_in_dir(tmp / "calib"), SIZE, 100)  # 0..1 RGB, as the export takes
    val = heldout_batch(read_labelled(tmp / "val", NAMES).photos, SIZE)
    reference = run_tflite(twin, val)
    damaged = sqnr_db(reference, run_tflite(broken, val))
    assert damaged < sqnr_db(reference, run_tflite(int8, val)) - 6  # one level off, all one way, really hurts

    result = refit_layers(broken, twin, crops[:50], crops[50:], tmp_path / "refit_int8.tflite")
    repaired = sqnr_db(reference, run_tflite(tmp_path / "refit_int8.tflite", val))
    assert result.kept >= 1 and result.judge_sqnr_db_after > result.judge_sqnr_db_before
    assert repaired > damaged + 6  # on photos the fit never saw
    fixed = read_model(tmp_path / "refit_int8.tflite")
    graph = fixed.subgraphs[0]
    w_t = graph.tensors[graph.operators[target].inputs[1]]
    levels = np.frombuffer(bytes(bytearray(fixed.buffers[w_t.buffer].data)), np.int8).reshape(scaled.shape)
    slack = 1e-4  # the float weight / step in float32 here, in float64 in the pass
    assert np.all(levels >= np.floor(scaled - slack)) and np.all(levels <= np.ceil(scaled + slack))  # neighbours
