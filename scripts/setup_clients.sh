#!/usr/bin/env bash
# The real clients apps load the files with, each in its own venv (MediaPipe Tasks needs numpy 2, which the pinned
# set cannot take): ~/.cache/mobile-vision-export/clients/<client> (MVE_CLIENTS moves it). Safe to re-run.
set -euo pipefail
PYTHON="${PYTHON:-python3.11}"
ROOT="${MVE_CLIENTS:-$HOME/.cache/mobile-vision-export/clients}"
MEDIAPIPE_VERSION="1.2.3"
venv="$ROOT/mediapipe"
if [ ! -f "$venv/.installed" ] || [ "$(cat "$venv/.installed")" != "mediapipe==$MEDIAPIPE_VERSION" ]; then
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "mediapipe==$MEDIAPIPE_VERSION"
    echo "mediapipe==$MEDIAPIPE_VERSION" > "$venv/.installed"
fi
echo "setup-clients: ready ($("$venv/bin/python" -c 'import mediapipe; print("mediapipe", mediapipe.__version__)'))"
