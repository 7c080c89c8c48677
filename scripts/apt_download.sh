# Sourced by the set-up scripts: download Debian packages without installing anything system-wide.
# apt_download DEST_DIR SUITE PKG[=VERSION]...: SUITE "default" uses this machine's apt sources; any other suite
# (e.g. bullseye) uses a private apt configuration under DEST_DIR/../apt with the same archive and key.
apt_download() {
    local dest=$1 suite=$2
    shift 2
    mkdir -p "$dest"
    if [ "$suite" = default ]; then
        if ! (cd "$dest" && apt-get download "$@" >/dev/null 2>&1); then
            $([ "$(id -u)" = 0 ] || echo sudo) apt-get update -qq
            (cd "$dest" && apt-get download "$@" >/dev/null)
        fi
        return
    fi
    local state="$dest/../apt-$suite" uri key
    mkdir -p "$state/lists/partial" "$state/sources"
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    key=$(awk '/^Signed-By:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' "$uri" "$suite" "$key" \
        > "$state/sources/$suite.sources"
    local opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$state/sources"
                -o "Dir::State::Lists=$state/lists")
    apt-get "${opts[@]}" update -qq
    (cd "$dest" && apt-get "${opts[@]}" download "$@" >/dev/null 2>&1)
}
