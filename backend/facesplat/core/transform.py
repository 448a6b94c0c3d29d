"""Bake a 4x4 object transform into raw 3DGS values (what "Apply transform" means for a splat).

A Gaussian moved by x -> M x + t with M = s Q (s > 0 a uniform scale, Q orthogonal) stays a
Gaussian: its mean moves, its rotation turns by Q, its log-scales grow by log(s), and its
view-dependent colour must be looked up along the direction the object frame now sees:
c'(d) = c(Qᵀ d), which for spherical harmonics is a linear map on each band. A non-uniform
scale or a shear turns each Gaussian into one whose axes are no longer the stored ones and
bends the colour lobes; that cannot be written exactly, so it raises TransformError.
"""

from __future__ import annotations

import numpy as np

from .ply import Splats
from .sh import band_terms

# How far the singular values of M may differ (relative) and still count as a uniform scale:
# Blender's matrices are float32, so a rotation composed there is orthogonal to ~1e-7.
UNIFORM_SCALE_RTOL = 1e-4


class TransformError(ValueError):
    """The transform cannot be baked into Gaussians exactly. One line: what and why."""


def sh_basis(dirs: np.ndarray, degree: int) -> np.ndarray:
    """3DGS real-SH basis of one band at unit directions [P, 3] -> [P, 2*degree+1] (core/sh.py)."""
    return np.stack(band_terms(dirs[:, 0], dirs[:, 1], dirs[:, 2], degree), axis=1)


def _sphere_directions(count: int = 128) -> np.ndarray:
    """Evenly spread unit vectors (Fibonacci sphere), [count, 3]."""
    i = np.arange(count) + 0.5
    z = 1.0 - 2.0 * i / count
    r = np.sqrt(1.0 - z * z)
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def sh_rotation(Q: np.ndarray, degree: int) -> np.ndarray:
    """[2l+1, 2l+1] matrix X with new_coeffs = X @ old_coeffs for band `degree` under x -> Q x.

    A band's basis at rotated directions is a linear mix of the same band: Y(Qᵀd) = D Y(d).
    D is fitted by least squares over many directions (exact up to rounding, since both sides
    span the same space), and the coefficients transform with X = Dᵀ. Works for reflections too.
    """
    dirs = _sphere_directions()
    before = sh_basis(dirs, degree)             # Y(d)     [P, L]
    after = sh_basis(dirs @ Q, degree)          # Y(Qᵀ d)  [P, L]  (rows of dirs @ Q are Qᵀ d)
    Dt, *_ = np.linalg.lstsq(before, after, rcond=None)   # before @ Dᵀ = after
    # Snap rounding noise so 90-degree turns and mirrors map coefficients bit-exactly.
    Dt[np.abs(Dt) < 1e-12] = 0.0
    unit = np.abs(np.abs(Dt) - 1.0) < 1e-12
    Dt[unit] = np.sign(Dt[unit])
    return Dt


def rotate_sh(shN: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """Rotate f_rest coefficients [N, K, 3] (K = 0, 3, 8 or 15) by the orthogonal Q."""
    shN = np.asarray(shN, dtype=np.float32)
    out = np.empty_like(shN)
    start = 0
    for degree in (1, 2, 3):
        width = 2 * degree + 1
        if start + width > shN.shape[1]:
            break
        X = sh_rotation(Q, degree).astype(np.float32)                # [L, L]
        band = shN[:, start:start + width]                           # [N, L, 3]
        # new[n, k, c] = sum_m X[k, m] band[n, m, c], as one BLAS product over the N*3 columns
        out[:, start:start + width] = np.tensordot(band, X, axes=([1], [1])).transpose(0, 2, 1)
        start += width
    return out


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Rotation matrix [3, 3] (det +1) -> unit quaternion (w, x, y, z), Shepperd's method."""
    R = np.asarray(R, dtype=np.float64)
    trace = np.trace(R)
    candidates = [trace, R[0, 0], R[1, 1], R[2, 2]]
    k = int(np.argmax(candidates))
    if k == 0:
        w = 0.5 * np.sqrt(1.0 + trace)
        q = [w, (R[2, 1] - R[1, 2]) / (4 * w), (R[0, 2] - R[2, 0]) / (4 * w), (R[1, 0] - R[0, 1]) / (4 * w)]
    else:
        i, j, m = (k - 1), k % 3, (k + 1) % 3
        v = np.zeros(3)
        v[i] = 0.5 * np.sqrt(1.0 + R[i, i] - R[j, j] - R[m, m])
        v[j] = (R[j, i] + R[i, j]) / (4 * v[i])
        v[m] = (R[m, i] + R[i, m]) / (4 * v[i])
        q = [(R[m, j] - R[j, m]) / (4 * v[i]), *v]
    q = np.array(q)
    return q / np.linalg.norm(q)


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Quaternions [N, 4] (w, x, y, z, any norm) -> rotation matrices [N, 3, 3]."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def quaternion_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a ⊗ b of quaternions (w, x, y, z); broadcasts over leading axes."""
    aw, ax, ay, az = np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, dtype=np.float64), -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw], axis=-1)


def decompose_similarity(matrix: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Split a 4x4 affine transform into (uniform scale s, orthogonal Q [3, 3], translation [3]).

    Raises TransformError for a projective row, a degenerate matrix, a non-uniform scale or a shear.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise TransformError(f"expected a 4x4 transform, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise TransformError("the transform contains NaN or infinite values")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise TransformError("the transform is projective (last row is not 0 0 0 1); it cannot be baked")
    U, S, Vt = np.linalg.svd(m[:3, :3])
    if S[-1] <= 1e-12 * max(S[0], 1e-30):
        raise TransformError("the transform squashes space flat (zero scale); it cannot be baked")
    if S[0] / S[-1] - 1.0 > UNIFORM_SCALE_RTOL:
        stretch = ", ".join(f"{v:.4g}" for v in S)
        raise TransformError(
            f"the transform has a non-uniform scale or shear (axis scales {stretch}); Gaussians and "
            "their view-dependent colour cannot be baked exactly. Use the same scale on all three axes")
    return float(S.mean()), U @ Vt, m[:3, 3].copy()


def bake_transform(splats: Splats, matrix: np.ndarray) -> Splats:
    """Splats as seen after applying `matrix` ([4, 4], x_world = M x + t) to every Gaussian.

    Positions, rotations, log-scales and SH bands 1-3 are transformed; opacities and the DC
    colour are unchanged. The identity returns the values untouched (bit-exact round trips).
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (4, 4) and np.array_equal(m, np.eye(4)):
        return Splats(splats.means.copy(), splats.sh0.copy(), splats.shN.copy(),
                      splats.opacities.copy(), splats.scales.copy(), splats.quats.copy())
    s, Q, t = decompose_similarity(m)
    means = splats.means.astype(np.float64) @ (s * Q).T + t                    # [N, 3]
    # A mirror (det Q = -1) equals the rotation -Q followed by x -> -x, and a Gaussian is
    # symmetric under x -> -x about its centre, so its axes turn by -Q.
    R = Q if np.linalg.det(Q) > 0 else -Q
    quats = quaternion_multiply(matrix_to_quaternion(R), splats.quats)       # [N, 4], norm kept
    scales = splats.scales.astype(np.float64) + np.log(s)                    # [N, 3] log
    shN = rotate_sh(splats.shN, Q) if splats.shN.shape[1] else splats.shN    # [N, K, 3]
    return Splats(means=means, sh0=splats.sh0.copy(), shN=shN, opacities=splats.opacities.copy(),
                  scales=scales, quats=quats)
