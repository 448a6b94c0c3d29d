"""Stage 4: optimise Gaussians against the registered frames, on head pixels only.

Loss per step (one view, rendered only inside the head's box):
    (1 - w) * masked L1 + w * masked (1 - SSIM)   on head pixels (soft mask weights), w = 0.2
    + bg_alpha_weight * mean(alpha * (1 - mask))  drives opacity to zero off the head
On the CPU backends only the 16x16 tiles the loss looks at are rendered: those holding head pixels
(grown by SSIM's window), plus a random share `bg_tile_share` of the box's other tiles, whose
alpha penalty counts 1 / share, so that the penalty is the same on average. With
`fine_pixel_stride` s > 1 (the default: 2) the full-resolution steps render every s-th pixel
each way from a random phase: the full-resolution image at those pixels, for ~1/s^2 of the work.
A random background colour each step keeps the head opaque instead of borrowing the background.
Densification follows the 3DGS rules as gsplat applies them (strategy.py), one Adam optimizer per parameter.
Each view's camera pose is refined with the Gaussians after a warm-up (pose.py, `cfg.pose_lr`).
Every knob is in TrainConfig; the rasterizer backend follows from the device of the views.

On the CPU a run is a function of its inputs, `cfg.seed` and the thread count: the view order,
the backgrounds and the split draws come from the seed, and the CPU kernels write one gradient per
(tile, Gaussian) entry, no atomics. gsplat's CUDA backward adds atomically, so CUDA runs differ in
their last bits from run to run.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import TrainConfig
from .core.ply import Splats
from .core.cameras import CameraFrame
from .gaussians import activated, init_splats, splats_from_params
from .pose import PoseRefiner
from .render import rasterize
from .render.device import backend_for
from .render.projection import TILE_SIZE, strided_camera
from .stage import StageContext
from .strategy import scaled_strategy
from .views import View


@dataclass
class TrainResult:
    params: torch.nn.ParameterDict  # raw parameters (for rendering the report's figures)
    splats: Splats  # the same, as plain arrays: scene.ply
    summary: dict
    cameras: list[CameraFrame]  # the views' cameras as trained: refined when cfg.pose_lr > 0


def train(views: list[View], xyz: np.ndarray, rgb: np.ndarray, cfg: TrainConfig, ctx: StageContext) -> TrainResult:
    """Optimise Gaussians made from the sparse points `xyz`/`rgb` against `views`."""
    with thread_pools(cfg.threads, ctx.device):
        return _train(views, xyz, rgb, cfg, ctx)


def _train(views: list[View], xyz: np.ndarray, rgb: np.ndarray, cfg: TrainConfig, ctx: StageContext) -> TrainResult:
    emit = ctx.emit
    device = ctx.device
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    tile_rng = np.random.default_rng([cfg.seed, 1])  # its own stream: the views' order stays the seed's
    # gsplat renders every tile anyway; the share only saves work on the CPU backends
    on_gpu = backend_for(device) == "gsplat"
    bg_share = 1.0 if on_gpu else cfg.bg_tile_share
    fine_stride = 1 if on_gpu else cfg.fine_pixel_stride
    crops = {}  # (view, downscale, phase) -> sampled_crop(...): computed once
    params = init_splats(xyz, rgb, cfg.sh_degree, device, cfg.init_opacity)
    centers = np.array([v.camera.center for v in views])
    scene_scale = 1.1 * float(np.linalg.norm(centers - centers.mean(0), axis=1).max() or 1.0)
    optimizers = make_optimizers(params, scene_scale, cfg)
    means_decay = cfg.lr_means_final_fraction ** (1.0 / max(cfg.num_iters, 1))
    strategy = scaled_strategy(cfg.num_iters, cfg.max_gaussians, cfg.grow_grad2d)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=scene_scale)
    sh_start = int(cfg.sh_start_fraction * cfg.num_iters)  # degree 1 once the base colours have settled
    # Pose refinement (pose.py) once the Gaussians are more than blobs; the first view stays fixed.
    poses = PoseRefiner(len(views), cfg.pose_lr, scene_scale, device) if cfg.pose_lr > 0 else None
    pose_start = int(cfg.pose_start_fraction * cfg.num_iters)

    emit("train", 0.0, f"training {len(params['means'])} Gaussians on {len(views)} views")
    started, losses, order = time.time(), [], []
    history = {"step": [], "loss": [], "gaussians": []}  # every 10 steps, for report.html's plot
    for step in range(cfg.num_iters):
        if not order:
            order = list(rng.permutation(len(views)))
        index = order.pop()
        view = views[index]
        downscale = 2 if step < cfg.coarse_fraction * cfg.num_iters else 1
        stride = fine_stride if downscale == 1 else 1
        phase = tuple(int(o) for o in tile_rng.integers(stride, size=2)) if stride > 1 else (0, 0)
        if (index, downscale, phase) not in crops:
            crops[index, downscale, phase] = sampled_crop(view, downscale, stride, *phase)
        image, mask, K, w, h, head = crops[index, downscale, phase]
        tile_mask, bg_weight = sample_tiles(head, bg_share, tile_rng, h, w)
        background = torch.rand(3, device=device)
        splats = activated(params)
        viewmat = poses.viewmat(index, view.viewmat) if poses is not None and step >= pose_start else view.viewmat
        render, alpha, info = rasterize(
            splats["means"], splats["quats"], splats["scales"], splats["opacities"], splats["colors"],
            viewmat, K, w, h, sh_degree=cfg.sh_degree if step >= sh_start else 0,
            backgrounds=background, tile_mask=tile_mask, pixel_stride=stride)
        strategy.step_pre_backward(params, optimizers, state, step, info)
        loss = head_loss(render, alpha, image, mask, cfg, bg_weight)
        loss.backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        for group in optimizers["means"].param_groups:
            group["lr"] *= means_decay
        if poses is not None:
            poses.step(index)
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
        **(poses.summary() if poses is not None else PoseRefiner.UNMOVED),
    }
    cameras = [v.camera for v in views] if poses is None else poses.refined_cameras([v.camera for v in views])
    emit("train", 1.0, f"{len(splats)} Gaussians")
    return TrainResult(params=params, splats=splats, summary=summary, cameras=cameras)


def make_optimizers(params, scene_scale: float, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    """One Adam per parameter (what the densification strategy expects), steps from cfg."""
    lrs = {"means": cfg.lr_means * scene_scale, "scales": cfg.lr_scales, "quats": cfg.lr_quats,
           "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN}
    return {name: torch.optim.Adam([{"params": params[name], "lr": lr, "name": name}], eps=1e-15)
            for name, lr in lrs.items()}


@contextlib.contextmanager
def thread_pools(threads: int, device):
    """One knob for every thread pool (0: every core), restored on exit. numba's kernels and OpenCV
    get that many. On the CPU PyTorch gets one: its ops here are small (milliseconds), each a
    parallel region of its own OpenMP runtime (not numba's), whose waiting threads spin on the
    cores the other pool needs; on 2 loaded cores a 2-thread SSIM took 1 s instead of 0.04 s."""
    import cv2
    import numba

    n = threads or os.cpu_count() or 1
    before = numba.get_num_threads(), cv2.getNumThreads(), torch.get_num_threads()
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    cv2.setNumThreads(n)
    torch.set_num_threads(1 if torch.device(device).type == "cpu" else n)
    try:
        yield n
    finally:
        numba.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
        torch.set_num_threads(before[2])


SSIM_RADIUS = 5  # the SSIM window is 11 x 11


def head_tiles(mask: torch.Tensor) -> torch.Tensor:
    """[H, W, 1] soft mask -> [ceil(H/16), ceil(W/16)] bool: the tiles that hold a head pixel or lie
    within SSIM's window of one (the masked SSIM of a head pixel reads its whole window)."""
    h, w = mask.shape[:2]
    head = (mask[..., 0] > 0).float()[None, None]
    head = F.max_pool2d(head, 2 * SSIM_RADIUS + 1, stride=1, padding=SSIM_RADIUS)
    ty, tx = math.ceil(h / TILE_SIZE), math.ceil(w / TILE_SIZE)
    head = F.pad(head, (0, tx * TILE_SIZE - w, 0, ty * TILE_SIZE - h))
    return F.max_pool2d(head, TILE_SIZE)[0, 0] > 0


def sampled_crop(view: View, downscale: int, stride: int = 1, offset_x: int = 0, offset_y: int = 0):
    """The view's head crop at 1 / downscale, then its every stride-th pixel each way from the
    offsets (the camera to render it with: `strided_camera`): (image, mask, K, w, h, head tiles)."""
    image, mask, K, w, h = view.crop(downscale=downscale)
    if stride > 1:
        image = image[offset_y::stride, offset_x::stride].contiguous()
        mask = mask[offset_y::stride, offset_x::stride].contiguous()
        K = strided_camera(K, stride, offset_x, offset_y)
        h, w = image.shape[:2]
    return image, mask, K, w, h, head_tiles(mask)


def sample_tiles(head: torch.Tensor, share: float, rng: np.random.Generator, h: int, w: int):
    """The tiles to render this step and the alpha penalty's per-pixel weight [h, w, 1] (None:
    every tile, weight 1). Every head tile, plus each other tile with probability `share`,
    weighted 1 / share so that the penalty's expectation is the full crop's."""
    if share >= 1.0:
        return None, None
    drawn = torch.from_numpy(rng.random(tuple(head.shape)) < share).to(head.device)
    tiles = head | drawn
    weight = head.float() + (drawn & ~head).float() / share  # 0 on the tiles not rendered
    weight = weight.repeat_interleave(TILE_SIZE, 0).repeat_interleave(TILE_SIZE, 1)[:h, :w, None]
    return tiles, weight


def head_loss(render, alpha, image, mask, cfg: TrainConfig, bg_weight=None) -> torch.Tensor:
    """render, image [H, W, 3]; alpha, mask [H, W, 1]; bg_weight [H, W, 1] weighs the alpha penalty
    per pixel (sample_tiles), None = 1 everywhere."""
    weight = mask.sum().clamp_min(1.0)
    l1 = (mask * (render - image).abs()).sum() / (3 * weight)
    ssim_map = ssim(render, image)  # [H, W, 1]
    ssim_term = (mask * (1 - ssim_map)).sum() / weight
    off_head = alpha * (1 - mask)
    bg_alpha = off_head.mean() if bg_weight is None else (off_head * bg_weight).sum() / off_head.numel()
    return (1 - cfg.ssim_weight) * l1 + cfg.ssim_weight * ssim_term + cfg.bg_alpha_weight * bg_alpha


@functools.lru_cache(maxsize=8)
def _gauss_window(device: str, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    return (g / g.sum()).to(device)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM of [H, W, 3] images (11x11 Gaussian window, sigma 1.5, replicate padding),
    channel mean: [H, W, 1].

    The window is separable: two depthwise 1D convolutions over all fifteen statistic planes at
    once (11 taps a pixel each way). On one CPU thread, 330 x 250 px, forward and backward: 37 ms,
    against 58 ms for the dense blur-matrix products used before.
    """
    x, y = a.permute(2, 0, 1), b.permute(2, 0, 1)  # [3, H, W]
    stats = torch.cat([x, y, x * x, y * y, x * y])[None]  # [1, 15, H, W]
    g = _gauss_window(str(a.device)).to(a.dtype)
    n, r = stats.shape[1], g.numel() // 2
    stats = F.pad(stats, (r, r, r, r), mode="replicate")
    stats = F.conv2d(stats, g.view(1, 1, 1, -1).expand(n, 1, 1, -1), groups=n)
    blurred = F.conv2d(stats, g.view(1, 1, -1, 1).expand(n, 1, -1, 1), groups=n)[0]
    mx, my, xx, yy, xy = blurred.split(3)
    sxx, syy, sxy = xx - mx * mx, yy - my * my, xy - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean(dim=0)[..., None]
