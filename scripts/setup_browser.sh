#!/usr/bin/env bash
# Headless Chromium from Debian, for the test that opens report.html in a real browser. Safe to re-run.
set -euo pipefail
if ! command -v chromium >/dev/null; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
echo "setup-browser: ready ($(chromium --version 2>/dev/null))"
