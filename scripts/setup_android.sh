#!/usr/bin/env bash
# Tools for the Android demo's checks, without Google's Maven: a JDK and JUnit 4 from Debian, and android.jar
# (API 23) from Debian bullseye's libandroid-23-java, fetched with a private apt configuration into a cache.
set -euo pipefail
source "$(dirname "$0")/apt_download.sh"
CACHE="${MVE_ANDROID_CACHE:-$HOME/.cache/mobile-vision-export/android}"
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)  # root here; CI runners elsewhere may need sudo
if ! command -v javac >/dev/null || [ ! -f /usr/share/java/junit4.jar ] || [ ! -f /usr/share/java/hamcrest-core.jar ]; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq default-jdk-headless junit4 >/dev/null
fi
if [ ! -f "$CACHE/android.jar" ]; then
    # Bookworm no longer ships android.jar: bullseye's package, from the same archive as this machine's sources.
    apt_download "$CACHE/deb" bullseye libandroid-23-java
    rm -rf "$CACHE/x" && dpkg -x "$CACHE"/deb/libandroid-23-java_*.deb "$CACHE/x"
    cp "$CACHE/x/usr/lib/android-sdk/platforms/android-23/android.jar" "$CACHE/android.jar.tmp"
    mv "$CACHE/android.jar.tmp" "$CACHE/android.jar"
    rm -rf "$CACHE/x" "$CACHE/deb"
fi
echo "setup-android: ready ($(javac -version 2>&1), $CACHE/android.jar)"
