"""Small real inputs for the backend tests: videos written with OpenCV."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


def _cli(*args) -> tuple[list[str], dict]:
    """The command line and environment of `python -m facesplat ARGS`, from the checkout or the
    installation named by FACESPLAT_TEST_PYTHON."""
    if INSTALLED_PYTHON:
        python, env = INSTALLED_PYTHON, {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    else:
        python, env = sys.executable, {**os.environ, "PYTHONPATH": str(REPO / "backend")}
    return [python, "-m", "facesplat", *map(str, args)], env


def run_cli(*args, timeout=900, **popen):
    """Run `python -m facesplat ...` as a user would; returns CompletedProcess."""
    argv, env = _cli(*args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, **popen)


def start_cli(*args, **popen) -> subprocess.Popen:
    """The same command, started in the background (to interrupt or kill it)."""
    argv, env = _cli(*args)
    return subprocess.Popen(argv, env=env, **popen)


def wait_for_event(events_path: Path, predicate, timeout: float = 300, poll: float = 0.1) -> None:
    """Wait until the run writing `events_path` has emitted an event that satisfies `predicate`."""
    from facesplat.core.events import read_events

    deadline = time.time() + timeout
    while time.time() < deadline:
        events, _ = read_events(events_path)
        if any(predicate(e) for e in events):
            return
        time.sleep(poll)
    raise AssertionError(f"no such event in {events_path} after {timeout} s")
