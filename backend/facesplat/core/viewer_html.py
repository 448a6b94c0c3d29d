"""`facesplat view`: one self-contained HTML file that shows a splat in a browser, offline.

The page holds three things and fetches nothing: the splat as SPZ version 2 (core/spz.py; the
version @mkkellogg/gaussian-splats-3d 0.4.7 reads), base64 in a non-executed <script> element;
the settings (orbit target, home camera, SH degree) as JSON; and web/viewer.min.js, that library
and three.js bundled by web/viewer/build.mjs (licences in web/LICENSES.txt, copied into the page).
Pure numpy, so the Blender add-on writes the same file (core/ is vendored into it).
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np

from .files import atomic_write_bytes
from .ply import PlyFormatError, Splats
from .spz import spz_bytes_to_splats, splats_to_spz_bytes

WEB = Path(__file__).resolve().parent / "web"
BUNDLE = WEB / "viewer.min.js"
LICENCES = WEB / "LICENSES.txt"
SUFFIX = ".html"
FOV_DEGREES = 50.0  # the library's perspective camera (vertical field of view)
HEAD_FILL = 0.7  # the head's radius covers this fraction of half the view's height at home
VIEWER_SH_DEGREE = 2  # the highest degree the library's shaders evaluate
SPZ_VERSION = 2  # the library reads versions 1 and 2
MARKER = b'<script id="facesplat-splat" type="application/octet-stream">'


def home_view(splats: Splats) -> tuple[np.ndarray, np.ndarray]:
    """Orbit target (the head's centre) and the home camera position: in front of the face, on
    -Y, far enough that the head fills HEAD_FILL of the view. Robust to stray floaters: the
    centre is the median of the opaque Gaussians, the radius their 90th-percentile distance."""
    means = splats.means.astype(np.float64)
    if len(means) == 0:
        return np.zeros(3), np.array([0.0, -0.5, 0.0])
    opaque = means[splats.opacities > 0.0]  # alpha above one half
    points = opaque if len(opaque) >= 10 else means
    centre = np.median(points, axis=0)
    radius = max(float(np.percentile(np.linalg.norm(points - centre, axis=1), 90)), 1e-3)
    distance = radius / (HEAD_FILL * math.tan(math.radians(FOV_DEGREES / 2)))
    return centre, centre + np.array([0.0, -distance, 0.0])


def _script_text(text: str) -> str:
    """Text that cannot end the <script> element it sits in."""
    return text.replace("</", "<\\/")


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="FaceSplat viewer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline' 'wasm-unsafe-eval' blob:; \
worker-src blob:; style-src 'unsafe-inline'; img-src data: blob:; connect-src data: blob:">
<title>{title}</title>
<style>
html, body {{ margin: 0; height: 100%; overflow: hidden; background: #000; font: 14px sans-serif; color: #eee; }}
#facesplat-ui {{ position: fixed; left: 12px; top: 10px; z-index: 10; pointer-events: none; }}
#facesplat-ui button {{ pointer-events: auto; font: inherit; margin-top: 6px; }}
#facesplat-scalebar {{ position: fixed; left: 12px; bottom: 12px; z-index: 10; }}
#facesplat-scalebar-bar {{ height: 6px; border: 1px solid #eee; border-top: none; }}
#facesplat-error {{ position: fixed; inset: 40% 10% auto 10%; z-index: 20; background: #400; padding: 1em; }}
</style>
</head>
<body>
<div id="facesplat-ui"><div>{title} &middot; {count} Gaussians &middot; drag to orbit, right-drag to pan,
scroll to zoom</div><button id="facesplat-reset" type="button">Reset view (R)</button></div>
<div id="facesplat-scalebar" title="approximate: FaceSplat's units are metres, scaled from the camera path">
<div id="facesplat-scalebar-bar"></div><span id="facesplat-scalebar-label"></span></div>
<div id="facesplat-error" hidden></div>
<script id="facesplat-settings" type="application/json">{settings}</script>
{marker}{splat}</script>
<script>
/*
{licences}
*/
{bundle}
</script>
</body>
</html>
"""


def viewer_html(splats: Splats, title: str = "FaceSplat head") -> bytes:
    """The whole page, as UTF-8 bytes."""
    if not BUNDLE.is_file():
        raise FileNotFoundError(f"the viewer's script {BUNDLE} is missing; reinstall FaceSplat")
    target, camera = home_view(splats)
    settings = {"target": [round(float(v), 6) for v in target],
                "camera_position": [round(float(v), 6) for v in camera],
                "sh_degree": min(splats.sh_degree, VIEWER_SH_DEGREE)}
    splat = base64.b64encode(splats_to_spz_bytes(splats, version=SPZ_VERSION)).decode("ascii")
    page = _PAGE.format(
        title=html.escape(title), count=f"{len(splats):,}", settings=_script_text(json.dumps(settings)),
        marker=MARKER.decode(), splat="\n".join(splat[i:i + 4096] for i in range(0, len(splat), 4096)),
        licences=LICENCES.read_text(encoding="utf-8").replace("*/", "* /"),
        bundle=_script_text(BUNDLE.read_text(encoding="utf-8")))
    return page.encode("utf-8")


def write_viewer_html(path, splats: Splats, title: str | None = None) -> Path:
    """Write the page atomically (nothing on failure); returns the path."""
    path = Path(path)
    atomic_write_bytes(path, viewer_html(splats, title or path.stem))
    return path


def is_viewer_html(head: bytes) -> bool:
    """Whether a file's first bytes look like a page this module wrote."""
    return head.lstrip()[:15].lower() == b"<!doctype html>" and b"FaceSplat" in head


def read_viewer_html(path) -> Splats:
    """The splat embedded in a page this module wrote (SPZ's quantization applies)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise PlyFormatError(f"cannot open {path}: {e.strerror}") from None
    start = data.find(MARKER)
    end = data.find(b"</script>", start)
    if start < 0 or end < 0:
        raise PlyFormatError(f"{path} is an HTML page without a FaceSplat splat in it; give a page "
                             "written by `facesplat view`")
    try:
        spz = base64.b64decode(b"".join(data[start + len(MARKER):end].split()), validate=True)
    except ValueError:
        raise PlyFormatError(f"{path}: the embedded splat is not valid base64; the page is damaged") from None
    return spz_bytes_to_splats(spz, path)
