"""The Android demo's checks that run without Google's Maven: the contract module's JUnit tests against golden
vectors, and a compile of the app against Debian's android.jar (set up by scripts/setup_android.sh)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mobile_vision_export.pipeline.bundle import bundle, golden_vectors
from mobile_vision_export.pipeline.bundle import main as bundle_main
from tests.conftest import ROOT, run_cli

DEMO = ROOT / "android_demo"
ANDROID_JAR = (
    Path(os.environ.get("MVE_ANDROID_CACHE", Path.home() / ".cache/mobile-vision-export/android")) / "android.jar"
)
JUNIT = "/usr/share/java/junit4.jar:/usr/share/java/hamcrest-core.jar"


def _javac(out: Path, classpath: str, sources: list[Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["javac", "--release", "8", "-Xlint:-options", "-cp", classpath, "-d", str(out), *map(str, sources)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def contract_classes(tmp_path_factory):
    if not Path(JUNIT.split(":")[0]).is_file():
        pytest.fail("JUnit 4 is missing: run bash scripts/setup_android.sh")
    out = tmp_path_factory.mktemp("java") / "contract"
    _javac(out, "", sorted((DEMO / "contract/src/main/java").rglob("*.java")))
    return out


def _golden_vector_tests(contract_classes: Path, golden: Path, work: Path) -> None:
    """Compile and run the contract module's JUnit golden-vector tests against the vectors in `golden`."""
    _javac(work, f"{contract_classes}:{JUNIT}", sorted((DEMO / "contract/src/test/java").rglob("*.java")))
    proc = subprocess.run(
        [
            "java",
            f"-Dgolden.dir={golden}",
            "-cp",
            f"{contract_classes}:{work}:{JUNIT}",
            "org.junit.runner.JUnitCore",
            "mve.contract.GoldenVectorTest",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "OK (4 tests)" in proc.stdout


@pytest.mark.slow
def test_contract_module_matches_golden_vectors(contract_classes, tmp_path):
    _golden_vector_tests(contract_classes, DEMO / "contract/src/test/resources/golden", tmp_path)


def test_contract_module_has_no_android_imports():
    for source in (DEMO / "contract/src").rglob("*.java"):
        assert "import android." not in source.read_text(), source


@pytest.mark.slow
def test_app_compiles_against_android_jar(contract_classes, tmp_path):
    if not ANDROID_JAR.is_file():
        pytest.fail(f"{ANDROID_JAR} is missing: run bash scripts/setup_android.sh")
    stubs = tmp_path / "compile_only"
    _javac(stubs, "", sorted((DEMO / "compile_only").rglob("*.java")))
    _javac(
        tmp_path / "app",
        f"{ANDROID_JAR}:{stubs}:{contract_classes}",
        sorted((DEMO / "app/src/main/java").rglob("*.java")),
    )
    assert (tmp_path / "app/mve/demo/MainActivity.class").is_file()
    # The compile-only LiteRT declarations never go into the app: the app's sources and assets do not hold them.
    assert not list((DEMO / "app").rglob("Interpreter.java"))


def test_bundle_refuses_a_folder_without_an_export(tmp_path, capsys):
    (tmp_path / "artifacts" / "mobilenet_v2").mkdir(parents=True)
    (tmp_path / "artifacts" / "mobilenet_v2" / "mobilenet_v2_int8.tflite").write_bytes(b"x")
    code = bundle_main(["--artifacts", str(tmp_path / "artifacts"), "--android", str(tmp_path / "app")])
    assert code == 2 and "has no int8 export" in capsys.readouterr().err


@pytest.mark.slow
def test_float_output_contract_round_trips_through_java(contract_classes, tmp_path, tiny_model):
    """--int8-output float: the app contract says float32 logits, and the Java module reads them to the same top-5."""
    args = ["--model", f"{tiny_model}:build", "--input-size", "64", "--quant", "int8", "--int8-output", "float"]
    proc = run_cli("pipeline.export", *args, "--out", "out", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    app = tmp_path / "app_copy"
    (app / "app" / "src" / "main").mkdir(parents=True)
    (app / "contract").mkdir()
    cases = bundle(tmp_path / "out" / "tiny_model_build", app)
    golden = app / "contract" / "src" / "test" / "resources" / "golden"
    output = json.loads((golden / "preprocess.json").read_text())["variants"]["int8"]["output"]
    assert output["dtype"] == "float32" and "scale" not in output
    assert all((golden / c["output"]).stat().st_size == 4 * 10 for c in cases)  # 10 float32 logits
    _golden_vector_tests(contract_classes, golden, tmp_path / "test")


@pytest.mark.slow
def test_every_output_of_a_detector_reads_through_java(contract_classes, tmp_path):
    """A two-output detector's contract: the Java module finds both outputs (name, shape, type, scale) and reads
    each from the file's bytes to the values the pipeline computes."""
    model = f"{ROOT / 'tests' / 'data' / 'vision_models.py'}:det"
    proc = run_cli("pipeline.export", "--model", model, "--input-size", "64", "--out", "out", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out, golden = tmp_path / "out" / "vision_models_det", tmp_path / "golden"
    golden.mkdir()
    contract = json.loads((out / "preprocess.json").read_text())
    shutil.copyfile(out / "preprocess.json", golden / "preprocess.json")
    cases = golden_vectors(out / "vision_models_det_int8.tflite", contract, golden)
    (golden / "cases.json").write_text(json.dumps(cases))
    assert [o["name"] for o in cases[0]["outputs"]] == [o["onnx_name"] for o in contract["variants"]["int8"]["outputs"]]
    assert len(cases[0]["outputs"]) == 2 and "top5" not in cases[0]
    _golden_vector_tests(contract_classes, golden, tmp_path / "test")
