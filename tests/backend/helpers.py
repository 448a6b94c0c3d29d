"""Small real inputs for the backend tests: videos written with OpenCV."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]


def write_video(path: Path, frames: list[np.ndarray], fps: int = 24) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    return path


# FACESPLAT_TEST_PYTHON names another interpreter with facesplat installed (the packaging test's
# fresh venv): the CLI tests then run against that installation instead of the checkout.
INSTALLED_PYTHON = os.environ.get("FACESPLAT_TEST_PYTHON")


def run_cli(*args, timeout=900, **popen):
    """Run `python -m facesplat ...` as a user would; returns CompletedProcess."""
    if INSTALLED_PYTHON:
        python, env = INSTALLED_PYTHON, {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    else:
        python, env = sys.executable, {**os.environ, "PYTHONPATH": str(REPO / "backend")}
    return subprocess.run([python, "-m", "facesplat", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, **popen)
