"""The PyTorch steps before compositing: EWA projection, SH colours, tile binning.

The "torch" backend uses them as they are (autograd differentiates them); the "cpu" backend runs
the same maths in numba kernels (cpu_projection.py), tested against these.

Conventions follow gsplat 1.5.3 (`fully_fused_projection` in its CUDA code, `_torch_impl.py`),
so that all backends draw the same image:

- pinhole camera, OpenCV axes; a Gaussian is culled when its depth <= `NEAR_PLANE`;
- `EPS2D` is added to the diagonal of the 2D covariance (a pixel-sized blur);
- conics are the upper triangle (a, b, c) of the inverse 2D covariance [[a, b], [b, c]];
- the pixel box of a Gaussian is gsplat's opacity-aware one: it bounds exactly the ellipse where
  alpha >= 1/255, so tile binning never drops a pixel that the per-pixel loop would draw;
- SH colours are `max(eval + 0.5, 0)`, viewed from the camera centre towards each mean.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.sh import SH_C0, band_terms

NEAR_PLANE = 0.01
EPS2D = 0.3
TILE_SIZE = 16
ALPHA_MIN = 1.0 / 255.0
"""A Gaussian whose alpha at a pixel is below this is skipped there."""
ALPHA_MAX = 0.99
"""Alpha is clamped to this (Inria's value; gsplat uses 0.999)."""
T_MIN = 1e-4
"""A pixel stops at the first Gaussian that would bring its transmittance to this or below."""
MAX_EXTEND = 3.33
"""Upper bound of the box half-size in standard deviations (gsplat's); only binds for opacity > 1."""



class Projected(NamedTuple):
    """Gaussians seen from one camera: what a compositor needs, plus what `info` reports."""

    means2d: Tensor  # [1, N, 2] pixel centres; the tensor whose .grad DefaultStrategy reads
    conics: Tensor  # [N, 3] inverse 2D covariance (a, b, c)
    opacities: Tensor  # [N]
    features: Tensor  # [N, D] colours (SH evaluated) or plain features
    depths: Tensor  # [N] camera-space z
    radii: Tensor  # [N, 2] int32 half-size of the pixel box in x, y; 0 = culled
    tile_offsets: Tensor  # [n_tiles + 1] int64; tile t owns gauss_ids[tile_offsets[t]:tile_offsets[t+1]]
    gauss_ids: Tensor  # [M] int64 Gaussian of each (tile, Gaussian) pair, front to back within a tile


def strided_camera(K: Tensor, stride: int, offset_x: int, offset_y: int) -> Tensor:
    """Intrinsics whose pixel (u, v) is the pixel (stride u + offset_x, stride v + offset_y) of the
    camera K (a fine pixel's centre stride u + offset + 0.5 lands on u + 0.5). Rendered with
    `rasterize(..., pixel_stride=stride)` it gives the fine image's values at those pixels."""
    Ks = K.clone()
    Ks[0, 0], Ks[1, 1] = K[0, 0] / stride, K[1, 1] / stride
    Ks[0, 2] = (K[0, 2] - offset_x - 0.5) / stride + 0.5
    Ks[1, 2] = (K[1, 2] - offset_y - 0.5) / stride + 0.5
    return Ks


def quat_scale_to_covar(
    quats: Tensor,  # [N, 4] w, x, y, z (any norm)
    scales: Tensor,  # [N, 3]
) -> Tensor:  # [N, 3, 3]
    """Sigma = R S S^T R^T."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)
    M = R * scales[:, None, :]  # [N, 3, 3]
    return M @ M.transpose(1, 2)


def project_gaussians(
    means: Tensor,  # [N, 3] world
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    viewmat: Tensor,  # [4, 4] world->camera, OpenCV
    K: Tensor,  # [3, 3]
    width: int,
    height: int,
    eps2d: float = EPS2D,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EWA splatting: returns means2d [N, 2], conics [N, 3], depths [N], radii [N, 2] int32.
    `eps2d` is the blur added to the 2D covariance, in this camera's pixels squared."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    means_c = means @ R.T + t  # [N, 3]
    covars_c = R @ quat_scale_to_covar(quats, scales) @ R.T  # [N, 3, 3]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]

    tx, ty, tz = means_c.unbind(-1)  # [N]
    in_front = tz > NEAR_PLANE
    # Culled Gaussians stay in the graph; a safe depth keeps their (unused) values and grads finite.
    tz = torch.where(in_front, tz, torch.ones_like(tz))
    means2d = torch.stack([fx * tx / tz + cx, fy * ty / tz + cy], dim=-1)  # [N, 2]

    # The Jacobian is taken at a point clamped to 1.3x the field of view (as in 3DGS and gsplat):
    # far off-screen Gaussians would otherwise get huge, smeared footprints.
    lim_x = 0.3 * 0.5 * width / fx
    lim_y = 0.3 * 0.5 * height / fy
    u = torch.clamp(tx / tz, min=-(cx / fx + lim_x), max=(width - cx) / fx + lim_x)  # [N]
    v = torch.clamp(ty / tz, min=-(cy / fy + lim_y), max=(height - cy) / fy + lim_y)  # [N]
    zero = torch.zeros_like(tz)
    J = torch.stack([fx / tz, zero, -fx * u / tz, zero, fy / tz, -fy * v / tz], dim=-1).reshape(-1, 2, 3)
    cov2d = J @ covars_c @ J.transpose(1, 2)  # [N, 2, 2]
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)

    c00, c01, c11 = cov2d[:, 0, 0], 0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0]), cov2d[:, 1, 1]
    det = c00 * c11 - c01 * c01  # [N]
    visible = in_front & (det > 0) & (opacities > ALPHA_MIN)
    det = torch.where(visible, det, torch.ones_like(det))
    conics = torch.stack([c11 / det, -c01 / det, c00 / det], dim=-1)  # [N, 3]

    with torch.no_grad():
        # alpha >= 1/255  <=>  d^T cov2d^-1 d <= extend^2, whose ellipse spans extend*sqrt(c00) in x.
        extend = torch.sqrt(2.0 * torch.log(opacities.clamp_min(ALPHA_MIN) / ALPHA_MIN)).clamp_max(MAX_EXTEND)
        radii = torch.ceil(extend[:, None] * torch.stack([c00, c11], -1).clamp_min(0).sqrt())  # [N, 2]
        x, y = means2d.unbind(-1)
        rx, ry = radii.unbind(-1)
        on_screen = (x + rx > 0) & (x - rx < width) & (y + ry > 0) & (y - ry < height)
        keep = visible & on_screen & (radii > 0).all(-1)
        radii = torch.where(keep[:, None], radii, torch.zeros_like(radii)).to(torch.int32)
    return means2d, conics, means_c[:, 2], radii


def eval_sh(
    degree: int,
    dirs: Tensor,  # [N, 3] view directions (any norm)
    coeffs: Tensor,  # [N, K, 3], K >= (degree + 1)^2
) -> Tensor:  # [N, 3]
    """Colours from SH coefficients: max(sum_k basis_k(dir) coeffs_k + 0.5, 0), degrees 0-3."""
    assert 0 <= degree <= 3, degree
    assert coeffs.shape[1] >= (degree + 1) ** 2, coeffs.shape
    result = SH_C0 * coeffs[:, 0]
    if degree > 0:
        x, y, z = F.normalize(dirs, dim=-1).unbind(-1)
        x, y, z = x[:, None], y[:, None], z[:, None]  # [N, 1] to broadcast over RGB
        k = 1
        for band in range(1, degree + 1):
            for term in band_terms(x, y, z, band):
                result = result + term * coeffs[:, k]
                k += 1
    return torch.clamp_min(result + 0.5, 0.0)


def view_features(sh_degree: int | None, means: Tensor, colors: Tensor, viewmat: Tensor) -> Tensor:
    """What the compositor blends: `colors` as they are (sh_degree None), else the SH colours seen
    from the camera of `viewmat` [N, 3]."""
    if sh_degree is None:
        return colors
    campos = -viewmat[:3, :3].T @ viewmat[:3, 3]  # [3] camera centre in world
    return eval_sh(sh_degree, means - campos, colors)


@torch.no_grad()
def bin_tiles(
    means2d: Tensor,  # [N, 2]
    radii: Tensor,  # [N, 2] int32, 0 = culled
    depths: Tensor,  # [N]
    width: int,
    height: int,
    tile_size: int = TILE_SIZE,
    tile_mask: Tensor | None = None,  # [tiles_y, tiles_x] bool: list pairs only in these tiles
) -> tuple[Tensor, Tensor]:
    """List every (tile, Gaussian) pair whose box touches the tile, front to back per tile.

    Returns tile_offsets [n_tiles + 1] int64 (tiles row-major) and gauss_ids [M] int64. With
    `tile_mask`, the tiles outside it get empty lists: they render nothing (alpha 0), cost nothing.
    """
    device = means2d.device
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n = means2d.shape[0]
    r = radii.to(means2d.dtype)
    lo = torch.floor((means2d - r) / tile_size).long()  # [N, 2] first tile (x, y)
    hi = torch.ceil((means2d + r) / tile_size).long()  # [N, 2] one past the last tile
    lo[:, 0].clamp_(0, tiles_x), hi[:, 0].clamp_(0, tiles_x)
    lo[:, 1].clamp_(0, tiles_y), hi[:, 1].clamp_(0, tiles_y)
    span = (hi - lo).clamp_min(0)  # [N, 2]
    counts = span[:, 0] * span[:, 1] * (radii > 0).all(-1)  # [N]

    gauss_ids = torch.repeat_interleave(torch.arange(n, device=device), counts)  # [M]
    first = torch.cumsum(counts, 0) - counts  # [N] where each Gaussian's pairs start
    k = torch.arange(gauss_ids.shape[0], device=device) - first[gauss_ids]  # [M] index inside its box
    w = span[gauss_ids, 0]
    tile_ids = (lo[gauss_ids, 1] + k // w) * tiles_x + lo[gauss_ids, 0] + k % w  # [M]
    if tile_mask is not None:
        assert tile_mask.shape == (tiles_y, tiles_x), (tile_mask.shape, tiles_y, tiles_x)
        selected = tile_mask.reshape(-1)[tile_ids]
        gauss_ids, tile_ids = gauss_ids[selected], tile_ids[selected]

    depth_rank = torch.empty(n, dtype=torch.long, device=device)
    depth_rank[torch.argsort(depths, stable=True)] = torch.arange(n, device=device)
    keys = tile_ids * max(n, 1) + depth_rank[gauss_ids]  # [M] unique
    if device.type == "cpu":
        # torch's parallel CPU sort collapses when cores are busy (80k keys on 2 loaded cores:
        # 190 ms with 2 threads, 4 ms with 1); numpy's sort is single-threaded.
        order = torch.from_numpy(np.argsort(keys.numpy()))
    else:
        order = torch.argsort(keys)
    tile_counts = torch.bincount(tile_ids, minlength=tiles_x * tiles_y)  # [n_tiles]
    tile_offsets = torch.cat([tile_counts.new_zeros(1), torch.cumsum(tile_counts, 0)])
    return tile_offsets, gauss_ids[order]


def prepare(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, K, 3] SH if sh_degree is not None, else [N, D]
    viewmat: Tensor,  # [4, 4]
    K: Tensor,  # [3, 3]
    width: int,
    height: int,
    sh_degree: int | None,
    tile_mask: Tensor | None = None,
    eps2d: float = EPS2D,
) -> Projected:
    """Project, colour and bin the Gaussians: everything before compositing. With `tile_mask`
    only those tiles are binned, and a Gaussian drawn in none of them gets radii 0 (not seen in
    this view, as far as densification's statistics go)."""
    means2d, conics, depths, radii = project_gaussians(means, quats, scales, opacities, viewmat, K, width, height,
                                                       eps2d)
    features = view_features(sh_degree, means, colors, viewmat)
    tile_offsets, gauss_ids = bin_tiles(means2d.detach(), radii, depths.detach(), width, height,
                                        tile_mask=tile_mask)
    if tile_mask is not None:
        drawn = torch.zeros(radii.shape[0], dtype=torch.bool, device=radii.device)
        drawn[gauss_ids] = True
        radii = torch.where(drawn[:, None], radii, torch.zeros_like(radii))
    return Projected(means2d[None], conics, opacities, features, depths, radii, tile_offsets, gauss_ids)


def make_info(projected: Projected, width: int, height: int) -> dict:
    """The `info` dict in gsplat's unpacked layout, as DefaultStrategy reads it."""
    return {
        "means2d": projected.means2d,  # [1, N, 2]
        "radii": projected.radii[None],  # [1, N, 2] int32
        "depths": projected.depths[None],  # [1, N]
        "width": width,
        "height": height,
        "n_cameras": 1,
        "gaussian_ids": None,
    }
