"""cameras.json: the registered frames of a run, and camera convention conversions.

cameras.json (written by the backend's sfm stage, read by the trainer and the Blender add-on):
    {
      "convention": "opencv",          # x right, y down, z forward
      "matrix": "world_to_camera",
      "frames": [
        {"frame_index": 12,             # 0-based index in the source video (or sorted folder)
         "image": "frames/000012.png",  # relative to the workspace
         "mask": "masks/000012.png",
         "width": 480, "height": 270,
         "fx": .., "fy": .., "cx": .., "cy": ..,
         "distortion": {"model": "SIMPLE_RADIAL", "params": [k1]},
         "world_to_camera": [[4 x 4]]}, ...]
    }
World units are those of the PLY files written by the same run.

cameras_refined.json (written by the backend's train stage) has the same format: the cameras the
Gaussians were trained with, SfM's poses with the training's pose refinement applied (identical to
cameras.json when refinement is off). Whatever uses the trained splat with its cameras (isolation,
the report, the Blender import) reads it where it is, cameras.json otherwise (`trained_cameras_path`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .files import atomic_write_bytes, read_regular_file

# OpenCV camera axes -> Blender camera axes (Blender looks down -Z with +Y up).
_FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class CameraFrame:
    frame_index: int
    image: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    world_to_camera: np.ndarray  # [4, 4] OpenCV
    mask: str | None = None
    distortion: dict = field(default_factory=lambda: {"model": "PINHOLE", "params": []})

    def __post_init__(self):
        self.world_to_camera = np.asarray(self.world_to_camera, dtype=np.float64).reshape(4, 4)

    @property
    def K(self) -> np.ndarray:
        """[3, 3] pinhole intrinsics in pixels."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def camera_to_world(self) -> np.ndarray:
        return np.linalg.inv(self.world_to_camera)

    @property
    def center(self) -> np.ndarray:
        """[3] camera centre in world coordinates."""
        return self.camera_to_world[:3, 3]

    def to_json(self) -> dict:
        d = asdict(self)
        d["world_to_camera"] = self.world_to_camera.tolist()
        return d


def project_points(points: np.ndarray, cam: CameraFrame, distort: bool = True):
    """Project world points [P, 3] to pixels. Returns (uv [P, 2], depth [P]).

    Pixel centres are at integer + 0.5 (COLMAP/OpenCV continuous convention).
    SIMPLE_RADIAL / RADIAL distortion is applied when `distort`.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    cam_pts = pts @ cam.world_to_camera[:3, :3].T + cam.world_to_camera[:3, 3]
    z = cam_pts[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x, y = cam_pts[:, 0] / z, cam_pts[:, 1] / z
    if distort:
        model, params = cam.distortion.get("model"), cam.distortion.get("params", [])
        if model in ("SIMPLE_RADIAL", "RADIAL") and params:
            r2 = x * x + y * y
            factor = 1.0 + params[0] * r2 + (params[1] * r2 * r2 if model == "RADIAL" and len(params) > 1 else 0.0)
            x, y = x * factor, y * factor
    uv = np.stack([cam.fx * x + cam.cx, cam.fy * y + cam.cy], axis=1)
    return uv, z


def world_to_camera_after_similarity(w2c: np.ndarray, s: float, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The world->camera matrix of the same camera after the world moves by x' = s R x + t: the
    camera sees the same image, its coordinates scale with the world."""
    Rc, tc = np.asarray(w2c, dtype=np.float64)[:3, :3], np.asarray(w2c, dtype=np.float64)[:3, 3]
    new = np.eye(4)
    new[:3, :3] = Rc @ R.T
    new[:3, 3] = s * tc - Rc @ R.T @ t
    return new


def opencv_w2c_to_blender_c2w(w2c: np.ndarray) -> np.ndarray:
    """World->camera (OpenCV axes) to Blender's camera->world (camera looks down -Z, +Y up)."""
    return np.linalg.inv(np.asarray(w2c, dtype=np.float64)) @ _FLIP_YZ


def blender_c2w_to_opencv_w2c(c2w: np.ndarray) -> np.ndarray:
    return np.linalg.inv(np.asarray(c2w, dtype=np.float64) @ _FLIP_YZ)


class CamerasFormatError(ValueError):
    """cameras.json cannot be read or is not what FaceSplat writes. The message is one line: the
    file, the frame (position in `frames` and frame_index) and field, what is wrong, then advice."""


_ADVICE = "the file is corrupt or was edited: run the sfm stage again to rewrite it"
_FRAME_KEYS = ("frame_index", "image", "width", "height", "fx", "fy", "cx", "cy", "world_to_camera")


def _show_json(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value) -> float | None:
    """The value as a finite float, or None (bools, strings, NaN, inf, ints too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _frame_from_json(entry, where: str) -> CameraFrame:
    if not isinstance(entry, dict):
        raise CamerasFormatError(f"{where} is {_show_json(entry)}, expected an object with the camera; {_ADVICE}")
    if isinstance(entry.get("frame_index"), int) and not isinstance(entry["frame_index"], bool):
        where += f" (frame_index {entry['frame_index']})"
    missing = [key for key in _FRAME_KEYS if key not in entry]
    if missing:
        raise CamerasFormatError(f"{where} lacks {', '.join(missing)}; {_ADVICE}")

    def bad(key, expected):
        return CamerasFormatError(f"{where}: {key} is {_show_json(entry[key])}, expected {expected}; {_ADVICE}")

    values = {}
    for key in ("frame_index", "width", "height"):
        number = _number(entry[key])
        if number is None or number != int(number) or number < (0 if key == "frame_index" else 1):
            raise bad(key, "a non-negative integer" if key == "frame_index" else "a positive integer (pixels)")
        values[key] = int(number)
    for key in ("fx", "fy", "cx", "cy"):
        number = _number(entry[key])
        if number is None or (key in ("fx", "fy") and number <= 0):
            raise bad(key, "a positive number (pixels)" if key in ("fx", "fy") else "a finite number (pixels)")
        values[key] = number
    if not isinstance(entry["image"], str):  # "" is a camera without an image
        raise bad("image", "a file name")
    mask = entry.get("mask")
    if mask is not None and not isinstance(mask, str):
        raise bad("mask", "a file name or null")
    matrix = entry["world_to_camera"]
    rows = matrix if isinstance(matrix, list) and len(matrix) == 4 else []
    numbers = [[_number(v) for v in row] for row in rows if isinstance(row, list) and len(row) == 4]
    if len(numbers) != 4 or any(v is None for row in numbers for v in row):
        raise bad("world_to_camera", "a 4x4 matrix of finite numbers")
    w2c = np.array(numbers)
    # A camera pose: rigid (or similarity) transform, so the last row is 0 0 0 1 and it inverts.
    if not np.allclose(w2c[3], [0, 0, 0, 1], atol=1e-6) or abs(np.linalg.det(w2c[:3, :3])) < 1e-12:
        raise bad("world_to_camera", "a camera pose (an invertible matrix with last row 0 0 0 1)")
    distortion = entry.get("distortion", {"model": "PINHOLE", "params": []})
    if (not isinstance(distortion, dict) or not isinstance(distortion.get("model"), str)
            or not isinstance(distortion.get("params", []), list)
            or any(_number(v) is None for v in distortion.get("params", []))):
        raise bad("distortion", '{"model": NAME, "params": [finite numbers]}')
    return CameraFrame(image=entry["image"], world_to_camera=w2c, mask=mask,
                       distortion={"model": distortion["model"], "params": list(distortion.get("params", []))},
                       **values)


def read_cameras_json(path) -> list[CameraFrame]:
    """Read cameras.json. Raises CamerasFormatError (a ValueError, one line) for a file that cannot
    be read or parsed, or any frame entry of the wrong shape or type."""
    path = Path(path)
    text = read_regular_file(path, CamerasFormatError, "a cameras.json")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise CamerasFormatError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                                 f"the file is truncated or corrupt: run the sfm stage again to rewrite it") from None
    except (ValueError, RecursionError):  # not UTF-8 text, or nested beyond the parser's stack
        raise CamerasFormatError(f"{path} is not valid JSON text; {_ADVICE}") from None
    if not isinstance(doc, dict) or doc.get("convention") != "opencv" or not isinstance(doc.get("frames"), list):
        raise CamerasFormatError(f"{path} is not a FaceSplat cameras.json (expected convention 'opencv' and a "
                                 f"frames list); give the cameras.json of a FaceSplat workspace")
    return [_frame_from_json(entry, f"{path}: frames[{i}]") for i, entry in enumerate(doc["frames"])]


CAMERAS_JSON = "cameras.json"
REFINED_CAMERAS_JSON = "cameras_refined.json"


def trained_cameras_path(workspace) -> Path:
    """The cameras a workspace's splat was trained with: cameras_refined.json where the train stage
    wrote one, else cameras.json (a workspace from before pose refinement, or not trained yet)."""
    refined = Path(workspace) / REFINED_CAMERAS_JSON
    return refined if refined.is_file() else Path(workspace) / CAMERAS_JSON


def write_cameras_json(path, frames: list[CameraFrame], **extra) -> Path:
    path = Path(path)
    doc = {"convention": "opencv", "matrix": "world_to_camera", **extra,
           "frames": [f.to_json() for f in frames]}
    atomic_write_bytes(path, (json.dumps(doc, indent=1) + "\n").encode())
    return path


def blender_camera_intrinsics(fx: float, fy: float, cx: float, cy: float, width: int, height: int,
                              sensor_width: float = 36.0) -> dict:
    """Blender camera and render settings that reproduce a pinhole camera given in pixels.

    With the sensor fitted horizontally, Blender's view plane is `width` pixels wide at focal
    length `lens * width / sensor_width` pixels, and its lens shift is a fraction of the width
    (both shift_x and shift_y). Unequal fx, fy become a render pixel aspect (ycor = fx / fy).
    Lens distortion has no Blender camera equivalent and is ignored.
    Returns {lens, sensor_width, sensor_fit, shift_x, shift_y, pixel_aspect_x, pixel_aspect_y}.
    """
    ycor = fx / fy  # height of one pixel in Blender's view-plane units (x pixels are 1 unit)
    return {
        "lens": fx * sensor_width / width,
        "sensor_width": sensor_width,
        "sensor_fit": "HORIZONTAL",
        # OpenCV puts the principal point at (cx, cy) from the top-left; Blender shifts the
        # window from the centre, with +y up.
        "shift_x": (0.5 * width - cx) / width,
        "shift_y": ycor * (cy - 0.5 * height) / width,
        "pixel_aspect_x": max(1.0, 1.0 / ycor),  # Blender wants both >= 1
        "pixel_aspect_y": max(1.0, ycor),
    }
