import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CAPTURE = SHARED / "data" / "captures" / "lps_orbit160"

# Tests import the backend from the checkout (also works without `pip install -e backend`).
sys.path.insert(0, str(REPO / "backend"))
# The benchmarks' ground truth of the rendered captures (capture_truth.py) is shared with tests.
sys.path.insert(0, str(REPO / "benchmarks"))


@pytest.fixture(scope="session")
def capture_dir() -> Path:
    if not (CAPTURE / "video.mp4").exists():
        pytest.skip(f"sample capture not found at {CAPTURE}")
    return CAPTURE
