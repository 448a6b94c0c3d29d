"""A new user's install: `pip install ./backend` (no extras) into a fresh venv, then the CPU
pipeline end to end on the sample capture, and bad input answered with its one-line cause.

Slow (a few minutes the first time; pip's cache makes later installs quick) and needs PyPI:
skip it with `-m "not packaging"`.

torch comes first as `torch==2.13.0` (a local CPU wheel on our machines and in CI); left to pip's
resolver, `torch>=2.1` would pull a multi-GB CUDA build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from facesplat.core.ply import read_splat_ply

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "lps_orbit160" / "video.mp4"
TORCH = os.environ.get("FACESPLAT_TEST_TORCH", "torch==2.13.0")

pytestmark = pytest.mark.packaging


def _run(cmd, timeout, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)


def _clean_env() -> dict:
    """The user's environment, minus what would let the checkout's sources leak in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv with only the backend package and its declared dependencies."""
    root = tmp_path_factory.mktemp("fresh")
    # Build from a copy, so the checkout gets no build/ or egg-info of pip's in-tree build.
    source = root / "backend"
    shutil.copytree(REPO / "backend", source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    env_dir = root / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", env_dir], timeout=120)
    assert made.returncode == 0, made.stderr
    python = env_dir / "bin" / "python"
    # This interpreter's pip installs into the venv (--python): no ensurepip run in the venv.
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--no-compile", "--disable-pip-version-check"]
    for step in ([TORCH], [source]):
        result = _run(pip + step, timeout=1500, env=_clean_env())
        assert result.returncode == 0, f"pip install {step[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    # About 1.5 GB, left to pytest's own clean-up of old temp folders: deleting it here took longer
    # than the whole install from pip's cache.
    return env_dir


def facesplat(venv: Path, *args, cwd: Path, timeout=900) -> subprocess.CompletedProcess:
    """The installed console script, run from outside the checkout."""
    return _run([venv / "bin" / "facesplat", *args], timeout=timeout, cwd=cwd, env=_clean_env())


def test_installs_without_gsplat_and_from_the_venv_only(venv, tmp_path):
    probe = _run([venv / "bin" / "python", "-c",
                  "import importlib.util as u, facesplat; print(facesplat.__file__); "
                  "print(u.find_spec('gsplat') is None)"], timeout=60, cwd=tmp_path, env=_clean_env())
    assert probe.returncode == 0, probe.stderr
    location, no_gsplat = probe.stdout.split()
    assert Path(location).is_relative_to(venv), f"facesplat imported from {location}, not the venv"
    assert no_gsplat == "True", "gsplat is only the cuda extra; the plain install must not bring it"


def test_runs_the_sample_capture_on_the_cpu(venv, tmp_path):
    out = tmp_path / "out" / "head.ply"
    result = facesplat(venv, "run", "--video", SAMPLE, "--output", out, "--workspace", tmp_path / "ws",
                       "--height", 180, "--num-frames", 20, "--num-iters", 100, "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    head = read_splat_ply(out)
    assert 20 < len(head) <= len(read_splat_ply(tmp_path / "ws" / "scene.ply"))


@pytest.mark.parametrize("case, code, words", [
    ("text_as_video", 2, ("video",)),  # an input error
    ("cuda_without_gpu", 4, ("cuda",)),  # a device error: torch's CUDA probe, installed CPU torch
])  # fmt: skip
def test_bad_input_gives_one_line_cause(venv, tmp_path, case, code, words):
    video = tmp_path / "clip.mp4"
    if case == "text_as_video":
        video.write_text("this is not a video\n")
    else:
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        video = SAMPLE
    out = tmp_path / "out" / "head.ply"
    result = facesplat(venv, "run", "--video", video, "--output", out, "--workspace", tmp_path / "ws",
                       "--device", "cuda" if case == "cuda_without_gpu" else "cpu", "--num-iters", 5,
                       cwd=tmp_path, timeout=300)
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    causes = [line for line in result.stderr.splitlines() if line.startswith("facesplat: ")]
    assert len(causes) == 1, result.stderr[-2000:]
    for word in words:
        assert word in causes[0].lower(), causes[0]
    assert not out.exists()


def test_the_cli_error_tests_pass_against_the_installed_package(venv, tmp_path):
    """The bad-input tests of tests/backend/test_cli_errors.py, their CLI calls made with the fresh
    venv's interpreter (tests/backend/helpers.py, FACESPLAT_TEST_PYTHON): every one-line cause holds
    for a user's `pip install ./backend` too. (The slow ones, and the one that patches the library
    in-process, stay with the main suite.)"""
    env = {**_clean_env(), "FACESPLAT_TEST_PYTHON": str(venv / "bin" / "python")}
    result = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", tmp_path / "t",
                   REPO / "tests" / "backend" / "test_cli_errors.py",
                   "-k", "not ctrl_c and not out_of_memory and not stone_head"],
                  timeout=1200, cwd=REPO, env=env)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
