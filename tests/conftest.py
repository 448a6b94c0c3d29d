import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CAPTURE = REPO / "samples" / "lps_orbit160"  # the sample capture ships in the repository

# Tests import the backend from the checkout (also works without `pip install -e backend`).
sys.path.insert(0, str(REPO / "backend"))
# The benchmarks' ground truth of the rendered captures (capture_truth.py) is shared with tests.
sys.path.insert(0, str(REPO / "benchmarks"))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "packaging: installs the package into a fresh venv from PyPI (slow); "
                   "deselect with -m 'not packaging'")


@pytest.fixture(scope="session")
def capture_dir() -> Path:
    if not (CAPTURE / "video.mp4").exists():
        pytest.fail(f"the sample capture is missing from the checkout: {CAPTURE}")
    return CAPTURE
