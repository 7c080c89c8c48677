#!/usr/bin/env bash
# The real clients apps load the files with, each in its own venv (MediaPipe Tasks needs numpy 2, which the pinned
# set cannot take; the Task Library's bindings clash with TensorFlow's in one process):
# ~/.cache/mobile-vision-export/clients/<client> (MVE_CLIENTS moves it). Safe to re-run.
set -euo pipefail
PYTHON="${PYTHON:-python3.11}"
ROOT="${MVE_CLIENTS:-$HOME/.cache/mobile-vision-export/clients}"

# install CLIENT REQUIREMENT: a venv holding exactly REQUIREMENT, rebuilt when the requirement changes
install() {
    local venv="$ROOT/$1"
    if [ ! -f "$venv/.installed" ] || [ "$(cat "$venv/.installed")" != "$2" ]; then
        rm -rf "$venv"
        "$PYTHON" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$2"
        echo "$2" > "$venv/.installed"
    fi
}

install mediapipe "mediapipe==1.2.3"
install task_library "tflite-support==0.4.4"
echo "setup-clients: ready ($(cat "$ROOT/mediapipe/.installed"), $(cat "$ROOT/task_library/.installed"))"
