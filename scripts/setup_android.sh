#!/usr/bin/env bash
# Tools for the Android demo's checks, without Google's Maven: a JDK and JUnit 4 from Debian, and android.jar
# (API 23) from Debian bullseye's libandroid-23-java, fetched with a private apt configuration into a cache.
set -euo pipefail
CACHE="${MVE_ANDROID_CACHE:-$HOME/.cache/mobile-vision-export/android}"
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)  # root here; CI runners elsewhere may need sudo
if ! command -v javac >/dev/null || [ ! -f /usr/share/java/junit4.jar ] || [ ! -f /usr/share/java/hamcrest-core.jar ]; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq default-jdk-headless junit4 >/dev/null
fi
if [ ! -f "$CACHE/android.jar" ]; then
    mkdir -p "$CACHE/apt/lists/partial" "$CACHE/apt/sources" "$CACHE/deb"
    # The same archive as this machine's Debian sources, bullseye suite (bookworm no longer ships android.jar).
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    key=$(awk '/^Signed-By:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    printf 'Types: deb\nURIs: %s\nSuites: bullseye\nComponents: main\nSigned-By: %s\n' "$uri" "$key" \
        > "$CACHE/apt/sources/bullseye.sources"
    opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$CACHE/apt/sources"
          -o "Dir::State::Lists=$CACHE/apt/lists")
    apt-get "${opts[@]}" update -qq
    (cd "$CACHE/deb" && apt-get "${opts[@]}" download libandroid-23-java >/dev/null 2>&1)
    rm -rf "$CACHE/x" && dpkg -x "$CACHE"/deb/libandroid-23-java_*.deb "$CACHE/x"
    cp "$CACHE/x/usr/lib/android-sdk/platforms/android-23/android.jar" "$CACHE/android.jar.tmp"
    mv "$CACHE/android.jar.tmp" "$CACHE/android.jar"
    rm -rf "$CACHE/x" "$CACHE/deb"
fi
echo "setup-android: ready ($(javac -version 2>&1), $CACHE/android.jar)"
