#!/usr/bin/env bash
# Create .venv and install everything the backend, the demo and the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# The viewer and report tests open pages in a real headless Chromium (Debian's package).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    AS_ROOT=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then AS_ROOT="sudo -n"; fi
    if { [ "$(id -u)" = 0 ] || [ -n "$AS_ROOT" ]; } && command -v apt-get >/dev/null 2>&1; then
        { $AS_ROOT apt-get update -qq &&
          $AS_ROOT env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ||
            echo "setup.sh: apt-get could not install chromium; the viewer and report tests will fail" >&2
    else
        echo "setup.sh: chromium is missing; install it (as root: apt-get install -y chromium) for the viewer tests" >&2
    fi
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# A local CPU wheel of torch 2.13.0 exists on our machines; elsewhere pip picks the platform's build.
if ! python -c "import torch" 2>/dev/null; then
    python -m pip install -q "torch==2.13.0" || python -m pip install -q torch
fi
python -m pip install -q -r requirements.txt
python -m pip install -q --no-deps -e backend
