"""Figures of a run for report.json, the preview picture and report.html: what a person looks at afterwards.

The pipeline is the only writer of report.json (it merges each stage's summary and these figures).
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import cv2
import numpy as np
import torch

from .gaussians import activated
from .render import rasterize
from .views import View


def train_figures(params, views: list[View], sh_degree: int) -> dict:
    """Figures of a trained splat against its training views."""
    psnr = masked_psnr(params, views, sh_degree)
    return {"psnr_in_mask_db": psnr}


@torch.no_grad()
def render_view(params, view: View, sh_degree: int, crop: bool = True):
    """(render, alpha, image, mask) of one view on a black background."""
    if crop:
        image, mask, K, w, h = view.crop()
    else:
        image, mask, K, w, h = view.image, view.mask, view.K, view.width, view.height
    s = activated(params)
    render, alpha, _ = rasterize(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"],
                                 view.viewmat, K, w, h, sh_degree=sh_degree,
                                 backgrounds=torch.zeros(3, device=image.device))
    return render, alpha, image, mask


def masked_psnr(params, views: list[View], sh_degree: int) -> float:
    """Mean over views of the PSNR on head pixels (mask-weighted MSE)."""
    values = []
    for view in views:
        render, _, image, mask = render_view(params, view, sh_degree)
        mse = float((mask * (render.clamp(0, 1) - image) ** 2).sum() / (3 * mask.sum().clamp_min(1.0)))
        values.append(10 * math.log10(1.0 / max(mse, 1e-10)))
    return float(np.mean(values)) if values else float("nan")


def preview_png(params, views: list[View], sh_degree: int, count: int = 4) -> bytes | None:
    """Contact sheet: for a few views, the frame's head box above the render of it."""
    picks = [views[i] for i in np.linspace(0, len(views) - 1, min(count, len(views))).round().astype(int)]
    tiles = []
    for view in picks:
        render, _, image, _ = render_view(params, view, sh_degree)
        pair = torch.cat([image, render.clamp(0, 1)], dim=0)  # frame above render
        tiles.append((pair.cpu().numpy() * 255).astype(np.uint8))
    height = max(t.shape[0] for t in tiles)
    tiles = [cv2.copyMakeBorder(t, 0, height - t.shape[0], 0, 4, cv2.BORDER_CONSTANT) for t in tiles]
    sheet = cv2.cvtColor(np.concatenate(tiles, axis=1), cv2.COLOR_RGB2BGR)
    ok, png = cv2.imencode(".png", sheet)
    return png.tobytes() if ok else None


# --- report.html: the run's figures, pictures and warnings in one page that opens offline ---------

CONTACT_VIEWS = 4
TILE_HEIGHT = 160
# A warning when a figure passes these (the sample capture at the demo's settings: 0.4 px, 21+ dB).
FEW_FACES_FRACTION = 0.3  # of the sampled frames with a face found
FEW_REGISTERED_FRACTION = 0.6  # of the sampled frames placed by structure from motion
HIGH_REPROJECTION_PX = 1.5
LOW_PSNR_DB = 18.0
FEW_KEPT_FRACTION = 0.05  # of the trained Gaussians kept as the head


def _tile(rgb: np.ndarray) -> bytes:
    """An RGB 0..1 (or grey [H, W, 1]) picture as a PNG TILE_HEIGHT high."""
    rgb = np.clip(rgb, 0, 1)
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    h, w = rgb.shape[:2]
    small = cv2.resize((rgb * 255).astype(np.uint8), (max(1, round(w * TILE_HEIGHT / h)), TILE_HEIGHT),
                       interpolation=cv2.INTER_AREA)
    ok, png = cv2.imencode(".png", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    return png.tobytes() if ok else b""


def contact_tiles(scene, head, views: list[View]) -> dict[str, list[bytes]]:
    """For each view (its head box): the frame, its mask, and renders of scene.ply and head.ply."""
    from .gaussians import params_from_splats

    rows: dict[str, list[bytes]] = {"frame": [], "mask": [], "scene.ply": [], "head.ply": []}
    scene_params, head_params = params_from_splats(scene), params_from_splats(head)
    for view in views:
        render, _, image, mask = render_view(scene_params, view, scene.sh_degree)
        head_render, _, _, _ = render_view(head_params, view, head.sh_degree)
        for name, picture in (("frame", image), ("mask", mask), ("scene.ply", render), ("head.ply", head_render)):
            rows[name].append(_tile(picture.cpu().numpy()))
    return rows


def report_warnings(report: dict) -> list[str]:
    """What in the figures a person should know about, in words."""
    warnings = []
    sampled = report.get("frames_sampled") or 0
    faces, registered = report.get("frames_with_face"), report.get("frames_registered")
    if sampled and faces is not None and faces < FEW_FACES_FRACTION * sampled:
        warnings.append(f"Few faces found: a face was detected in {faces} of {sampled} frames. The head's "
                        "position and size rest on few frames; film the face from the front for longer.")
    if sampled and registered is not None and registered < FEW_REGISTERED_FRACTION * sampled:
        warnings.append(f"Only {registered} of {sampled} frames were placed in 3D. Move more slowly, keep more "
                        "of the background in view, or give more frames (--num-frames).")
    error = report.get("mean_reprojection_error_px")
    if error is not None and error > HIGH_REPROJECTION_PX:
        warnings.append(f"High reprojection error: {error:.2f} px on average (over {HIGH_REPROJECTION_PX} px). "
                        "The camera positions are uncertain; expect a blurred head. Motion blur or a moving "
                        "subject are the usual causes.")
    psnr = report.get("psnr_in_mask_db")
    if psnr is not None and psnr < LOW_PSNR_DB:
        warnings.append(f"Low PSNR in the head mask: {psnr:.1f} dB (under {LOW_PSNR_DB:.0f} dB). The splat "
                        "matches its frames poorly; train longer (--num-iters) or at a higher resolution.")
    trained, kept = report.get("gaussians_before_isolation"), report.get("gaussians_after_isolation")
    if trained and kept is not None and kept < FEW_KEPT_FRACTION * trained:
        warnings.append(f"Isolation kept only {kept} of {trained} Gaussians; lower the isolation threshold "
                        "(facesplat isolate --isolation-threshold) if the head is missing parts.")
    return warnings


def _figure_rows(report: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in report.items():
        if key == "train_history":
            continue
        if isinstance(value, dict):
            rows += _figure_rows(value, f"{prefix}{key}.")
        elif isinstance(value, float):
            rows.append((prefix + key, f"{value:.4g}"))
        else:
            rows.append((prefix + key, json.dumps(value) if isinstance(value, list) else str(value)))
    return rows


def history_svg(history: dict, width: int = 640, height: int = 240) -> str:
    """Loss (left axis) and Gaussian count (right axis) over the training steps, as inline SVG."""
    steps, loss, count = history.get("step") or [], history.get("loss") or [], history.get("gaussians") or []
    if len(steps) < 2:
        return "<p>No training history in report.json (a workspace trained by an older FaceSplat).</p>"
    left, right, top, bottom = 60, 70, 14, 34
    plot_w, plot_h = width - left - right, height - top - bottom

    def polyline(values, colour):
        lo, hi = min(values), max(values)
        span = (hi - lo) or 1.0
        points = " ".join(f"{left + plot_w * (s - steps[0]) / ((steps[-1] - steps[0]) or 1):.1f},"
                          f"{top + plot_h * (1 - (v - lo) / span):.1f}" for s, v in zip(steps, values))
        return f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>', lo, hi

    loss_line, loss_lo, loss_hi = polyline(loss, "#1f77b4")
    count_line, count_lo, count_hi = polyline(count, "#ff7f0e")
    text = 'font-size="12" font-family="sans-serif"'
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="loss and Gaussian count over the training steps">'
            f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#999"/>'
            f'{loss_line}{count_line}'
            f'<text x="{left - 6}" y="{top + 10}" text-anchor="end" fill="#1f77b4" {text}>{loss_hi:.3g}</text>'
            f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" fill="#1f77b4" {text}>{loss_lo:.3g}</text>'
            f'<text x="{left + plot_w + 6}" y="{top + 10}" fill="#ff7f0e" {text}>{count_hi:,}</text>'
            f'<text x="{left + plot_w + 6}" y="{top + plot_h}" fill="#ff7f0e" {text}>{count_lo:,}</text>'
            f'<text x="{left}" y="{height - 8}" {text}>step {steps[0]}</text>'
            f'<text x="{left + plot_w}" y="{height - 8}" text-anchor="end" {text}>step {steps[-1]}</text>'
            f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle" {text}>'
            f'<tspan fill="#1f77b4">loss (left)</tspan>, <tspan fill="#ff7f0e">Gaussians (right)</tspan></text>'
            f'</svg>')


def report_html(report: dict, tiles: dict[str, list[bytes]] | None) -> bytes:
    """The page: warnings, the figures as a table, the contact sheet, the training plot. Pictures
    are data: URIs; the page's policy forbids any request."""
    esc = html.escape
    warnings = report_warnings(report)
    warning_html = ("<ul class=warnings>" + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>"
                    if warnings else "<p class=ok>No warnings: the figures are in their usual ranges.</p>")
    table = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in _figure_rows(report))
    sheet = "<p>No contact sheet.</p>"
    if tiles:
        sheet = "<table class=sheet>" + "".join(
            f"<tr><th>{esc(name)}</th>" + "".join(
                f'<td><img alt="{esc(name)} {i + 1}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                "</td>" for i, png in enumerate(pngs)) + "</tr>" for name, pngs in tiles.items()) + "</table>"
    output = report.get("output") or "head.ply"
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>FaceSplat report: {esc(Path(output).name)}</title>
<style>
body {{ font: 14px sans-serif; margin: 1.5em; color: #222; }}
table.figures {{ border-collapse: collapse; }}
table.figures th, table.figures td {{ border: 1px solid #ccc; padding: 2px 8px; text-align: left; }}
table.figures th {{ font-weight: normal; font-family: monospace; }}
table.sheet th {{ text-align: right; font-weight: normal; padding-right: 8px; }}
table.sheet img {{ display: block; }}
ul.warnings li {{ color: #a40; margin-bottom: 4px; }}
p.ok {{ color: #070; }}
</style>
</head>
<body>
<h1>FaceSplat report</h1>
<p>Output: <code>{esc(str(output))}</code></p>
<h2>Warnings</h2>
{warning_html}
<h2>Contact sheet</h2>
<p>A few training views, each cut to the head's box: the frame, its head mask, and renders of the
trained scene (scene.ply) and of the isolated head (head.ply) from that camera.</p>
{sheet}
<h2>Training</h2>
{history_svg(report.get("train_history") or {})}
<h2>Figures (report.json)</h2>
<table class=figures>{table}</table>
</body>
</html>
"""
    return page.encode("utf-8")
