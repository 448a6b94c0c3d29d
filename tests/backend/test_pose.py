"""Camera pose refinement (pose.py): the correction's maths, recovering a perturbed camera from
its image through the real rasterizer's gradient, and the refined cameras' place in the workspace."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from facesplat.core.cameras import CameraFrame, read_cameras_json, trained_cameras_path, write_cameras_json
from facesplat.pose import PoseRefiner, correction_matrix, so3_exp
from facesplat.render import rasterize
from facesplat.views import View, with_cameras
from facesplat.workspace import Workspace


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


def camera(frame_index: int, w2c: np.ndarray) -> CameraFrame:
    return CameraFrame(frame_index=frame_index, image=f"frames/{frame_index:06d}.png", width=32, height=24,
                       fx=30.0, fy=30.0, cx=16.0, cy=12.0, world_to_camera=w2c, mask=f"masks/{frame_index:06d}.png")


def test_refined_cameras_replace_only_the_poses():
    cams = [camera(i, look_at([np.cos(a), np.sin(a), 0.2])) for i, a in enumerate([0.0, 1.0, 2.0])]
    views = [View(camera=c, image=torch.rand(24, 32, 3), mask=torch.rand(24, 32, 1),
                  viewmat=torch.from_numpy(c.world_to_camera.astype(np.float32)),
                  K=torch.from_numpy(c.K.astype(np.float32)), box=(1, 2, 30, 20)) for c in cams]
    refiner = PoseRefiner(3, lr=1e-3, scene_scale=1.0, device="cpu")
    with torch.no_grad():
        refiner.deltas[2] += torch.tensor([0.0, 0.01, 0.0, 0.002, 0.0, 0.0])
    refined = refiner.refined_cameras(cams)
    assert [c.frame_index for c in refined] == [0, 1, 2]
    np.testing.assert_array_equal(refined[1].world_to_camera, cams[1].world_to_camera)
    assert pose_error(refined[2].world_to_camera, cams[2].world_to_camera)[0] == pytest.approx(math.degrees(0.01))
    moved = with_cameras(views, list(reversed(refined)))
    assert [v.camera.frame_index for v in moved] == [2, 1, 0]
    assert moved[0].image is views[2].image and moved[0].box == views[2].box
    np.testing.assert_allclose(moved[0].viewmat.numpy(), refined[2].world_to_camera, atol=1e-6)
    summary = refiner.summary()
    assert summary["pose_rotation_deg_max"] == pytest.approx(math.degrees(0.01), rel=1e-4)


def test_trained_cameras_file_is_read_where_there_and_dropped_with_its_training(tmp_path):
    ws = Workspace(tmp_path / "ws").prepare()
    sfm = [camera(0, look_at([1.0, 0.0, 0.0]))]
    write_cameras_json(ws.cameras_json, sfm)
    assert trained_cameras_path(ws.root) == ws.cameras_json  # a workspace from before refinement
    refined = [camera(0, look_at([1.0, 0.01, 0.0]))]
    write_cameras_json(ws.cameras_refined_json, refined)
    assert trained_cameras_path(ws.root) == ws.cameras_refined_json
    np.testing.assert_allclose(read_cameras_json(trained_cameras_path(ws.root))[0].world_to_camera,
                               refined[0].world_to_camera)
    ws.invalidate_from("isolate")  # re-isolating keeps the training's cameras
    assert ws.cameras_refined_json.exists()
    ws.invalidate_from("masks")  # a re-run from an earlier stage retrains: they would be stale
    assert not ws.cameras_refined_json.exists() and trained_cameras_path(ws.root) == ws.cameras_json
