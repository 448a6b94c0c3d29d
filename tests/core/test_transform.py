"""core.transform: baking an object transform into Gaussians, checked against what the renderer sees."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "backend"))

from facesplat.core.ply import Splats  # noqa: E402
from facesplat.core.transform import (TransformError, bake_transform, matrix_to_quaternion,  # noqa: E402
                                      quaternion_to_matrix)


def random_splats(n: int, degree: int, seed: int = 0) -> Splats:
    rng = np.random.default_rng(seed)
    k = (degree + 1) ** 2 - 1
    return Splats(means=rng.normal(size=(n, 3)), sh0=rng.normal(size=(n, 3)), shN=rng.normal(size=(n, k, 3)),
                  opacities=rng.normal(size=n), scales=rng.normal(-3, 0.5, size=(n, 3)),
                  quats=rng.normal(size=(n, 4)))


def rotation(axis, angle) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def affine(linear, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = linear, t
    return m


# The 3DGS colour evaluation, written out as in Inria's utils/sh_utils.py eval_sh (not shared with
# the code under test), with dirs pointing from the camera to the Gaussian.
C0, C1 = 0.28209479177387814, 0.4886025119029199
C2 = [1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396]
C3 = [-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
      -0.4570457994644658, 1.445305721320277, -0.5900435899266435]


def eval_sh(deg, sh, dirs):
    """sh [N, (deg+1)^2, 3], dirs [N, 3] unit -> [N, 3]."""
    result = C0 * sh[:, 0]
    x, y, z = (dirs[:, i:i + 1] for i in range(3))
    if deg > 0:
        result = result - C1 * y * sh[:, 1] + C1 * z * sh[:, 2] - C1 * x * sh[:, 3]
    if deg > 1:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        result = (result + C2[0] * xy * sh[:, 4] + C2[1] * yz * sh[:, 5] + C2[2] * (2.0 * zz - xx - yy) * sh[:, 6]
                  + C2[3] * xz * sh[:, 7] + C2[4] * (xx - yy) * sh[:, 8])
    if deg > 2:
        result = (result + C3[0] * y * (3 * xx - yy) * sh[:, 9] + C3[1] * xy * z * sh[:, 10]
                  + C3[2] * y * (4 * zz - xx - yy) * sh[:, 11] + C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[:, 12]
                  + C3[4] * x * (4 * zz - xx - yy) * sh[:, 13] + C3[5] * z * (xx - yy) * sh[:, 14]
                  + C3[6] * x * (xx - 3 * yy) * sh[:, 15])
    return result


def covariances(s: Splats) -> np.ndarray:
    R = quaternion_to_matrix(s.quats)
    S2 = np.exp(2 * s.scales.astype(np.float64))
    return np.einsum("nij,nj,nkj->nik", R, S2, R)


def all_sh(s: Splats) -> np.ndarray:
    return np.concatenate([s.sh0[:, None], s.shN], axis=1).astype(np.float64)


def random_dirs(n, seed=5):
    d = np.random.default_rng(seed).normal(size=(n, 3))
    return d / np.linalg.norm(d, axis=1, keepdims=True)


TRANSFORMS = {
    "rotate+translate": affine(rotation([1, 2, 3], 0.7), [0.3, -1.0, 2.0]),
    "rotate+scale": affine(1.7 * rotation([0, 0, 1], -2.1), [0, 0, 1]),
    "mirror": affine(np.diag([-1.0, 1, 1]) @ rotation([1, 1, 0], 0.4), [1, 2, 3]),
    "quarter_turn": affine(rotation([1, 0, 0], np.pi / 2)),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("degree", [0, 1, 3])
def test_bake_matches_transformed_gaussians(name, degree):
    m = TRANSFORMS[name]
    src = random_splats(200, degree)
    out = bake_transform(src, m)
    M, t = m[:3, :3], m[:3, 3]
    np.testing.assert_allclose(out.means, src.means @ M.T + t, rtol=1e-5, atol=1e-5)
    # Σ' = M Σ Mᵀ is what the rasterizer sees, whatever the quaternion's sign or the axis order.
    np.testing.assert_allclose(covariances(out), M @ covariances(src) @ M.T, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(out.quats, axis=1), np.linalg.norm(src.quats, axis=1), rtol=1e-5)
    np.testing.assert_array_equal(out.opacities, src.opacities)
    np.testing.assert_array_equal(out.sh0, src.sh0)
    # Colour seen along world direction d after the move == colour along Qᵀd before it.
    Q = M / abs(np.cbrt(np.linalg.det(M)))
    d = random_dirs(len(src))
    np.testing.assert_allclose(eval_sh(degree, all_sh(out), d), eval_sh(degree, all_sh(src), d @ Q),
                               rtol=1e-4, atol=1e-5)


def test_degree_one_rotates_as_a_vector():
    """C1·(−sh1·y + sh2·z − sh3·x) = C1·a·d with a = (−sh3, −sh1, sh2), so a' = R a."""
    R = rotation([0.2, -1, 0.5], 1.1)
    src = random_splats(100, 1)
    out = bake_transform(src, affine(R, [5, 5, 5]))

    def vec(shN):  # [N, 3 coeffs, 3 channels] -> [N, 3 xyz, 3 channels]
        return np.stack([-shN[:, 2], -shN[:, 0], shN[:, 1]], axis=1)

    np.testing.assert_allclose(vec(out.shN), np.einsum("ij,njc->nic", R, vec(src.shN)), rtol=1e-5, atol=1e-6)


def test_scale_adds_log_scale():
    src = random_splats(10, 0)
    out = bake_transform(src, affine(2.5 * np.eye(3)))
    np.testing.assert_allclose(out.scales, src.scales + np.log(2.5), rtol=1e-6)


def test_identity_is_bit_exact():
    src = random_splats(100, 3)
    out = bake_transform(src, np.eye(4))
    for name in ("means", "sh0", "shN", "opacities", "scales", "quats"):
        np.testing.assert_array_equal(getattr(out, name), getattr(src, name))


def test_quarter_turn_moves_sh_coefficients_exactly():
    """A 90° turn permutes (and negates) SH coefficients: no rounding noise leaks in."""
    src = random_splats(50, 3)
    out = bake_transform(bake_transform(src, affine(rotation([0, 0, 1], np.pi / 2))),
                         affine(rotation([0, 0, 1], -np.pi / 2)))
    np.testing.assert_allclose(out.shN, src.shN, atol=1e-6)


@pytest.mark.parametrize("linear, message", [
    (np.diag([1.0, 2.0, 1.0]), "non-uniform scale"),
    (np.array([[1.0, 0.3, 0], [0, 1, 0], [0, 0, 1]]), "non-uniform scale or shear"),
    (np.diag([1.0, 1.0, 0.0]), "flat"),
])
def test_unbakeable_transforms_raise(linear, message):
    with pytest.raises(TransformError, match=message):
        bake_transform(random_splats(3, 1), affine(linear))


def test_projective_and_nan_raise():
    m = np.eye(4)
    m[3, 0] = 0.1
    with pytest.raises(TransformError, match="projective"):
        bake_transform(random_splats(3, 0), m)
    with pytest.raises(TransformError, match="NaN"):
        bake_transform(random_splats(3, 0), np.full((4, 4), np.nan))


def test_float32_matrix_counts_as_uniform():
    """Blender hands over float32 matrices; their rounding must not look like a shear."""
    m = affine(1.3 * rotation([3, 1, 2], 2.0), [1, 2, 3]).astype(np.float32)
    bake_transform(random_splats(3, 1), m)


def test_matrix_quaternion_round_trip():
    rng = np.random.default_rng(3)
    for _ in range(200):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        back = matrix_to_quaternion(quaternion_to_matrix(q[None])[0])
        assert min(np.abs(back - q).max(), np.abs(back + q).max()) < 1e-9
