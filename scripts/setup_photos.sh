#!/usr/bin/env bash
# Held-out photos: the natural photos (animals, everyday objects, fish) of Debian's gcompris-qt-data, fetched with
# apt-get download (nothing installed system-wide) and unpacked into a cache. Needs .venv (Pillow). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${MVE_PHOTO_CACHE:-$HOME/.cache/mobile-vision-export/photos}"
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
if [ ! -f "$CACHE/natural/.complete" ]; then
    rm -rf "$CACHE/deb" "$CACHE/x" "$CACHE/natural"
    mkdir -p "$CACHE/deb"
    if ! (cd "$CACHE/deb" && apt-get download gcompris-qt-data >/dev/null 2>&1); then
        $SUDO apt-get update -qq
        (cd "$CACHE/deb" && apt-get download gcompris-qt-data >/dev/null)
    fi
    dpkg -x "$CACHE"/deb/gcompris-qt-data_*.deb "$CACHE/x"
    .venv/bin/python scripts/unpack_photos.py "$CACHE/x/usr/share/gcompris-qt/rcc" "$CACHE/natural"
    touch "$CACHE/natural/.complete"
    rm -rf "$CACHE/deb" "$CACHE/x"
fi
echo "setup-photos: ready ($(find "$CACHE/natural" -type f ! -name .complete | wc -l) photos in $CACHE/natural)"
