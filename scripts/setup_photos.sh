#!/usr/bin/env bash
# Photo sets from Debian packages, fetched with apt-get download (nothing installed system-wide) and unpacked into
# a cache. Needs .venv (Pillow, numpy). Safe to re-run.
#   natural/      held-out photos: gcompris-qt-data (bookworm) animals, everyday objects, fish, windmills
#   calibration/  calibration photos: gcompris-qt-data 1.0 (bullseye), endless-sky-data (landscapes, cities),
#                 krank (underwater); near-duplicates of held-out photos dropped
#   fashion-mnist/ Fashion-MNIST (dataset-fashion-mnist, MIT): 70k labelled 28x28 photos of clothes, for the test
#                 that trains a small user model and takes it through export, --val-dir and metadata
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/apt_download.sh
CACHE="${MVE_PHOTO_CACHE:-$HOME/.cache/mobile-vision-export/photos}"
if [ ! -f "$CACHE/natural/.complete" ]; then
    rm -rf "$CACHE/deb" "$CACHE/x" "$CACHE/natural"
    apt_download "$CACHE/deb" default gcompris-qt-data
    dpkg -x "$CACHE"/deb/gcompris-qt-data_*.deb "$CACHE/x"
    .venv/bin/python scripts/unpack_photos.py heldout "$CACHE/x/usr/share/gcompris-qt/rcc" "$CACHE/natural"
    touch "$CACHE/natural/.complete"
    rm -rf "$CACHE/deb" "$CACHE/x"
fi
if [ ! -f "$CACHE/calibration/.complete" ]; then
    rm -rf "$CACHE/deb" "$CACHE/x" "$CACHE/calibration"
    apt_download "$CACHE/deb" default endless-sky-data krank
    apt_download "$CACHE/deb" bullseye gcompris-qt-data=1.0-1
    for deb in "$CACHE"/deb/*.deb; do dpkg -x "$deb" "$CACHE/x"; done
    .venv/bin/python scripts/unpack_photos.py calibration "$CACHE/x" "$CACHE/calibration" "$CACHE/natural"
    touch "$CACHE/calibration/.complete"
    rm -rf "$CACHE/deb" "$CACHE/x"
fi
if [ ! -f "$CACHE/fashion-mnist/.complete" ]; then
    rm -rf "$CACHE/deb" "$CACHE/x" "$CACHE/fashion-mnist"
    apt_download "$CACHE/deb" default dataset-fashion-mnist
    dpkg -x "$CACHE"/deb/dataset-fashion-mnist_*.deb "$CACHE/x"
    mv "$CACHE/x/usr/share/datasets/fashion-mnist" "$CACHE/fashion-mnist"
    touch "$CACHE/fashion-mnist/.complete"
    rm -rf "$CACHE/deb" "$CACHE/x"
fi
count() { find "$1" -type f ! -name .complete | wc -l; }
echo "setup-photos: ready ($(count "$CACHE/natural") held-out photos, $(count "$CACHE/calibration") calibration photos in $CACHE)"
