#!/usr/bin/env bash
# Create .venv with the project's pinned dependencies (Python 3.11, CPU torch). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
if ! ldconfig -p | grep -q 'libusb-1.0.so.0'; then  # tflite-support's metadata extension links it
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends libusb-1.0-0 >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade "pip>=24"
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
bash scripts/setup_photos.sh
echo "setup: ready ($(.venv/bin/python -c 'from importlib.metadata import version as v; print("onnx2tf", v("onnx2tf"), "torch", v("torch"))'))"
