"""Compiled CPU projection, SH colours and tile binning: `projection.prepare`, in numba kernels.

`projection.py` is the readable PyTorch version, differentiated by autograd; the "torch" backend
uses it. On a 2-core CPU its ~60 small tensor ops and their backward took a quarter of a
training step (25 ms of ~105 ms for 11k Gaussians, 540 px, one thread): each op is cheap, there
are many. Here one forward kernel and one analytic backward kernel walk the Gaussians once each,
with the same conventions (see projection.py's docstring), and the binning is a counting sort.

Values are computed in float64 and stored in the inputs' dtype. Gradients flow to the means,
quaternions, (activated) scales, SH coefficients and the viewmat (pose refinement), as autograd
would give them through `project_gaussians` and `eval_sh`. A culled Gaussian (radii 0) is in no
tile's list, so the compositor gives it no gradient, and neither does this backward.

The kernels evaluate SH degree 0 and 1 (the training's); higher degrees, and plain features, go
through `projection.view_features`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from ..core.sh import SH_C0, SH_C1
from .projection import ALPHA_MIN, EPS2D, MAX_EXTEND, NEAR_PLANE, TILE_SIZE, Projected, view_features

GRADIENT_CHUNKS = 64
"""The backward sums the viewmat's gradient over this many fixed chunks of Gaussians, then over
the chunks in order: the same sum whatever the thread count or schedule."""


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
    """Same contract as `projection.prepare`; CPU tensors only."""
    in_kernel = sh_degree is not None and sh_degree <= 1
    means2d, conics, depths, radii, colours = _Project.apply(
        means, quats, scales, colors if in_kernel else colors.new_zeros(len(means), 1, 3), viewmat,
        opacities.detach(), K.detach(), width, height, eps2d, sh_degree if in_kernel else -1)
    features = colours if in_kernel else view_features(sh_degree, means, colors, viewmat)
    tile_offsets, gauss_ids, drawn = bin_tiles(means2d.detach(), radii, depths, width, height, tile_mask)
    if tile_mask is not None:
        radii = torch.where(torch.from_numpy(drawn)[:, None], radii, torch.zeros_like(radii))
    return Projected(means2d[None], conics, opacities, features, depths, radii, tile_offsets, gauss_ids)


def bin_tiles(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int,
              tile_mask: Tensor | None = None) -> tuple[Tensor, Tensor, np.ndarray]:
    """`projection.bin_tiles` (the same lists, in the same order) by a counting sort over the
    Gaussians taken front to back; also returns which Gaussians landed in any listed tile."""
    tiles_x, tiles_y = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    if tile_mask is None:
        selected = np.ones(tiles_x * tiles_y, np.bool_)
    else:
        assert tile_mask.shape == (tiles_y, tiles_x), (tile_mask.shape, tiles_y, tiles_x)
        selected = tile_mask.reshape(-1).numpy()
    order = np.argsort(depths.detach().numpy(), kind="stable")
    xy = means2d.numpy()
    tile_offsets, gauss_ids, drawn = _bin_kernel(xy, radii.numpy().astype(xy.dtype), order, selected, tiles_x, tiles_y)
    return torch.from_numpy(tile_offsets), torch.from_numpy(gauss_ids), drawn


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, coeffs, viewmat, opacities, K, width, height, eps2d, sh_degree):
        n, dtype = means.shape[0], _np(means.dtype)
        arrays = _arrays(means, quats, scales, coeffs, viewmat, K)
        means2d, conics = np.empty((n, 2), dtype), np.empty((n, 3), dtype)
        depths, radii, colours = np.empty(n, dtype), np.empty((n, 2), np.int32), np.empty((n, 3), dtype)
        _forward_kernel(*arrays, opacities.to(torch.float64).numpy(), width, height, eps2d, sh_degree,
                        means2d, conics, depths, radii, colours)
        ctx.save_for_backward(means, quats, scales, coeffs, viewmat)
        ctx.arrays, ctx.radii, ctx.eps2d, ctx.sh_degree, ctx.size = arrays, radii, eps2d, sh_degree, (width, height)
        outputs = tuple(torch.from_numpy(a) for a in (means2d, conics, depths, radii, colours))
        ctx.mark_non_differentiable(outputs[2], outputs[3])
        return outputs

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, v_radii, v_colours):
        means, quats, scales, coeffs, viewmat = ctx.saved_tensors
        n = means.shape[0]
        v_means, v_quats, v_scales = np.zeros((n, 3)), np.zeros((n, 4)), np.zeros((n, 3))
        v_coeffs = np.zeros(coeffs.shape)
        v_view_chunks = np.zeros((GRADIENT_CHUNKS, 12))  # d/dR (row-major), d/dt per chunk

        def upstream(v, shape):
            return np.zeros(shape) if v is None else v.detach().to(torch.float64).contiguous().numpy()

        _backward_kernel(*ctx.arrays, ctx.radii, *ctx.size, ctx.eps2d, ctx.sh_degree,
                         upstream(v_means2d, (n, 2)), upstream(v_conics, (n, 3)), upstream(v_colours, (n, 3)),
                         v_means, v_quats, v_scales, v_coeffs, v_view_chunks)
        grads = [torch.from_numpy(g).to(x.dtype) if needed else None for g, x, needed in
                 zip((v_means, v_quats, v_scales, v_coeffs), (means, quats, scales, coeffs), ctx.needs_input_grad)]
        v_viewmat = None
        if ctx.needs_input_grad[4]:
            total = v_view_chunks.sum(0)
            v_viewmat = torch.zeros(4, 4, dtype=torch.float64)
            v_viewmat[:3, :3] = torch.from_numpy(total[:9].reshape(3, 3))
            v_viewmat[:3, 3] = torch.from_numpy(total[9:])
            v_viewmat = v_viewmat.to(viewmat.dtype)
        return (*grads, v_viewmat, None, None, None, None, None, None)


def _np(dtype: torch.dtype):
    return np.float64 if dtype == torch.float64 else np.float32


def _arrays(means, quats, scales, coeffs, viewmat, K) -> tuple[np.ndarray, ...]:
    """The kernels' inputs as contiguous float64 arrays (R, t and fx, fy, cx, cy unpacked)."""
    def f64(x):
        return x.detach().to(torch.float64).contiguous().numpy()

    view, intr = f64(viewmat), f64(K)
    return (f64(means), f64(quats), f64(scales), f64(coeffs), np.ascontiguousarray(view[:3, :3]),
            np.ascontiguousarray(view[:3, 3]), np.array([intr[0, 0], intr[1, 1], intr[0, 2], intr[1, 2]]))


# Small dense products with plain loops: numba's `@` calls BLAS, ~1 us a call, 10 calls a Gaussian.
# Transposes are passed as views (A.T).
@njit(cache=True)
def _mm(A, B, out):  # out = A B
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            s = 0.0
            for k in range(A.shape[1]):
                s += A[i, k] * B[k, j]
            out[i, j] = s


@njit(cache=True)
def _camera_covariance(quat, scale, Rw, Rq, M, RM, cov_c):
    """cov_c = Rw M M^T Rw^T with M = Rq diag(scale), Rq the rotation of the normalised quat.
    Fills Rq, M, RM = Rw M; returns the quaternion's norm and its unit components."""
    norm = max(math.sqrt(quat[0] ** 2 + quat[1] ** 2 + quat[2] ** 2 + quat[3] ** 2), 1e-12)
    qw, qx, qy, qz = quat[0] / norm, quat[1] / norm, quat[2] / norm, quat[3] / norm
    Rq[0, 0], Rq[0, 1], Rq[0, 2] = 1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qw * qz), 2 * (qx * qz + qw * qy)
    Rq[1, 0], Rq[1, 1], Rq[1, 2] = 2 * (qx * qy + qw * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qw * qx)
    Rq[2, 0], Rq[2, 1], Rq[2, 2] = 2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy)
    for i in range(3):
        for j in range(3):
            M[i, j] = Rq[i, j] * scale[j]
    _mm(Rw, M, RM)
    _mm(RM, RM.T, cov_c)
    return norm, qw, qx, qy, qz


@njit(cache=True)
def _camera_point(Rw, t, p):
    """World point p [3] in camera space (OpenCV axes)."""
    tx = Rw[0, 0] * p[0] + Rw[0, 1] * p[1] + Rw[0, 2] * p[2] + t[0]
    ty = Rw[1, 0] * p[0] + Rw[1, 1] * p[1] + Rw[1, 2] * p[2] + t[1]
    tz = Rw[2, 0] * p[0] + Rw[2, 1] * p[1] + Rw[2, 2] * p[2] + t[2]
    return tx, ty, tz


@njit(cache=True)
def _jacobian(tx, ty, tz, intr, width, height, J):
    """EWA Jacobian at the point clamped to 1.3x the field of view (projection.py) into J [2, 3]:
    [[fx/tz, 0, -fx u/tz], [0, fy/tz, -fy v/tz]]; returns u, v and whether each is unclamped."""
    fx, fy, cx, cy = intr[0], intr[1], intr[2], intr[3]
    lim_x, lim_y = 0.3 * 0.5 * width / fx, 0.3 * 0.5 * height / fy
    u_raw, v_raw = tx / tz, ty / tz
    u = min(max(u_raw, -(cx / fx + lim_x)), (width - cx) / fx + lim_x)
    v = min(max(v_raw, -(cy / fy + lim_y)), (height - cy) / fy + lim_y)
    J[0, 0], J[0, 1], J[0, 2] = fx / tz, 0.0, -fx * u / tz
    J[1, 0], J[1, 1], J[1, 2] = 0.0, fy / tz, -fy * v / tz
    return u, v, u == u_raw, v == v_raw


@njit(cache=True)
def _camera_centre(Rw, t):
    """-Rw^T t: the camera's centre in world coordinates."""
    campos = np.zeros(3)
    for r in range(3):
        campos[r] = -(Rw[0, r] * t[0] + Rw[1, r] * t[1] + Rw[2, r] * t[2])
    return campos


@njit(cache=True)
def _screen_covariance(quat, scale, Rw, intr, tx, ty, tz, width, height, eps2d, Rq, M, RM, cov_c, J, JC, cov2d):
    """cov2d = J cov_c J^T + eps2d I for a Gaussian at camera-space (tx, ty, tz), filling the
    scratch arrays on the way (the backward reads them). Returns (c00, c01, c11), the quaternion's
    norm and unit components (`_camera_covariance`), and `_jacobian`'s u, v, u_free, v_free."""
    norm, qw, qx, qy, qz = _camera_covariance(quat, scale, Rw, Rq, M, RM, cov_c)
    u, v, u_free, v_free = _jacobian(tx, ty, tz, intr, width, height, J)
    _mm(J, cov_c, JC)
    _mm(JC, J.T, cov2d)
    return (cov2d[0, 0] + eps2d, cov2d[0, 1], cov2d[1, 1] + eps2d), (norm, qw, qx, qy, qz), (u, v, u_free, v_free)


@njit(cache=True)
def _sh_direction(p, campos):
    """Unit direction from the camera centre to p, and the distance (F.normalize's eps)."""
    dx, dy, dz = p[0] - campos[0], p[1] - campos[1], p[2] - campos[2]
    dn = max(math.sqrt(dx * dx + dy * dy + dz * dz), 1e-12)
    return dx / dn, dy / dn, dz / dn, dn


@njit(cache=True)
def _sh_value(coeffs, i, c, sh_degree, x, y, z):
    """eval_sh before the clamp: degree 0 or 1, channel c of Gaussian i."""
    value = SH_C0 * coeffs[i, 0, c] + 0.5
    if sh_degree >= 1:
        value += SH_C1 * (-y * coeffs[i, 1, c] + z * coeffs[i, 2, c] - x * coeffs[i, 3, c])
    return value


@njit(parallel=True, cache=True)
def _forward_kernel(means, quats, scales, coeffs, Rw, t, intr, opacities, width, height, eps2d, sh_degree,
                    means2d, conics, depths, radii, colours):  # fmt: skip
    n = means.shape[0]
    fx, fy, cx, cy = intr[0], intr[1], intr[2], intr[3]
    campos = _camera_centre(Rw, t)
    chunk = (n + GRADIENT_CHUNKS - 1) // GRADIENT_CHUNKS
    for ch in prange(GRADIENT_CHUNKS):
        Rq, M, RM, cov_c = np.empty((3, 3)), np.empty((3, 3)), np.empty((3, 3)), np.empty((3, 3))
        J, JC, cov2d = np.empty((2, 3)), np.empty((2, 3)), np.empty((2, 2))
        for i in range(ch * chunk, min(n, (ch + 1) * chunk)):
            tx, ty, tz = _camera_point(Rw, t, means[i])
            depths[i] = tz
            in_front = tz > NEAR_PLANE
            if not in_front:
                tz = 1.0  # projection.py's safe depth: finite values for a Gaussian that is culled anyway
            mx, my = fx * tx / tz + cx, fy * ty / tz + cy
            means2d[i, 0], means2d[i, 1] = mx, my
            (c00, c01, c11), _, _ = _screen_covariance(quats[i], scales[i], Rw, intr, tx, ty, tz, width, height,
                                                      eps2d, Rq, M, RM, cov_c, J, JC, cov2d)
            det = c00 * c11 - c01 * c01
            visible = in_front and det > 0 and opacities[i] > ALPHA_MIN
            if not visible:
                det = 1.0
            conics[i, 0], conics[i, 1], conics[i, 2] = c11 / det, -c01 / det, c00 / det
            # alpha >= 1/255 inside `extend` standard deviations (projection.py)
            extend = min(math.sqrt(2.0 * math.log(max(opacities[i], ALPHA_MIN) / ALPHA_MIN)), MAX_EXTEND)
            rx, ry = math.ceil(extend * math.sqrt(max(c00, 0.0))), math.ceil(extend * math.sqrt(max(c11, 0.0)))
            on_screen = mx + rx > 0 and mx - rx < width and my + ry > 0 and my - ry < height
            if visible and on_screen and rx > 0 and ry > 0:
                radii[i, 0], radii[i, 1] = rx, ry
            else:
                radii[i, 0], radii[i, 1] = 0, 0
            if sh_degree >= 0:
                x, y, z, _ = _sh_direction(means[i], campos)
                for c in range(3):
                    colours[i, c] = max(_sh_value(coeffs, i, c, sh_degree, x, y, z), 0.0)


@njit(parallel=True, cache=True)
def _backward_kernel(means, quats, scales, coeffs, Rw, t, intr, radii, width, height, eps2d, sh_degree,
                     v_means2d, v_conics, v_colours,  # upstream gradients, float64
                     v_means, v_quats, v_scales, v_coeffs, v_view_chunks):  # out, zeros  # fmt: skip
    n = means.shape[0]
    fx, fy = intr[0], intr[1]
    campos = _camera_centre(Rw, t)
    chunk = (n + GRADIENT_CHUNKS - 1) // GRADIENT_CHUNKS
    for ch in prange(GRADIENT_CHUNKS):
        Rq, M, RM, cov_c = np.empty((3, 3)), np.empty((3, 3)), np.empty((3, 3)), np.empty((3, 3))
        J, JC, cov2d, v_S = np.empty((2, 3)), np.empty((2, 3)), np.empty((2, 2)), np.empty((2, 2))
        SJ, v_J, v_cov_c = np.empty((2, 3)), np.empty((2, 3)), np.empty((3, 3))
        A, B, sigma, v_M = np.empty((3, 3)), np.empty((3, 3)), np.empty((3, 3)), np.empty((3, 3))
        v_R = np.zeros((3, 3))  # this chunk's share of d/dRw
        v_t, v_campos = np.zeros(3), np.zeros(3)
        for i in range(ch * chunk, min(n, (ch + 1) * chunk)):
            if radii[i, 0] == 0 and radii[i, 1] == 0:
                continue  # culled: in no tile, no gradient
            p = means[i]
            tx, ty, tz = _camera_point(Rw, t, p)
            (c00, c01, c11), (norm, qw, qx, qy, qz), (u, v, u_free, v_free) = _screen_covariance(
                quats[i], scales[i], Rw, intr, tx, ty, tz, width, height, eps2d, Rq, M, RM, cov_c, J, JC, cov2d)
            det = c00 * c11 - c01 * c01
            det2 = det * det
            # conics (a, b, c) = (c11, -c01, c00) / det
            va, vb, vc = v_conics[i, 0], v_conics[i, 1], v_conics[i, 2]
            v_S[0, 0] = -va * c11 * c11 / det2 + vb * c01 * c11 / det2 + vc * (1.0 / det - c00 * c11 / det2)
            v_S[1, 1] = va * (1.0 / det - c11 * c00 / det2) + vb * c01 * c00 / det2 - vc * c00 * c00 / det2
            v_S[0, 1] = v_S[1, 0] = 0.5 * (2.0 * c01 * (va * c11 + vc * c00) / det2
                                           - vb * (1.0 / det + 2.0 * c01 * c01 / det2))
            # cov2d = J cov_c J^T (cov_c, v_S symmetric): v_J = 2 v_S J cov_c, v_cov_c = J^T v_S J
            _mm(v_S, J, SJ)
            _mm(SJ, cov_c, v_J)
            for r in range(2):
                for c in range(3):
                    v_J[r, c] *= 2.0
            _mm(J.T, SJ, v_cov_c)
            # cov_c = Rw sigma Rw^T, sigma = M M^T: v_Rw += 2 v_cov_c Rw sigma, v_M = 2 Rw^T v_cov_c Rw M
            _mm(M, M.T, sigma)
            _mm(v_cov_c, Rw, A)
            _mm(A, sigma, B)
            _mm(Rw.T, A, sigma)  # sigma now holds Rw^T v_cov_c Rw
            _mm(sigma, M, v_M)
            for r in range(3):
                for c in range(3):
                    v_R[r, c] += 2.0 * B[r, c]
            for j in range(3):
                v_scales[i, j] = 2.0 * (v_M[0, j] * Rq[0, j] + v_M[1, j] * Rq[1, j] + v_M[2, j] * Rq[2, j])
                for r in range(3):
                    A[r, j] = 2.0 * v_M[r, j] * scales[i, j]  # d/dRq
            v_qw = 2 * (-qz * A[0, 1] + qy * A[0, 2] + qz * A[1, 0] - qx * A[1, 2] - qy * A[2, 0] + qx * A[2, 1])
            v_qx = 2 * (qy * A[0, 1] + qz * A[0, 2] + qy * A[1, 0] - 2 * qx * A[1, 1] - qw * A[1, 2]
                        + qz * A[2, 0] + qw * A[2, 1] - 2 * qx * A[2, 2])
            v_qy = 2 * (-2 * qy * A[0, 0] + qx * A[0, 1] + qw * A[0, 2] + qx * A[1, 0] + qz * A[1, 2]
                        - qw * A[2, 0] + qz * A[2, 1] - 2 * qy * A[2, 2])
            v_qz = 2 * (-2 * qz * A[0, 0] - qw * A[0, 1] + qx * A[0, 2] + qw * A[1, 0] - 2 * qz * A[1, 1]
                        + qy * A[1, 2] + qx * A[2, 0] + qy * A[2, 1])
            dot = qw * v_qw + qx * v_qx + qy * v_qy + qz * v_qz  # through the normalisation
            v_quats[i, 0] = (v_qw - qw * dot) / norm
            v_quats[i, 1] = (v_qx - qx * dot) / norm
            v_quats[i, 2] = (v_qy - qy * dot) / norm
            v_quats[i, 3] = (v_qz - qz * dot) / norm
            # means2d and J's entries -> the camera-space centre (J[0, 2] = -fx u / tz, u = tx / tz
            # unless clamped)
            v_tx = fx / tz * v_means2d[i, 0]
            v_ty = fy / tz * v_means2d[i, 1]
            v_tz = -(fx * tx * v_means2d[i, 0] + fy * ty * v_means2d[i, 1]) / (tz * tz)
            v_tz -= (fx * v_J[0, 0] + fy * v_J[1, 1]) / (tz * tz)
            v_tz += (fx * u * v_J[0, 2] + fy * v * v_J[1, 2]) / (tz * tz)
            v_u, v_v = -fx / tz * v_J[0, 2], -fy / tz * v_J[1, 2]
            if u_free:
                v_tx += v_u / tz
                v_tz -= v_u * tx / (tz * tz)
            if v_free:
                v_ty += v_v / tz
                v_tz -= v_v * ty / (tz * tz)
            for r in range(3):
                v_means[i, r] = Rw[0, r] * v_tx + Rw[1, r] * v_ty + Rw[2, r] * v_tz
                v_R[0, r] += v_tx * p[r]
                v_R[1, r] += v_ty * p[r]
                v_R[2, r] += v_tz * p[r]
            v_t[0] += v_tx
            v_t[1] += v_ty
            v_t[2] += v_tz
            if sh_degree >= 0:
                x, y, z, dn = _sh_direction(p, campos)
                vx = vy = vz = 0.0
                for c in range(3):
                    # torch's clamp_min passes the gradient where the value is >= 0
                    v_pre = v_colours[i, c] if _sh_value(coeffs, i, c, sh_degree, x, y, z) >= 0.0 else 0.0
                    v_coeffs[i, 0, c] = SH_C0 * v_pre
                    if sh_degree >= 1:
                        v_coeffs[i, 1, c] = -SH_C1 * y * v_pre
                        v_coeffs[i, 2, c] = SH_C1 * z * v_pre
                        v_coeffs[i, 3, c] = -SH_C1 * x * v_pre
                        vx -= SH_C1 * coeffs[i, 3, c] * v_pre
                        vy -= SH_C1 * coeffs[i, 1, c] * v_pre
                        vz += SH_C1 * coeffs[i, 2, c] * v_pre
                if sh_degree >= 1:  # through the normalised direction, to the mean and the camera centre
                    along = x * vx + y * vy + z * vz
                    gx, gy, gz = (vx - x * along) / dn, (vy - y * along) / dn, (vz - z * along) / dn
                    v_means[i, 0] += gx
                    v_means[i, 1] += gy
                    v_means[i, 2] += gz
                    v_campos[0] -= gx
                    v_campos[1] -= gy
                    v_campos[2] -= gz
        for r in range(3):  # campos = -Rw^T t
            for c in range(3):
                v_R[r, c] -= t[r] * v_campos[c]
                v_t[r] -= Rw[r, c] * v_campos[c]
        for r in range(3):
            for c in range(3):
                v_view_chunks[ch, 3 * r + c] = v_R[r, c]
            v_view_chunks[ch, 9 + r] = v_t[r]


@njit(cache=True)
def _bin_kernel(means2d, radii, depth_order, selected, tiles_x, tiles_y):
    """radii: [N, 2] in means2d's dtype. Counting sort of the (tile, Gaussian) pairs by tile;
    Gaussians enter front to back, so each tile's list comes out depth-sorted. Box bounds as
    projection.bin_tiles computes them."""
    n_tiles = tiles_x * tiles_y
    counts = np.zeros(n_tiles + 1, np.int64)
    n = means2d.shape[0]
    lo_x, hi_x = np.zeros(n, np.int64), np.zeros(n, np.int64)
    lo_y, hi_y = np.zeros(n, np.int64), np.zeros(n, np.int64)
    drawn = np.zeros(n, np.bool_)
    for g in range(n):
        if radii[g, 0] <= 0 or radii[g, 1] <= 0:
            continue
        rx, ry = radii[g, 0], radii[g, 1]  # means2d's dtype, as torch computes the bounds
        lo_x[g] = min(max(math.floor((means2d[g, 0] - rx) / TILE_SIZE), 0), tiles_x)
        hi_x[g] = min(max(math.ceil((means2d[g, 0] + rx) / TILE_SIZE), 0), tiles_x)
        lo_y[g] = min(max(math.floor((means2d[g, 1] - ry) / TILE_SIZE), 0), tiles_y)
        hi_y[g] = min(max(math.ceil((means2d[g, 1] + ry) / TILE_SIZE), 0), tiles_y)
        for ty in range(lo_y[g], hi_y[g]):
            for tx in range(lo_x[g], hi_x[g]):
                if selected[ty * tiles_x + tx]:
                    counts[ty * tiles_x + tx + 1] += 1
                    drawn[g] = True
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    gauss_ids = np.empty(offsets[-1], np.int64)
    for g in depth_order:
        if not drawn[g]:
            continue
        for ty in range(lo_y[g], hi_y[g]):
            for tx in range(lo_x[g], hi_x[g]):
                tile = ty * tiles_x + tx
                if selected[tile]:
                    gauss_ids[fill[tile]] = g
                    fill[tile] += 1
    return offsets, gauss_ids, drawn
