"""The HTML viewer of a head: page size, write time, and time to the first frame in headless Chromium.

    .venv/bin/python benchmarks/bench_viewer.py runs/lps_orbit160/head.ply [--screenshot docs/viewer.png]

Writes the page with core/viewer_html.py (what `facesplat view` does), prints its size against
the PLY and SPZ, then opens it from file:// in Debian's chromium (software WebGL, SwiftShader) as
tests/backend/test_viewer.py does and times navigation -> first sorted frame; --screenshot saves
the home view (900 x 700).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "backend"), str(REPO / "tests")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ply", type=Path)
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    from facesplat.core.formats import read_splats
    from facesplat.core.spz import splats_to_spz_bytes
    from facesplat.core.viewer_html import BUNDLE, SPZ_VERSION, write_viewer_html
    from headless_chromium import Chromium

    splats = read_splats(args.ply)
    with tempfile.TemporaryDirectory(prefix="facesplat-bench-viewer-") as tmp:
        page = Path(tmp) / (args.ply.stem + ".html")
        started = time.perf_counter()
        write_viewer_html(page, splats)
        write_seconds = time.perf_counter() - started
        spz = len(splats_to_spz_bytes(splats, version=SPZ_VERSION))
        print(f"{args.ply}: {len(splats):,} Gaussians, SH degree {splats.sh_degree}, PLY {args.ply.stat().st_size:,} B")
        print(f"page {page.stat().st_size:,} B = SPZ v2 {spz:,} B (base64: x4/3) + script {BUNDLE.stat().st_size:,} B; "
              f"written in {write_seconds:.2f} s")
        with Chromium(900, 700, timeout=120) as browser:
            started = time.perf_counter()
            browser.open(page.as_uri(), ready="window.facesplatReady === true", failed="window.facesplatError || null",
                         timeout=300)
            ready_seconds = time.perf_counter() - started
            outside = [u for u in browser.requests if not u.startswith(("file:", "blob:", "data:"))]
            print(f"chromium (SwiftShader): first frame after {ready_seconds:.1f} s; requests outside file/blob/data: "
                  f"{len(outside)}")
            if args.screenshot:
                cv2.imwrite(str(args.screenshot), browser.screenshot()[..., ::-1])
                print(f"wrote {args.screenshot}")
    print(f"load average {os.getloadavg()[0]:.2f} (1 min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
