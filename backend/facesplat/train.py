"""Stage 4: optimise Gaussians against the registered frames, on head pixels only.

Loss per step (one view, rendered only inside the head's box):
    (1 - w) * masked L1 + w * masked (1 - SSIM)   on head pixels (soft mask weights), w = 0.2
    + bg_alpha_weight * mean(alpha * (1 - mask))  drives opacity to zero off the head
A random background colour each step keeps the head opaque instead of borrowing the background.
Densification follows the 3DGS rules as gsplat applies them (strategy.py), one Adam optimizer per parameter.
Every knob is in TrainConfig; the rasterizer backend follows from the device of the views.

On the CPU a run is a function of its inputs, `cfg.seed` and the thread count: the view order,
the backgrounds and the split draws come from the seed, and the CPU kernels write one gradient per
(tile, Gaussian) entry, no atomics. gsplat's CUDA backward adds atomically, so CUDA runs differ in
their last bits from run to run.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np
import torch

from .config import TrainConfig
from .core.ply import Splats
from .gaussians import activated, init_splats, splats_from_params
from .render import rasterize
from .stage import StageContext
from .strategy import scaled_strategy
from .views import View


@dataclass
class TrainResult:
    params: torch.nn.ParameterDict  # raw parameters (for rendering the report's figures)
    splats: Splats  # the same, as plain arrays: scene.ply
    summary: dict


def train(views: list[View], xyz: np.ndarray, rgb: np.ndarray, cfg: TrainConfig, ctx: StageContext) -> TrainResult:
    """Optimise Gaussians made from the sparse points `xyz`/`rgb` against `views`."""
    emit = ctx.emit
    device = ctx.device
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    params = init_splats(xyz, rgb, cfg.sh_degree, device, cfg.init_opacity)
    centers = np.array([v.camera.center for v in views])
    scene_scale = 1.1 * float(np.linalg.norm(centers - centers.mean(0), axis=1).max() or 1.0)
    optimizers = make_optimizers(params, scene_scale, cfg)
    means_decay = cfg.lr_means_final_fraction ** (1.0 / max(cfg.num_iters, 1))
    strategy = scaled_strategy(cfg.num_iters, cfg.max_gaussians, cfg.grow_grad2d)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=scene_scale)
    sh_start = int(cfg.sh_start_fraction * cfg.num_iters)  # degree 1 once the base colours have settled

    emit("train", 0.0, f"training {len(params['means'])} Gaussians on {len(views)} views")
    started, losses, order = time.time(), [], []
    history = {"step": [], "loss": [], "gaussians": []}  # every 10 steps, for report.html's plot
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
            backgrounds=background)
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
            history["step"].append(step + 1)
            history["loss"].append(round(float(np.mean(losses[-10:])), 6))
            history["gaussians"].append(len(params["means"]))
            emit("train", (step + 1) / cfg.num_iters,
                 f"step {step + 1}/{cfg.num_iters}, loss {np.mean(losses[-10:]):.4f}, {len(params['means'])} Gaussians")

    splats = splats_from_params(params)
    summary = {
        "gaussians_trained": len(splats),
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "train_seconds_per_step": (time.time() - started) / max(cfg.num_iters, 1),
        "train_history": history,
    }
    emit("train", 1.0, f"{len(splats)} Gaussians")
    return TrainResult(params=params, splats=splats, summary=summary)


def make_optimizers(params, scene_scale: float, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    """One Adam per parameter (what the densification strategy expects), steps from cfg."""
    lrs = {"means": cfg.lr_means * scene_scale, "scales": cfg.lr_scales, "quats": cfg.lr_quats,
           "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN}
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
