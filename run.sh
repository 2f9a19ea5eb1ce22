#!/usr/bin/env bash
# mmembed's two entry points for a fresh machine; each does its own set-up.
#   bash run.sh demo [mmembed demo options]   the main job on the embedded synthetic data
#   bash run.sh test [pytest options]         the test suite (fast tests; add -m slow for the rest)
# Set-up: a virtual environment in $MMEMBED_VENV (default .venv), the package with its
# test extras, and the Debian package `unar` (to read compressed RAR archives).
set -euo pipefail
cd "$(dirname "$0")"

venv="${MMEMBED_VENV:-.venv}"
say() { printf '[run.sh] %s\n' "$*" >&2; }

find_python() {
    for py in python3.11 python3.12 python3.10 python3; do
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
            echo "$py"; return 0
        fi
    done
    say "Python >= 3.10 is needed (3.11 recommended); none was found on PATH."
    exit 1
}

ensure_unar() {
    command -v unar >/dev/null 2>&1 && return 0
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; fi
    fi
    if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; }; then
        say "installing the Debian package unar (reads compressed RAR archives)"
        if $sudo apt-get update -qq >/dev/null 2>&1 &&
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq unar >/dev/null 2>&1; then
            return 0
        fi
    fi
    say "WARNING: could not install 'unar'. Compressed item_images.rar archives cannot be read"
    say "         without it; install it yourself (Debian/Ubuntu: sudo apt-get install unar)."
    say "         Image folders, zip archives and stored RAR archives still work."
}

ensure_venv() {
    local stamp="$venv/.mmembed-install-stamp"
    local want
    want="$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)"
    if [ ! -x "$venv/bin/python" ]; then
        say "creating the virtual environment $venv"
        "$(find_python)" -m venv "$venv"
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing mmembed and its dependencies into $venv (first run: a few minutes)"
        "$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null
        "$venv/bin/python" -m pip install --quiet -e ".[dev]"
        echo "$want" > "$stamp"
    fi
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    demo)
        ensure_unar; ensure_venv
        exec "$venv/bin/mmembed" demo "$@" ;;
    test)
        ensure_unar; ensure_venv
        export HF_HUB_OFFLINE=1
        exec "$venv/bin/python" -m pytest "$@" ;;
    *)
        echo "usage: bash run.sh demo|test [options]" >&2; exit 2 ;;
esac
