"""`facesplat view`: the self-contained HTML viewer, opened from file:// in a real headless Chromium
(scripts/setup.sh installs Debian's chromium) and compared with our own render of the same head."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from facesplat.core.formats import read_splats
from facesplat.core.ply import read_splat_ply
from facesplat.core.viewer_html import FOV_DEGREES, VIEWER_SH_DEGREE, home_view
from facesplat.gaussians import activated, params_from_splats
from facesplat.render import rasterize
from headless_chromium import Chromium
from helpers import REPO, run_cli

HEAD = REPO / "tests" / "data" / "head_small.ply"
WIDTH, HEIGHT = 640, 480
# A script, style or fetch from the network: a src= (script, image, frame), a stylesheet link or
# @import, a CSS url(), a fetch / import / importScripts / XMLHttpRequest.open of an http(s) URL.
# (Namespace strings like "http://www.w3.org/2000/svg" and the library's WebXR help link, never
# shown here, request nothing.)
NETWORK_REFERENCE = re.compile(
    r"""\bsrc\s*=\s*["']?\s*(?:https?:)?//|<link\b|@import\b|url\(\s*["']?\s*(?:https?:)?//"""
    r"""|\b(?:fetch|import|importScripts|open)\s*\(\s*(?:["'`]GET["'`]\s*,\s*)?["'`]\s*(?:https?:)?//""", re.I)


def our_render(splats, target, camera) -> tuple[np.ndarray, np.ndarray]:
    """Our CPU render (RGB in 0..1, alpha) from the viewer's home camera: at `camera`, looking
    along +Y at the face, +Z up, the library's vertical field of view, on black."""
    R = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], np.float64)  # world -> OpenCV camera axes
    viewmat = np.eye(4)
    viewmat[:3, :3], viewmat[:3, 3] = R, -R @ np.asarray(camera)
    f = HEIGHT / 2 / math.tan(math.radians(FOV_DEGREES / 2))
    K = torch.tensor([[f, 0, WIDTH / 2], [0, f, HEIGHT / 2], [0, 0, 1]], dtype=torch.float32)
    s = activated(params_from_splats(splats))
    with torch.no_grad():
        image, alpha, _ = rasterize(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"],
                                    torch.tensor(viewmat, dtype=torch.float32), K, WIDTH, HEIGHT,
                                    sh_degree=min(splats.sh_degree, VIEWER_SH_DEGREE),
                                    backgrounds=torch.zeros(3), backend="cpu")
    return image.clamp(0, 1).numpy(), alpha[..., 0].numpy()


@pytest.fixture(scope="module")
def viewer_page(tmp_path_factory):
    page = tmp_path_factory.mktemp("viewer") / "head.html"
    result = run_cli("view", HEAD, "--output", page, timeout=120)
    assert result.returncode == 0, result.stderr
    return page


def test_page_is_self_contained_and_holds_the_head(viewer_page):
    text = viewer_page.read_text(encoding="utf-8")
    assert not NETWORK_REFERENCE.search(text), NETWORK_REFERENCE.search(text).group(0)
    # And the page's own policy forbids any request but blob: and data: (workers, the decoded splat).
    assert "default-src 'none'" in text and "connect-src data: blob:" in text
    assert "gaussian-splats-3d" in text and "MIT License" in text  # the bundled library and its licence
    back, original = read_splats(viewer_page), read_splat_ply(HEAD)  # the page reads back (SPZ's quantization)
    assert len(back) == len(original) and back.sh_degree == original.sh_degree
    assert np.abs(back.means - original.means).max() < 1e-3


def test_chromium_shows_the_head_as_our_renderer_does_with_no_network_request(viewer_page):
    with Chromium(WIDTH, HEIGHT) as browser:
        browser.open(viewer_page.as_uri(), ready="window.facesplatReady === true",
                     failed="window.facesplatError || null", timeout=90)
        browser.evaluate("for (const id of ['facesplat-ui', 'facesplat-scalebar'])"
                         " document.getElementById(id).style.display = 'none'")
        browser.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        shot = browser.screenshot().astype(np.float64) / 255
        requests = list(browser.requests)
    assert shot.shape == (HEIGHT, WIDTH, 3)
    outside = [url for url in requests if not url.startswith(("file:", "blob:", "data:"))]
    assert not outside and requests[0] == viewer_page.as_uri(), requests

    splats = read_splat_ply(HEAD)
    ours, alpha = our_render(splats, *home_view(splats))
    head = alpha > 0.5
    centre = (slice(HEIGHT * 2 // 5, HEIGHT * 3 // 5), slice(WIDTH * 2 // 5, WIDTH * 3 // 5))
    assert head[centre].mean() > 0.9  # the home view faces the head: it covers the picture's centre
    assert shot[centre].max(axis=2).mean() > 0.15 and (shot[centre].max(axis=2) > 0.05).mean() > 0.9

    covered = shot.max(axis=2) > 0.1
    overlap = (covered & head).sum() / (covered | head).sum()
    colour_difference = np.abs(shot[head].mean(axis=0) - ours[head].mean(axis=0))
    # The same head in the same place and the same colours (the renderers differ in sorting,
    # SPZ's 8-bit colours and blending; measured: overlap 0.82, colour difference 0.003, pixel
    # correlation 0.999, and 0.73 / 0.21 for the page mirrored left-right).
    assert overlap > 0.75, overlap
    assert colour_difference.max() < 0.03, (colour_difference, shot[head].mean(axis=0), ours[head].mean(axis=0))
    grey, our_grey = shot.mean(axis=2), ours.mean(axis=2)
    assert np.corrcoef(grey[head], our_grey[head])[0, 1] > 0.9
    assert np.corrcoef(grey[:, ::-1][head], our_grey[head])[0, 1] < 0.6  # the check sees a mirrored head


@pytest.mark.parametrize("source, output, message", [
    ("README.md", "h.html", "not a splat file"),
    ("tests/data/head_small.ply", "h.png", "end --output with .html"),
    ("missing.ply", "h.html", "cannot open"),
])
def test_view_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, source, output, message):
    result = run_cli("view", REPO / source, "--output", tmp_path / output, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("facesplat: error:") and message in lines[0], result.stderr
    assert not list(tmp_path.iterdir())


def test_convert_writes_the_viewer_too(tmp_path):
    result = run_cli("convert", HEAD, tmp_path / "head.html", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "(html)" in result.stderr and len(read_splats(tmp_path / "head.html")) == len(read_splat_ply(HEAD))
