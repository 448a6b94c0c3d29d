"""Compiled CPU rasterizer: numba kernels for compositing, forward and analytic backward.

Projection, SH and binning before it are compiled too (cpu_projection.py). Each kernel here runs
`prange` over 16x16 tiles, one tile per thread at a time, and walks each pixel's depth-sorted list:

- forward, front to back, with the per-pixel rules of gsplat's CUDA kernel: skip alpha < 1/255, clamp alpha to
  0.99, stop before the Gaussian that would leave T <= 1e-4. It saves per pixel the final T and
  how many list entries it consumed (the last contributor + 1);
- backward, back to front from that last contributor (3DGS / gsplat), recovering T by division.

A (tile, Gaussian) list entry belongs to one tile, hence to one thread: the backward writes its
gradients per entry without races, then `index_add_` sums entries into Gaussians.

The kernels compute in the inputs' dtype (float32 in training: half the memory traffic, `expf`),
with every constant passed in as an array of that dtype, because numba promotes a float32 times a
Python float literal to float64. Only the transmittance T and the pixel's running sums stay in
float64 registers: alpha is float32, so 1 - alpha is exact in float64, and the backward's division
T / (1 - alpha) recovers the forward's T to float64 rounding instead of float32's.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from .projection import ALPHA_MAX, ALPHA_MIN, T_MIN, TILE_SIZE


def composite(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    features: Tensor,  # [N, D]
    tile_offsets: Tensor,  # [n_tiles + 1] int64
    gauss_ids: Tensor,  # [M] int64, front to back within each tile
    width: int,
    height: int,
    backgrounds: Tensor | None = None,  # [D]
) -> tuple[Tensor, Tensor]:  # render [H, W, D], alpha [H, W, 1]
    """Same contract as `torch_backend.composite`; CPU tensors only."""
    if means2d.device.type != "cpu":
        raise ValueError(f"the cpu backend needs CPU tensors, got {means2d.device}")
    render, alpha = _Composite.apply(means2d, conics, opacities, features, tile_offsets, gauss_ids, width, height)
    if backgrounds is not None:
        # In torch, so that autograd routes the background's share into alpha's gradient.
        render = render + (1.0 - alpha) * backgrounds
    return render, alpha


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, tile_offsets, gauss_ids, width, height):
        inputs = _to_numpy(means2d, conics, opacities, features, tile_offsets, gauss_ids)
        dtype = inputs[0].dtype
        render = np.zeros((height, width, features.shape[1]), dtype)
        T_final = np.ones((height, width))  # float64: the backward recovers T from it
        n_used = np.zeros((height, width), dtype=np.int32)
        _forward_kernel(*inputs, _balanced_order(tile_offsets.numpy()), _constants(dtype), width, height,
                        render, T_final, n_used)

        ctx.save_for_backward(means2d, conics, opacities, features, tile_offsets, gauss_ids)
        ctx.T_final, ctx.n_used, ctx.width, ctx.height = T_final, n_used, width, height
        alpha = torch.from_numpy((1.0 - T_final).astype(dtype))[..., None]
        return torch.from_numpy(render).to(features.dtype), alpha.to(opacities.dtype)

    @staticmethod
    def backward(ctx, v_render, v_alpha):  # [H, W, D], [H, W, 1]
        means2d, conics, opacities, features, tile_offsets, gauss_ids = ctx.saved_tensors
        inputs = _to_numpy(means2d, conics, opacities, features, tile_offsets, gauss_ids)
        dtype = inputs[0].dtype
        tdtype = torch.from_numpy(inputs[0][:0]).dtype
        M, D = gauss_ids.shape[0], features.shape[1]
        # Gradients per list entry; each entry is written by the one thread that owns its tile.
        v_means2d_e, v_conics_e = np.zeros((M, 2), dtype), np.zeros((M, 3), dtype)
        v_opacities_e, v_features_e = np.zeros(M, dtype), np.zeros((M, D), dtype)
        _backward_kernel(
            *inputs, _balanced_order(tile_offsets.numpy()), _constants(dtype), ctx.width, ctx.height,
            ctx.T_final, ctx.n_used,
            v_render.detach().to(tdtype).contiguous().numpy(),
            v_alpha.detach().to(tdtype)[..., 0].contiguous().numpy(),
            v_means2d_e, v_conics_e, v_opacities_e, v_features_e,
        )  # fmt: skip

        def per_gaussian(per_entry: np.ndarray, like: Tensor) -> Tensor:
            summed = torch.zeros(like.shape, dtype=tdtype).index_add_(0, gauss_ids, torch.from_numpy(per_entry))
            return summed.to(like.dtype)

        return (
            per_gaussian(v_means2d_e, means2d),
            per_gaussian(v_conics_e, conics),
            per_gaussian(v_opacities_e, opacities),
            per_gaussian(v_features_e, features),
            None, None, None, None,
        )  # fmt: skip


def _to_numpy(means2d, conics, opacities, features, tile_offsets, gauss_ids) -> tuple[np.ndarray, ...]:
    """The kernels' inputs, all in one float dtype: float64 if any input is float64, else float32."""
    dtype = torch.float64 if torch.float64 in (means2d.dtype, conics.dtype, opacities.dtype, features.dtype) \
        else torch.float32

    def floats(x: Tensor) -> np.ndarray:
        return x.detach().to(dtype).contiguous().numpy()

    return (floats(means2d), floats(conics), floats(opacities), floats(features), tile_offsets.numpy(),
            gauss_ids.numpy())


def _constants(dtype) -> np.ndarray:
    """The kernels' constants in their compute dtype (see the module's docstring): half, zero,
    ALPHA_MAX, ALPHA_MIN."""
    return np.array([0.5, 0.0, ALPHA_MAX, ALPHA_MIN], dtype=dtype)


def _balanced_order(tile_offsets: np.ndarray) -> np.ndarray:  # [n_tiles + 1] -> [n_tiles]
    """Order in which `prange` visits tiles.

    prange hands each thread one contiguous block of iterations; dealing the tiles round-robin,
    longest lists first, gives every block a similar share of the work wherever the head is.
    """
    n_threads = numba.get_num_threads()
    by_cost = np.argsort(-np.diff(tile_offsets), kind="stable")
    return np.concatenate([by_cost[k::n_threads] for k in range(n_threads)])


@njit(parallel=True, cache=True)
def _forward_kernel(
    means2d, conics, opacities, features,  # [N, 2], [N, 3], [N], [N, D] float32 or float64
    tile_offsets, gauss_ids, tile_order,  # [n_tiles + 1], [M], [n_tiles] int64
    consts,  # _constants() in the inputs' dtype
    width, height,
    render, T_final, n_used,  # out: [H, W, D] zeros (inputs' dtype), [H, W] float64 ones, [H, W] int32 zeros
):  # fmt: skip
    for i in prange(tile_order.shape[0]):
        if tile_offsets[tile_order[i] + 1] > tile_offsets[tile_order[i]]:  # an empty tile keeps its zeros
            _forward_tile(
                means2d, conics, opacities, features, tile_offsets, gauss_ids, tile_order[i], consts, width,
                height, render, T_final, n_used,
            )  # fmt: skip


@njit(cache=True)
def _forward_tile(means2d, conics, opacities, features, tile_offsets, gauss_ids, t, consts, width, height,
                  render, T_final, n_used):  # fmt: skip
    xy, abc, opac, sigma_cut, feat = _gather_tile(means2d, conics, opacities, features, tile_offsets, gauss_ids, t)
    half, zero, alpha_max, alpha_min = consts[0], consts[1], consts[2], consts[3]
    D = feat.shape[1]
    tiles_x = (width + TILE_SIZE - 1) // TILE_SIZE
    x0, y0 = (t % tiles_x) * TILE_SIZE, (t // tiles_x) * TILE_SIZE
    cx, cy = _pixel_centres(x0, y0, consts)
    rows, row_len, row_lo, row_hi = _row_lists(xy, abc, sigma_cut, x0, y0)
    pix = np.empty(D)  # float64 running sums
    for py in range(y0, min(y0 + TILE_SIZE, height)):
        r = py - y0
        for px in range(x0, min(x0 + TILE_SIZE, width)):
            for d in range(D):
                pix[d] = 0.0
            T = 1.0
            used = 0
            x = px + 0.5
            for j in range(row_len[r]):
                if x < row_lo[r, j] or x > row_hi[r, j]:
                    continue
                k = rows[r, j]
                dx, dy = xy[k, 0] - cx[px - x0], xy[k, 1] - cy[r]
                sigma = half * (abc[k, 0] * dx * dx + abc[k, 2] * dy * dy) + abc[k, 1] * dx * dy
                if sigma < zero or sigma > sigma_cut[k]:
                    continue
                alpha = min(alpha_max, opac[k] * math.exp(-sigma))
                if alpha < alpha_min:
                    continue
                next_T = T * (1.0 - alpha)
                if next_T <= T_MIN:
                    break
                w = alpha * T
                for d in range(D):
                    pix[d] += feat[k, d] * w
                T = next_T
                used = k + 1
            for d in range(D):
                render[py, px, d] = pix[d]
            T_final[py, px] = T
            n_used[py, px] = used


@njit(parallel=True, cache=True)
def _backward_kernel(
    means2d, conics, opacities, features,  # [N, 2], [N, 3], [N], [N, D] float32 or float64
    tile_offsets, gauss_ids, tile_order,  # [n_tiles + 1], [M], [n_tiles] int64
    consts,  # _constants() in the inputs' dtype
    width, height,
    T_final, n_used,  # [H, W] float64, [H, W] int32 saved by the forward
    v_render, v_alpha,  # [H, W, D], [H, W] incoming gradients (inputs' dtype)
    v_means2d_e, v_conics_e, v_opacities_e, v_features_e,  # out, zeros: [M, 2], [M, 3], [M], [M, D]
):  # fmt: skip
    for i in prange(tile_order.shape[0]):
        if tile_offsets[tile_order[i] + 1] > tile_offsets[tile_order[i]]:
            _backward_tile(
                means2d, conics, opacities, features, tile_offsets, gauss_ids, tile_order[i], consts, width,
                height, T_final, n_used, v_render, v_alpha, v_means2d_e, v_conics_e, v_opacities_e, v_features_e,
            )  # fmt: skip


@njit(cache=True)
def _backward_tile(means2d, conics, opacities, features, tile_offsets, gauss_ids, t, consts, width, height,
                   T_final, n_used, v_render, v_alpha, v_means2d_e, v_conics_e, v_opacities_e, v_features_e):  # fmt: skip
    xy, abc, opac, sigma_cut, feat = _gather_tile(means2d, conics, opacities, features, tile_offsets, gauss_ids, t)
    half, zero, alpha_max, alpha_min = consts[0], consts[1], consts[2], consts[3]
    D = feat.shape[1]
    start = tile_offsets[t]
    tiles_x = (width + TILE_SIZE - 1) // TILE_SIZE
    x0, y0 = (t % tiles_x) * TILE_SIZE, (t // tiles_x) * TILE_SIZE
    cx, cy = _pixel_centres(x0, y0, consts)
    rows, row_len, row_lo, row_hi = _row_lists(xy, abc, sigma_cut, x0, y0)
    behind = np.empty(D)  # float64: sum of feature * weight over the Gaussians behind the current one
    for py in range(y0, min(y0 + TILE_SIZE, height)):
        r = py - y0
        for px in range(x0, min(x0 + TILE_SIZE, width)):
            T_end = T_final[py, px]
            T = T_end
            for d in range(D):
                behind[d] = 0.0
            last = n_used[py, px]
            x = px + 0.5
            for j in range(row_len[r] - 1, -1, -1):
                k = rows[r, j]
                if k >= last or x < row_lo[r, j] or x > row_hi[r, j]:
                    continue
                dx, dy = xy[k, 0] - cx[px - x0], xy[k, 1] - cy[r]
                sigma = half * (abc[k, 0] * dx * dx + abc[k, 2] * dy * dy) + abc[k, 1] * dx * dy
                if sigma < zero or sigma > sigma_cut[k]:
                    continue
                vis = math.exp(-sigma)
                alpha = min(alpha_max, opac[k] * vis)
                if alpha < alpha_min:
                    continue
                ra = 1.0 / (1.0 - alpha)
                T *= ra  # now the transmittance in front of Gaussian k
                w = alpha * T
                # d(pixel)/d(alpha_k): its own colour, minus what it hides behind it; the
                # pixel's alpha is 1 - T_end, and T_end carries a factor (1 - alpha_k).
                v_a = T_end * ra * v_alpha[py, px]
                e = start + k
                for d in range(D):
                    v_features_e[e, d] += w * v_render[py, px, d]
                    v_a += (feat[k, d] * T - behind[d] * ra) * v_render[py, px, d]
                    behind[d] += feat[k, d] * w
                if opac[k] * vis <= alpha_max:  # a clamped alpha passes no gradient
                    v_sigma = -opac[k] * vis * v_a
                    v_opacities_e[e] += vis * v_a
                    v_conics_e[e, 0] += 0.5 * dx * dx * v_sigma
                    v_conics_e[e, 1] += dx * dy * v_sigma
                    v_conics_e[e, 2] += 0.5 * dy * dy * v_sigma
                    v_means2d_e[e, 0] += v_sigma * (abc[k, 0] * dx + abc[k, 1] * dy)
                    v_means2d_e[e, 1] += v_sigma * (abc[k, 1] * dx + abc[k, 2] * dy)


@njit(cache=True)
def _row_lists(xy, abc, sigma_cut, x0, y0):
    """Per pixel row of the tile, the tile's Gaussians whose ellipse {sigma <= cut} crosses the
    row inside the tile, in list order, each with the span of pixel centres x it covers there.

    The pixel loops test only these (half of the tile's list on a trained head, where a Gaussian's
    box is often far larger than its ellipse's part in one row); the per-pixel tests that follow
    are unchanged, so the image is the same. The spans are computed in float64 with a margin on
    the cut: every pixel the float32 test accepts lies inside its span.
    """
    n = xy.shape[0]
    rows = np.empty((TILE_SIZE, n), np.int32)
    row_len = np.zeros(TILE_SIZE, np.int32)
    row_lo, row_hi = np.empty((TILE_SIZE, n)), np.empty((TILE_SIZE, n))
    for k in range(n):
        a, b, c = float(abc[k, 0]), float(abc[k, 1]), float(abc[k, 2])
        mx, my = float(xy[k, 0]), float(xy[k, 1])
        cut = float(sigma_cut[k]) * (1.0 + 1e-4) + 1e-3
        for r in range(TILE_SIZE):
            dy = my - (y0 + r + 0.5)
            if a > 0.0:
                # 0.5 a dx^2 + b dy dx + 0.5 c dy^2 <= cut, dx = mx - x: dx between the roots.
                disc = (b * b - a * c) * dy * dy + 2.0 * a * cut
                if disc < 0.0:
                    continue
                root = math.sqrt(disc)
                lo, hi = mx - (-b * dy + root) / a, mx - (-b * dy - root) / a
                lo, hi = lo - 1e-3, hi + 1e-3
                if hi < x0 or lo > x0 + TILE_SIZE:
                    continue
            else:  # not positive definite: no bound, the per-pixel test decides
                lo, hi = -np.inf, np.inf
            i = row_len[r]
            rows[r, i], row_lo[r, i], row_hi[r, i] = k, lo, hi
            row_len[r] = i + 1
    return rows, row_len, row_lo, row_hi


@njit(cache=True)
def _gather_tile(means2d, conics, opacities, features, tile_offsets, gauss_ids, t):
    """Copy tile t's Gaussians into contiguous arrays (the inner loops read them 256 times)."""
    start, end = tile_offsets[t], tile_offsets[t + 1]
    n = end - start
    dtype = means2d.dtype
    xy, abc = np.empty((n, 2), dtype), np.empty((n, 3), dtype)
    opac, sigma_cut = np.empty(n, dtype), np.empty(n, dtype)
    feat = np.empty((n, features.shape[1]), dtype)
    for k in range(n):
        g = gauss_ids[start + k]
        xy[k, 0], xy[k, 1] = means2d[g, 0], means2d[g, 1]
        abc[k, 0], abc[k, 1], abc[k, 2] = conics[g, 0], conics[g, 1], conics[g, 2]
        opac[k] = opacities[g]
        # Beyond this sigma, alpha < 1/255 for sure: skip without calling exp(). (The margin
        # covers float32 rounding; the alpha test after exp() decides.)
        sigma_cut[k] = math.log(opacities[g] / ALPHA_MIN) + 1e-4
        for d in range(features.shape[1]):
            feat[k, d] = features[g, d]
    return xy, abc, opac, sigma_cut, feat


@njit(cache=True)
def _pixel_centres(x0, y0, consts):
    """A tile's pixel centres (x + 0.5, y + 0.5) in the compute dtype."""
    cx, cy = np.empty(TILE_SIZE, consts.dtype), np.empty(TILE_SIZE, consts.dtype)
    for i in range(TILE_SIZE):
        cx[i] = x0 + i + 0.5
        cy[i] = y0 + i + 0.5
    return cx, cy
