"""core.cameras: cameras.json round trip, projection, and the OpenCV <-> Blender conversions."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "backend"))

from facesplat.core.cameras import (CameraFrame, CamerasFormatError, blender_c2w_to_opencv_w2c, blender_camera_intrinsics,  # noqa: E402
                                    opencv_w2c_to_blender_c2w, project_points, read_cameras_json,
                                    world_to_camera_after_similarity, write_cameras_json)


def look_at_w2c(eye, target, up=(0, 0, 1)) -> np.ndarray:
    """World->camera (OpenCV: x right, y down, z forward) for a camera at `eye` looking at `target`."""
    z = np.subtract(target, eye, dtype=float)
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, -R @ np.asarray(eye, float)
    return w2c


def frame(**kw) -> CameraFrame:
    base = dict(frame_index=3, image="frames/000003.png", width=640, height=360, fx=500.0, fy=500.0,
                cx=330.0, cy=170.0, world_to_camera=look_at_w2c([1, -2, 0.5], [0, 0, 0]))
    return CameraFrame(**{**base, **kw})


def test_json_round_trip(tmp_path):
    frames = [frame(), frame(frame_index=9, image="frames/000009.png", mask="masks/000009.png",
                             distortion={"model": "SIMPLE_RADIAL", "params": [0.01]})]
    path = write_cameras_json(tmp_path / "cameras.json", frames, source="video.mp4")
    doc = json.loads(path.read_text())
    assert doc["convention"] == "opencv" and doc["matrix"] == "world_to_camera" and doc["source"] == "video.mp4"
    back = read_cameras_json(path)
    assert [f.frame_index for f in back] == [3, 9]
    np.testing.assert_array_equal(back[1].world_to_camera, frames[1].world_to_camera)
    assert back[1].distortion == {"model": "SIMPLE_RADIAL", "params": [0.01]}


@pytest.mark.parametrize("text, message", [
    ("not json", r"is not valid JSON \(Expecting value at line 1, column 1\)"),
    ('{"bad":', r"is not valid JSON \(Expecting value at line 1, column 8\); the file is truncated"),
    ("\udcff", "not valid JSON"),
    ("[" * 100000 + "]" * 100000, "not valid JSON"),
    ('{"frames": []}', "not a FaceSplat cameras.json"),
    ('{"convention": "opencv", "frames": {}}', "not a FaceSplat cameras.json"),
    ('{"convention": "opencv", "frames": [{"frame_index": 1}]}',
     r"frames\[0\] \(frame_index 1\) lacks image, width, height, fx, fy, cx, cy, world_to_camera"),
])
def test_bad_cameras_json(tmp_path, text, message):
    (tmp_path / "c.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CamerasFormatError, match=message) as info:
        read_cameras_json(tmp_path / "c.json")
    assert len(str(info.value).splitlines()) == 1 and str(tmp_path / "c.json") in str(info.value)


def good_frame_json() -> dict:
    return frame(mask="masks/000003.png", distortion={"model": "SIMPLE_RADIAL", "params": [0.01]}).to_json()


BAD_FRAMES = {
    "string_fx": ({"fx": "abc"}, r"frames\[1\] \(frame_index 3\): fx is \"abc\", expected a positive number"),
    "zero_fy": ({"fy": 0}, "fy is 0, expected a positive number"),
    "nan_cx": ({"cx": float("nan")}, "cx is NaN, expected a finite number"),
    "inf_cy": ({"cy": float("inf")}, "cy is Infinity, expected a finite number"),
    "bool_width": ({"width": True}, "width is true, expected a positive integer"),
    "zero_width": ({"width": 0}, "width is 0, expected a positive integer"),
    "negative_height": ({"height": -360}, "height is -360, expected a positive integer"),
    "fractional_width": ({"width": 640.5}, "width is 640.5"),
    "huge_int_fx": ({"fx": 10 ** 400}, "fx is 1000.*, expected a positive number"),
    "negative_frame_index": ({"frame_index": -1}, "frame_index is -1, expected a non-negative integer"),
    "string_frame_index": ({"frame_index": "3"}, r"frames\[1\]: frame_index is \"3\""),
    "image_null": ({"image": None}, "image is null, expected a file name"),
    "image_number": ({"image": 12}, "image is 12, expected a file name"),
    "mask_number": ({"mask": 7}, "mask is 7, expected a file name or null"),
    "matrix_3x4": ({"world_to_camera": np.eye(4)[:3].tolist()}, "world_to_camera is .*expected a 4x4 matrix"),
    "matrix_flat": ({"world_to_camera": list(range(16))}, "expected a 4x4 matrix"),
    "matrix_string": ({"world_to_camera": "eye"}, "expected a 4x4 matrix"),
    "matrix_nan": ({"world_to_camera": [[float("nan")] * 4] * 4}, "expected a 4x4 matrix of finite numbers"),
    "matrix_singular": ({"world_to_camera": np.diag([1.0, 1.0, 0.0, 1.0]).tolist()}, "expected a camera pose"),
    "matrix_projective": ({"world_to_camera": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]},
                          "last row 0 0 0 1"),
    "distortion_list": ({"distortion": [0.1]}, r"distortion is \[0.1\], expected"),
    "distortion_string_param": ({"distortion": {"model": "RADIAL", "params": ["a"]}}, "distortion is"),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
def test_bad_frame_entries_name_the_frame_and_field(tmp_path, case):
    change, message = BAD_FRAMES[case]
    doc = {"convention": "opencv", "frames": [good_frame_json(), {**good_frame_json(), **change}]}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    with pytest.raises(CamerasFormatError, match=message) as info:
        read_cameras_json(tmp_path / "c.json")
    assert len(str(info.value).splitlines()) == 1 and "run the sfm stage again" in str(info.value)


@pytest.mark.parametrize("entry, message", [
    (None, r"frames\[1\] is null, expected an object"),
    (7, r"frames\[1\] is 7, expected an object"),
    ([1, 2], r"frames\[1\] is \[1, 2\], expected an object"),
])
def test_a_frame_that_is_not_an_object(tmp_path, entry, message):
    (tmp_path / "c.json").write_text(json.dumps({"convention": "opencv", "frames": [good_frame_json(), entry]}))
    with pytest.raises(CamerasFormatError, match=message):
        read_cameras_json(tmp_path / "c.json")


def test_missing_and_non_regular_files(tmp_path):
    with pytest.raises(CamerasFormatError, match="cannot read"):
        read_cameras_json(tmp_path / "nope.json")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.json")
        with pytest.raises(CamerasFormatError, match="not a regular file"):
            read_cameras_json(tmp_path / "pipe.json")


def test_optional_fields_may_be_absent_and_integral_floats_are_accepted(tmp_path):
    entry = good_frame_json()
    del entry["mask"], entry["distortion"]
    entry["width"] = 640.0
    (tmp_path / "c.json").write_text(json.dumps({"convention": "opencv", "frames": [entry]}))
    (back,) = read_cameras_json(tmp_path / "c.json")
    assert back.mask is None and back.distortion == {"model": "PINHOLE", "params": []}
    assert back.width == 640 and isinstance(back.width, int)
    assert issubclass(CamerasFormatError, ValueError)


def test_projection_of_the_target_and_of_an_offset_point():
    cam = frame()
    uv, depth = project_points(np.zeros((1, 3)), cam)
    np.testing.assert_allclose(uv[0], [cam.cx, cam.cy], atol=1e-9)
    assert depth[0] == pytest.approx(np.linalg.norm([1, -2, 0.5]))
    # A point 0.1 along the camera's x (right) and y (down) axes lands right and down.
    right, down = cam.camera_to_world[:3, 0], cam.camera_to_world[:3, 1]
    uv, depth = project_points((0.1 * right + 0.1 * down)[None], cam)
    np.testing.assert_allclose(uv[0], [cam.cx + cam.fx * 0.1 / depth[0], cam.cy + cam.fy * 0.1 / depth[0]])


def test_a_camera_moved_with_the_world_sees_the_same_image():
    rng = np.random.default_rng(4)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    R = q * np.sign(np.linalg.det(q))
    s, t = 0.37, np.array([0.2, -1.0, 3.0])
    points = rng.normal(scale=0.2, size=(50, 3))
    cam = frame(distortion={"model": "SIMPLE_RADIAL", "params": [0.05]})
    moved = frame(world_to_camera=world_to_camera_after_similarity(cam.world_to_camera, s, R, t),
                  distortion=cam.distortion)
    uv, depth = project_points(points, cam)
    uv_moved, depth_moved = project_points(s * points @ R.T + t, moved)
    np.testing.assert_allclose(uv_moved, uv, atol=1e-9)
    np.testing.assert_allclose(depth_moved, s * depth)
    np.testing.assert_allclose(moved.center, s * R @ cam.center + t)


def test_blender_conversion_round_trip_and_axes():
    w2c = frame().world_to_camera
    c2w = opencv_w2c_to_blender_c2w(w2c)
    np.testing.assert_allclose(blender_c2w_to_opencv_w2c(c2w), w2c, atol=1e-12)
    # Blender cameras look down their local -Z, with +Y up (= OpenCV's -y).
    np.testing.assert_allclose(-c2w[:3, 2], frame().camera_to_world[:3, 2], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 1], -frame().camera_to_world[:3, 1], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 3], frame().center)


def blender_pixel(p_cam, settings, width, height):
    """Blender's pinhole projection (BKE_camera_params_compute_viewplane, horizontal sensor fit),
    for a point in Blender camera space -> continuous pixel (u right, v down from the top-left)."""
    ycor = settings["pixel_aspect_y"] / settings["pixel_aspect_x"]
    f_px = settings["lens"] * width / settings["sensor_width"]     # view-plane units per unit depth
    depth = -p_cam[2]
    xv, yv = f_px * p_cam[0] / depth, f_px * p_cam[1] / depth
    dx, dy = settings["shift_x"] * width, settings["shift_y"] * width
    xmin, ymin = -0.5 * width + dx, -0.5 * ycor * height + dy
    return np.array([xv - xmin, height - (yv - ymin) / ycor])


@pytest.mark.parametrize("fy", [500.0, 530.0, 470.0])
def test_blender_intrinsics_reproduce_the_projection(fy):
    cam = frame(fy=fy)
    settings = blender_camera_intrinsics(cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height)
    assert settings["pixel_aspect_x"] >= 1 and settings["pixel_aspect_y"] >= 1
    c2w = opencv_w2c_to_blender_c2w(cam.world_to_camera)
    pts = np.random.default_rng(0).uniform(-0.3, 0.3, size=(20, 3))
    uv, _ = project_points(pts, cam)
    p_cam = (np.linalg.inv(c2w) @ np.c_[pts, np.ones(len(pts))].T).T[:, :3]
    got = np.array([blender_pixel(p, settings, cam.width, cam.height) for p in p_cam])
    np.testing.assert_allclose(got, uv, atol=1e-6)
