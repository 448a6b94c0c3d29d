"""report.html's warnings and plot from report.json figures (the page in Chromium: test_pipeline.py)."""

from __future__ import annotations

import json
import re

from facesplat.report import history_svg, report_html, report_warnings
from helpers import REPO

GOOD = json.loads((REPO / "tests" / "data" / "head_small_report.json").read_text())


def test_a_good_run_has_no_warning():
    assert report_warnings(GOOD) == []
    assert b"No warnings" in report_html(GOOD, None)


def test_each_bad_figure_is_said_in_words():
    bad = {**GOOD, "frames_with_face": 2, "frames_registered": 8, "mean_reprojection_error_px": 3.2,
           "psnr_in_mask_db": 14.0, "gaussians_after_isolation": 20}
    warnings = report_warnings(bad)
    assert len(warnings) == 5
    for pattern in ("2 of 20 frames", "8 of 20 frames", "3.20 px", "14.0 dB", "20 of 2306"):
        assert any(pattern in w for w in warnings), (pattern, warnings)
    page = report_html(bad, None).decode()
    assert page.count("<li>") == 5 and "default-src 'none'" in page


def test_the_plot_follows_the_history():
    svg = history_svg({"step": [1, 11, 21], "loss": [0.3, 0.2, 0.1], "gaussians": [100, 200, 400]})
    lines = re.findall(r'points="([^"]+)"', svg)
    loss = [tuple(map(float, p.split(","))) for p in lines[0].split()]
    count = [tuple(map(float, p.split(","))) for p in lines[1].split()]
    assert [x for x, _ in loss] == [x for x, _ in count] and loss[0][0] < loss[1][0] < loss[2][0]
    assert loss[0][1] < loss[2][1] and count[0][1] > count[2][1]  # falling loss, growing count (y down)
    assert "No training history" in history_svg({})
