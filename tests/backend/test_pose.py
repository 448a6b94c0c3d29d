"""Camera pose refinement (pose.py): the correction's maths, and recovering a perturbed camera
from its image through the real rasterizer's gradient."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from facesplat.pose import PoseRefiner, correction_matrix, so3_exp
from facesplat.render import rasterize


def test_so3_exp_is_rodrigues_with_finite_gradients_at_zero():
    for w in ([0.3, -0.2, 0.1], [1e-6, 0.0, -2e-6], [0.0, 0.0, 0.0], [0.0, 2.5, 0.0]):
        expected = cv2.Rodrigues(np.array(w, np.float64))[0]
        np.testing.assert_allclose(so3_exp(torch.tensor(w, dtype=torch.float64)).numpy(), expected, atol=1e-12)
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    # d exp(w) / dw at 0 is the cross-product matrix: R[2, 1] = w_x, R[0, 2] = w_y, R[1, 0] = w_z.
    (so3_exp(w)[2, 1] + 2 * so3_exp(w)[0, 2] + 3 * so3_exp(w)[1, 0]).backward()
    np.testing.assert_allclose(w.grad.numpy(), [1.0, 2.0, 3.0])
    c = correction_matrix(torch.tensor([0.0, 0.0, 0.0, 0.1, -0.2, 0.3], dtype=torch.float64), scene_scale=2.0)
    np.testing.assert_allclose(c.numpy()[:3, 3], [0.2, -0.4, 0.6])


def look_at(centre) -> np.ndarray:
    """World->camera (OpenCV) of a camera at `centre` looking at the origin, +Z up."""
    centre = np.asarray(centre, np.float64)
    z = -centre / np.linalg.norm(centre)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    w2c = np.eye(4)
    w2c[:3, :3] = np.stack([x, np.cross(z, x), z])
    w2c[:3, 3] = -w2c[:3, :3] @ centre
    return w2c


def pose_error(w2c: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(rotation error in degrees, camera-centre error in world units)."""
    e = w2c @ np.linalg.inv(truth)
    angle = math.degrees(math.acos(np.clip((np.trace(e[:3, :3]) - 1) / 2, -1, 1)))
    return angle, float(np.linalg.norm(np.linalg.inv(w2c)[:3, 3] - np.linalg.inv(truth)[:3, 3]))


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_training_the_correction_alone_recovers_a_perturbed_camera(backend):
    """Fixed Gaussians (a textured cloud the size of a head), the image of a known camera, and that
    camera's pose knocked 1.5 degrees and 9 mm off: learning only its correction from the image
    brings it back. Needs the rasterizer's gradient to reach the viewmat."""
    g = torch.Generator().manual_seed(3)
    n, size = 200, 64
    means = (torch.rand(n, 3, generator=g) - 0.5) * 0.4
    quats, scales = torch.randn(n, 4, generator=g), torch.full((n, 3), 0.012)
    opacities, colors = torch.full((n,), 0.8), torch.rand(n, 3, generator=g)
    K = torch.tensor([[80.0, 0, 32], [0, 80, 32], [0, 0, 1]])

    def render(viewmat):
        return rasterize(means, quats, scales, opacities, colors, viewmat, K, size, size,
                         backgrounds=torch.zeros(3), backend=backend)[0]

    truth = look_at([0.5, 0.1, 0.05])
    target = render(torch.tensor(truth, dtype=torch.float32))
    knock = correction_matrix(torch.tensor([0.02, -0.015, 0.01, 0.006, -0.004, 0.005], dtype=torch.float64), 1.0)
    start = knock.numpy() @ truth
    before = pose_error(start, truth)
    assert before[0] > 1.4 and before[1] > 0.008

    refiner = PoseRefiner(2, lr=2e-3, scene_scale=0.5, device="cpu")  # view 0 is the fixed one
    viewmat = torch.tensor(start, dtype=torch.float32)
    for _ in range(60):
        (render(refiner.viewmat(1, viewmat)) - target).abs().mean().backward()
        refiner.step(1)
    after = pose_error(refiner.corrections()[1] @ start, truth)
    assert after[0] < before[0] / 8 and after[1] < before[1] / 8, (before, after)
    np.testing.assert_array_equal(refiner.corrections()[0], np.eye(4))  # the world frame's anchor
    assert refiner.viewmat(0, viewmat) is viewmat
