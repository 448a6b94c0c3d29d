"""Stage 4: optimise Gaussians against the registered frames, on head pixels only.

Loss per step (one view, rendered only inside the head's box):
    (1 - w) * masked L1 + w * masked (1 - SSIM)   on head pixels (soft mask weights), w = 0.2
    + bg_alpha_weight * mean(alpha * (1 - mask))  drives opacity to zero off the head
A random background colour each step keeps the head opaque instead of borrowing the background.
Densification follows the 3DGS rules as gsplat applies them (strategy.py), one Adam optimizer per parameter.

On the CPU a run is a function of its inputs, `cfg.seed` and the thread count: the view order,
the backgrounds and the split draws come from the seed, and the CPU kernels write one gradient per
(tile, Gaussian) entry, no atomics. gsplat's CUDA backward adds atomically, so CUDA runs differ in
their last bits from run to run.
"""

from __future__ import annotations

import functools
import math
import time

import cv2
import numpy as np
import torch

from .config import TrainConfig
from .core.cameras import CameraFrame
from .core.events import EventWriter
from .core.ply import write_splat_ply
from .gaussians import activated, init_splats, splats_from_params
from .render import rasterize
from .strategy import scaled_strategy
from .views import View, load_views
from .workspace import Workspace


def train(cameras: list[CameraFrame], xyz: np.ndarray, rgb: np.ndarray, ws: Workspace, cfg: TrainConfig,
          device: torch.device, renderer: str, events: EventWriter | None = None) -> dict:
    """Train from sparse points; write scene.ply and preview.png. Returns a summary for report.json."""
    emit = events.emit if events else (lambda *a, **k: None)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    views = load_views(ws.root, cameras, device, cfg.crop_margin)
    params = init_splats(xyz, rgb, cfg.sh_degree, device)
    centers = np.array([c.center for c in cameras])
    scene_scale = 1.1 * float(np.linalg.norm(centers - centers.mean(0), axis=1).max() or 1.0)
    optimizers = make_optimizers(params, scene_scale)
    means_decay = 0.01 ** (1.0 / max(cfg.num_iters, 1))  # means lr falls 100x over the run
    strategy = scaled_strategy(cfg.num_iters, cfg.max_gaussians, cfg.grow_grad2d)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=scene_scale)
    sh_start = cfg.num_iters // 4  # degree 1 once the base colours have settled

    emit("train", 0.0, f"training {len(params['means'])} Gaussians on {len(views)} views")
    started, losses, order = time.time(), [], []
    for step in range(cfg.num_iters):
        if not order:
            order = list(rng.permutation(len(views)))
        view = views[order.pop()]
        image, mask, K, w, h = view.crop(downscale=2 if step < cfg.coarse_fraction * cfg.num_iters else 1)
        background = torch.rand(3, device=device)
        splats = activated(params)
        render, alpha, info = rasterize(
            splats["means"], splats["quats"], splats["scales"], splats["opacities"], splats["colors"],
            view.viewmat, K, w, h, sh_degree=cfg.sh_degree if step >= sh_start else 0,
            backgrounds=background, backend=renderer)
        strategy.step_pre_backward(params, optimizers, state, step, info)
        loss = head_loss(render, alpha, image, mask, cfg)
        loss.backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        for group in optimizers["means"].param_groups:
            group["lr"] *= means_decay
        strategy.step_post_backward(params, optimizers, state, step, info)
        losses.append(float(loss.detach()))
        if step % 10 == 0 or step == cfg.num_iters - 1:
            emit("train", (step + 1) / cfg.num_iters,
                 f"step {step + 1}/{cfg.num_iters}, loss {np.mean(losses[-10:]):.4f}, {len(params['means'])} Gaussians")

    splats = splats_from_params(params)
    write_splat_ply(ws.scene_ply, splats)
    psnr = masked_psnr(params, views, cfg.sh_degree, renderer)
    write_preview(ws.preview_png, params, views, cfg.sh_degree, renderer)
    summary = {
        "gaussians_trained": len(splats),
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "psnr_in_mask_db": psnr,
        "train_seconds_per_step": (time.time() - started) / max(cfg.num_iters, 1),
        "renderer": renderer,
    }
    emit("train", 1.0, f"{len(splats)} Gaussians, PSNR in head mask {psnr:.2f} dB")
    return summary


def make_optimizers(params, scene_scale: float) -> dict[str, torch.optim.Optimizer]:
    """gsplat simple_trainer's per-parameter Adam learning rates."""
    lrs = {"means": 1.6e-4 * scene_scale, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2,
           "sh0": 2.5e-3, "shN": 2.5e-3 / 20}
    return {name: torch.optim.Adam([{"params": params[name], "lr": lr, "name": name}], eps=1e-15)
            for name, lr in lrs.items()}


def head_loss(render, alpha, image, mask, cfg: TrainConfig) -> torch.Tensor:
    """render, image [H, W, 3]; alpha, mask [H, W, 1]."""
    weight = mask.sum().clamp_min(1.0)
    l1 = (mask * (render - image).abs()).sum() / (3 * weight)
    ssim_map = ssim(render, image)  # [H, W, 1]
    ssim_term = (mask * (1 - ssim_map)).sum() / weight
    bg_alpha = (alpha * (1 - mask)).mean()
    return (1 - cfg.ssim_weight) * l1 + cfg.ssim_weight * ssim_term + cfg.bg_alpha_weight * bg_alpha


@functools.lru_cache(maxsize=64)
def _blur_matrix(n: int, device: str, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """[n, n] matrix applying a 1D Gaussian window with replicate padding: M @ signal."""
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    g = g / g.sum()
    rows = torch.arange(n)[:, None].expand(n, size)
    cols = (rows + x.long()[None, :]).clamp(0, n - 1)
    m = torch.zeros(n, n)
    m.index_put_((rows.reshape(-1), cols.reshape(-1)), g.repeat(n), accumulate=True)
    return m.to(device)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM of [H, W, 3] images (11x11 Gaussian window, sigma 1.5), channel mean: [H, W, 1].

    The window is separable, so each blur is two matrix products (M_h X M_w^T) over all fifteen
    statistic planes at once: on a CPU that is far cheaper than conv2d, forward and backward.
    """
    h, w = a.shape[:2]
    x, y = a.permute(2, 0, 1), b.permute(2, 0, 1)  # [3, H, W]
    stats = torch.cat([x, y, x * x, y * y, x * y])  # [15, H, W]
    blurred = _blur_matrix(h, str(a.device)) @ stats @ _blur_matrix(w, str(a.device)).T
    mx, my, xx, yy, xy = blurred.split(3)
    sxx, syy, sxy = xx - mx * mx, yy - my * my, xy - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean(dim=0)[..., None]


@torch.no_grad()
def render_view(params, view: View, sh_degree: int, renderer: str, crop: bool = True):
    """(render, alpha, image, mask) of one view on a black background."""
    if crop:
        image, mask, K, w, h = view.crop()
    else:
        image, mask, K, w, h = view.image, view.mask, view.K, view.width, view.height
    s = activated(params)
    render, alpha, _ = rasterize(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"],
                                 view.viewmat, K, w, h, sh_degree=sh_degree,
                                 backgrounds=torch.zeros(3, device=image.device), backend=renderer)
    return render, alpha, image, mask


def masked_psnr(params, views: list[View], sh_degree: int, renderer: str) -> float:
    """Mean over views of the PSNR on head pixels (mask-weighted MSE)."""
    values = []
    for view in views:
        render, _, image, mask = render_view(params, view, sh_degree, renderer)
        mse = float((mask * (render.clamp(0, 1) - image) ** 2).sum() / (3 * mask.sum().clamp_min(1.0)))
        values.append(10 * math.log10(1.0 / max(mse, 1e-10)))
    return float(np.mean(values)) if values else float("nan")


def write_preview(path, params, views: list[View], sh_degree: int, renderer: str, count: int = 4) -> None:
    """Contact sheet: for a few views, the frame's head box above the render of it."""
    from .workspace import atomic_write_bytes

    picks = [views[i] for i in np.linspace(0, len(views) - 1, min(count, len(views))).round().astype(int)]
    tiles = []
    for view in picks:
        render, _, image, _ = render_view(params, view, sh_degree, renderer)
        pair = torch.cat([image, render.clamp(0, 1)], dim=0)  # frame above render
        tiles.append((pair.cpu().numpy() * 255).astype(np.uint8))
    height = max(t.shape[0] for t in tiles)
    tiles = [cv2.copyMakeBorder(t, 0, height - t.shape[0], 0, 4, cv2.BORDER_CONSTANT) for t in tiles]
    sheet = cv2.cvtColor(np.concatenate(tiles, axis=1), cv2.COLOR_RGB2BGR)
    ok, png = cv2.imencode(".png", sheet)
    if ok:
        atomic_write_bytes(path, png.tobytes())
