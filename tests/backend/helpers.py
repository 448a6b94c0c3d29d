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


def run_cli(*args, timeout=900, **popen):
    """Run `python -m facesplat ...` as a user would; returns CompletedProcess."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "backend")}
    return subprocess.run([sys.executable, "-m", "facesplat", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, **popen)
