"""The head-centred world frame that sfm.py puts the reconstruction in, on exact synthetic cameras
(the real-pycolmap side runs end to end in test_pipeline.py)."""

from __future__ import annotations

import numpy as np
import pytest

from facesplat.core.cameras import CameraFrame
from facesplat.sfm import ASSUMED_CAMERA_DISTANCE_M, head_frame_similarity


def look_at(center: np.ndarray, target: np.ndarray, up=np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """World-to-camera (OpenCV axes: x right, y down, z forward) of a camera at `center` facing `target`."""
    z = target - center
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    w2c = np.eye(4)
    w2c[:3, :3] = np.stack([x, y, z])
    w2c[:3, 3] = -w2c[:3, :3] @ center
    return w2c


def orbit(head: np.ndarray, radius: float, azimuths_deg, frame_rotation: np.ndarray):
    """Cameras on a horizontal circle around `head`, all aimed at it, in a world that is rotated
    by `frame_rotation` (as COLMAP's arbitrary frame would be)."""
    cameras, centers, dirs = [], [], []
    for k, az in enumerate(np.radians(azimuths_deg)):
        c = head + radius * np.array([np.sin(az), -np.cos(az), 0.1])  # azimuth 0: in front (-Y)
        w2c = look_at(c, head)
        w2c[:3, :3] = w2c[:3, :3] @ frame_rotation.T
        w2c[:3, 3] = -w2c[:3, :3] @ (frame_rotation @ c)
        cam = CameraFrame(k, f"frames/{k:06d}.png", 640, 360, 500.0, 500.0, 320.0, 180.0, w2c)
        cameras.append(cam)
        centers.append(cam.center)
        dirs.append(cam.camera_to_world[:3, 2])  # the optical axis passes through the head
    return cameras, np.array(centers), np.array(dirs)


@pytest.mark.parametrize("full_circle", [False, True])
def test_head_frame_puts_the_head_at_the_origin_and_the_face_towards_minus_y(full_circle):
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    frame_rotation = q * np.sign(np.linalg.det(q))  # a proper rotation
    head = np.array([0.3, -1.2, 2.0])
    azimuths = np.arange(0, 360, 15) if full_circle else np.arange(-80, 81, 10)
    cameras, centers, dirs = orbit(head, 2.5, azimuths, frame_rotation)
    off_face = np.abs(((azimuths + 180) % 360) - 180)  # degrees away from facing the face
    frontal = off_face < 30  # cameras that saw the face

    s, R, t = head_frame_similarity(cameras, centers, dirs, frontal)
    assert np.allclose(s * R @ (frame_rotation @ head) + t, 0, atol=1e-9), "head at the origin"
    new_centers = centers @ (s * R).T + t
    assert np.median(np.linalg.norm(new_centers, axis=1)) == pytest.approx(ASSUMED_CAMERA_DISTANCE_M)
    in_front = new_centers[np.argmin(off_face)]
    assert in_front[1] < -0.45 and abs(in_front[0]) < 1e-6, "the camera facing the face is on -Y"
    behind = new_centers[np.argmax(off_face)]
    assert behind[1] > 0 if full_circle else behind[1] < 0
    # Up is the cameras' mean up vector: they look down at the head by atan(0.1), so it leans
    # towards the head by at most that much (and not at all on a full circle).
    true_up = R @ frame_rotation @ np.array([0.0, 0.0, 1.0])
    lean = np.degrees(np.arccos(np.clip(true_up[2], -1, 1)))
    assert lean < (1e-6 if full_circle else np.degrees(np.arctan(0.1))), lean
