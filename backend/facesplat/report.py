"""Figures of a run for report.json and the preview picture: what a person looks at afterwards.

The pipeline is the only writer of report.json (it merges each stage's summary and these figures).
"""

from __future__ import annotations

import math

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
