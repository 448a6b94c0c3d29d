#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the sample capture; CPU unless CUDA is present.
# Writes runs/lps_orbit160/head.ply (+ its workspace). Takes a few minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
VIDEO=${VIDEO:-samples/lps_orbit160/video.mp4}
facesplat run --video "$VIDEO" --output runs/lps_orbit160/head.ply \
    --workspace runs/lps_orbit160/workspace --preset preview --device auto "$@"
