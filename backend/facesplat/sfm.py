"""Stage 3: structure from motion with COLMAP (pycolmap) on the full frames.

SIMPLE_RADIAL, one camera shared by all frames, exhaustive matching for small frame counts and
sequential matching above, incremental mapping, keep the largest model. The result is then
re-expressed in a head-centred world frame (see `head_frame_similarity`) so the splat lands
upright at the origin in Blender, at roughly metric scale.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_python_handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
import pycolmap  # noqa: E402

# Importing pycolmap installs glog's C failure handler for SIGTERM, which aborts the process with a
# stack dump: Cancel in Blender (SIGTERM) during SfM then left no error event. Give both signals
# back to Python, so they stay a clean, resumable interrupt.
if threading.current_thread() is threading.main_thread():
    for _sig, _handler in _python_handlers.items():
        if _handler is not None:
            signal.signal(_sig, _handler)

from .config import SfmConfig
from .core.cameras import CameraFrame, world_to_camera_after_similarity
from .errors import Cancelled, StageError
from .head3d import camera_up
from .stage import StageContext
from .workspace import frame_name

pycolmap.logging.minloglevel = 2  # COLMAP's INFO/WARNING flood; progress goes through events

# Typical phone-at-arm's-length distance; sets the scale of the (scale-free) reconstruction.
ASSUMED_CAMERA_DISTANCE_M = 0.5


@dataclass
class SfmResult:
    cameras: list[CameraFrame]  # registered frames, in the head frame
    xyz: np.ndarray  # [P, 3] float32 sparse points, same frame
    rgb: np.ndarray  # [P, 3] uint8
    sfm_to_world: dict  # x_world = scale R x_colmap + t
    summary: dict  # for report.json


def reconstruct(frames: list[dict], faces: list[dict], root: Path, work_dir: Path, cfg: SfmConfig,
                ctx: StageContext) -> SfmResult:
    """Register `frames` (frames.json records; their images relative to `root`) with pycolmap,
    working in the empty folder `work_dir` (COLMAP's database, and the kept model in
    `work_dir/model`). SfM reads each frame's larger `sfm_image` where it has one; the cameras
    come back scaled to the training frames (`image`). `faces` (the faces stage's records,
    possibly without a single face) only orient the head frame."""
    emit = ctx.emit
    n = len(frames)
    database = work_dir / "database.db"
    image_names = [sfm_image(f) for f in frames]
    token = pycolmap.CancellationToken()
    ctx.cancel_hooks.append(token.cancel)

    emit("sfm", 0.0, f"extracting features from {n} frames")
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.sift.max_num_features = cfg.max_num_features
    extraction.sift.peak_threshold = cfg.peak_threshold
    pycolmap.extract_features(
        database, root, image_names=image_names,
        camera_mode=pycolmap.CameraMode.SINGLE,  # AUTO silently drops the shared camera
        reader_options=pycolmap.ImageReaderOptions(camera_model="SIMPLE_RADIAL"),
        extraction_options=extraction, device=pycolmap.Device.cpu, cancellation_token=token)
    _raise_if_cancelled(token)

    exhaustive = n <= cfg.exhaustive_max_frames
    emit("sfm", 0.25, f"matching features ({'exhaustive' if exhaustive else 'sequential'})")
    if exhaustive:
        pycolmap.match_exhaustive(database, device=pycolmap.Device.cpu, cancellation_token=token)
    else:
        pairing = pycolmap.SequentialPairingOptions(overlap=cfg.sequential_overlap, loop_detection=False)
        pycolmap.match_sequential(database, pairing_options=pairing, device=pycolmap.Device.cpu,
                                  cancellation_token=token)
    _raise_if_cancelled(token)

    emit("sfm", 0.5, "incremental mapping")
    registered = [0]

    def next_image():
        registered[0] += 1
        # COLMAP calls this per registration attempt (retries included): progress, not a count.
        emit("sfm", 0.5 + 0.45 * min(1.0, registered[0] / n), f"incremental mapping, step {registered[0]}")

    options = pycolmap.IncrementalPipelineOptions()
    options.random_seed = cfg.random_seed
    # Small frames carry few features: accept smaller (still verified) inlier sets.
    options.mapper.init_min_num_inliers = 4 * cfg.min_pose_inliers
    options.mapper.abs_pose_min_num_inliers = cfg.min_pose_inliers
    options.mapper.abs_pose_min_inlier_ratio = cfg.min_pose_inlier_ratio
    models = pycolmap.incremental_mapping(database, root, work_dir, options=options,
                                          next_image_callback=next_image, cancellation_token=token)
    _raise_if_cancelled(token)
    best = max(models.values(), key=lambda r: r.num_reg_images()) if models else None
    num_registered = best.num_reg_images() if best is not None else 0
    if num_registered < max(3, cfg.min_registered_fraction * n):
        raise StageError(f"structure from motion registered {'only ' if num_registered else ''}"
                         f"{num_registered or 'none'} of {n} frames; {registration_advice(frames)}")

    by_name = {sfm_image(f): f for f in frames}
    face_by_index = {f["frame_index"]: f for f in faces}
    cameras, centers, dirs = _cameras_from_model(best, by_name, face_by_index)
    frontal = np.array([(face_by_index.get(c.frame_index, {}).get("head") or {}).get("source") == "frontal"
                        for c in cameras])
    xyz = np.array([p.xyz for p in best.points3D.values()], dtype=np.float64).reshape(-1, 3)
    rgb = np.array([p.color for p in best.points3D.values()], dtype=np.uint8).reshape(-1, 3)

    scale, rotation, translation = head_frame_similarity(cameras, centers, dirs, frontal)
    cameras = [_transform_camera(c, scale, rotation, translation) for c in cameras]
    xyz = scale * xyz @ rotation.T + translation

    kept_dir = work_dir / "model"
    kept_dir.mkdir(exist_ok=True)
    best.write(kept_dir)  # COLMAP's own frame, for inspection with COLMAP tools
    summary = {
        "frames_registered": num_registered,
        "mean_reprojection_error_px": float(best.compute_mean_reprojection_error()),
        "sparse_points": int(len(xyz)),
        "models_found": len(models),
        "matching": "exhaustive" if exhaustive else "sequential",
        "sfm_frame_height": int(frames[0].get("sfm_height", frames[0]["height"])),
    }
    emit("sfm", 1.0, f"registered {num_registered} of {n} frames, {len(xyz)} points")
    return SfmResult(cameras=cameras, xyz=xyz.astype(np.float32), rgb=rgb,
                     sfm_to_world={"scale": scale, "rotation": rotation.tolist(), "translation": translation.tolist()},
                     summary=summary)


# Below this many pixels on the frame's short side SIFT finds too few features to register
# (a portrait video at --height 180 is 100 px wide: 2 of 40 registered; at 360, 40 of 40).
MIN_SHORT_SIDE_PX = 240


def sfm_image(frame: dict) -> str:
    """The image SfM reads for a frames.json record, relative to the workspace (COLMAP's name)."""
    return frame.get("sfm_image", frame["image"])


def registration_advice(frames: list[dict]) -> str:
    """What to try when too few frames register: a larger --height when the frames SfM read
    (`sfm_image` where there is one) are small."""
    short = min(min(f.get("sfm_width", f["width"]), f.get("sfm_height", f["height"])) for f in frames) if frames else 0
    if 0 < short < MIN_SHORT_SIDE_PX:
        height = frames[0].get("sfm_height", frames[0]["height"])
        needed = int(np.ceil(height * MIN_SHORT_SIDE_PX / short / 2) * 2)
        return (f"the frames are only {short} px on their short side, too small to match: "
                f"try --height {max(needed, 360)}")
    return "try a slower orbit with more overlap, sharper (less blurred) video, or more --num-frames"


def _raise_if_cancelled(token) -> None:
    if token.is_cancelled:
        raise Cancelled("structure from motion was interrupted; run the same command again to resume")


def _cameras_from_model(rec, by_name, face_by_index):
    """CameraFrames in COLMAP's frame, intrinsics scaled from the SfM frames to the training
    frames, + per-camera ray towards the head (the face's head ellipse centre where a face was
    found, else the optical axis) for framing."""
    cameras, centers, dirs = [], [], []
    for image in sorted(rec.images.values(), key=lambda im: im.name):
        if not image.has_pose or image.name not in by_name:
            continue
        cam = image.camera
        params = list(cam.params)  # SIMPLE_RADIAL: f, cx, cy, k
        pose = image.cam_from_world()
        w2c = np.eye(4)
        w2c[:3, :4] = pose.matrix()
        frame = by_name[image.name]
        # Pixel coordinates with centres at +0.5 scale with the image; k acts on normalised ones.
        sx, sy = frame["width"] / cam.width, frame["height"] / cam.height
        cf = CameraFrame(
            frame_index=frame["frame_index"], image=frame["image"],
            mask=f"masks/{frame_name(frame['frame_index'])}",  # what the masks stage writes for every camera
            width=frame["width"], height=frame["height"], fx=params[0] * sx, fy=params[0] * sy,
            cx=params[1] * sx, cy=params[2] * sy,
            distortion={"model": cam.model_name, "params": params[3:]},
            world_to_camera=w2c)
        cameras.append(cf)
        centers.append(cf.center)
        head = (face_by_index.get(frame["frame_index"]) or {}).get("head")
        u, v = head["center"] if head else (cf.cx, cf.cy)
        ray_cam = np.array([(u - cf.cx) / cf.fx, (v - cf.cy) / cf.fy, 1.0])
        ray = cf.camera_to_world[:3, :3] @ ray_cam
        dirs.append(ray / np.linalg.norm(ray))
    return cameras, np.array(centers), np.array(dirs)


def head_frame_similarity(cameras, centers, dirs, frontal=None):
    """Similarity (s, R, t) mapping COLMAP's frame to a head frame: x' = s R x + t.

    Origin: the point closest (least squares) to all camera rays towards the head (through the
    face's head ellipse where one was found, else the optical axis: a capture circles its subject).
    Up (+Z): from the cameras (head3d.camera_up: orthogonal to their level x axes). Front (-Y): from the
    head towards the cameras that saw the face frontally (`frontal`, bool per camera; all cameras
    when none did, which suits an arc in front of the face but not a full circle), so the face
    looks towards -Y as in Blender's front view.
    Scale: the median camera distance becomes ASSUMED_CAMERA_DISTANCE_M.
    """
    # Closest point to lines c_i + t d_i: sum (I - d d^T) p = sum (I - d d^T) c.
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c, d in zip(centers, dirs):
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ c
    head = np.linalg.lstsq(A, b, rcond=None)[0]
    up = camera_up(cameras)
    facing = centers[frontal] if frontal is not None and np.any(frontal) else centers
    front = np.mean(facing, axis=0) - head
    front -= up * (front @ up)
    if np.linalg.norm(front) < 1e-9:
        front = np.cross(up, [1.0, 0.0, 0.0])
    front /= np.linalg.norm(front)
    y_axis = -front  # Blender convention: the face looks towards -Y
    x_axis = np.cross(y_axis, up)
    rotation = np.stack([x_axis, y_axis, up])  # rows: new axes in old coordinates
    distance = np.median(np.linalg.norm(centers - head, axis=1))
    scale = ASSUMED_CAMERA_DISTANCE_M / max(distance, 1e-12)
    translation = -scale * rotation @ head
    return float(scale), rotation, translation


def _transform_camera(cam: CameraFrame, s: float, R: np.ndarray, t: np.ndarray) -> CameraFrame:
    """Camera after the world moves by x' = s R x + t (projection unchanged)."""
    cam.world_to_camera = world_to_camera_after_similarity(cam.world_to_camera, s, R, t)
    return cam
