"""The head in 3D, from structure from motion, before any mask exists.

Cues, in order of trust:
- faces a detector found in some views (`triangulate_faces`): the head ellipses' centres
  triangulated into a 3D centre, their sizes times depth into a radius;
- the object-centric prior (`convergence_point`): a capture circles its subject, so the point
  closest to every camera's optical axis is the subject's centre (no face needed: statues, the
  back of a head);
- the sparse points around that centre (`extent_from_points`) for the head's extent, with the
  up direction from the cameras (`camera_up`).
`estimate_head_volume` combines them into a `HeadVolume` (an ellipsoid); `project_ellipsoid`
gives its exact outline in any view, which masks.py turns into that view's head mask.
`carve_visual_hull` then votes the views' silhouettes (masks.py's cuts) into one 3D head inside
the ellipsoid, so that one view's wrong cut is outvoted by the others, and ends it at a `Neck`.

Pixels follow core/cameras.py `project_points`: pixel centres at integer + 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .config import HeadVolumeConfig
from .core.cameras import CameraFrame, project_points
from .errors import StageError

if TYPE_CHECKING:
    from .faces import HeadEllipse


@dataclass(frozen=True)
class Convergence:
    point: np.ndarray  # [3] least-squares closest point to the lines
    axis_miss: float  # RMS sine of the angle between each line and its direction to the point
    spread: float  # smallest eigenvalue of sum(I - d d^T) / N: 0 for parallel lines


@dataclass(frozen=True)
class FaceTriangulation:
    center: np.ndarray  # [3] world
    radii: tuple[float, float]  # horizontal, vertical head semi-axes (world units)
    inliers: np.ndarray  # bool [N] per given view (False also where no face was given)


@dataclass(frozen=True)
class HeadVolume:
    """An ellipsoid: x = center + rotation @ (semi_axes * u), |u| = 1."""

    center: np.ndarray  # [3] world
    rotation: np.ndarray  # [3, 3] columns: the ellipsoid's axes in world coordinates
    semi_axes: np.ndarray  # [3] along those columns
    center_source: str  # "faces" | "cameras": what placed it
    extent_source: str  # "points" | "faces" | "default": what sized it

    def surface_points(self, n: int = 2000, seed: int = 0) -> np.ndarray:
        """[n, 3] points spread over the ellipsoid's surface."""
        u = np.random.default_rng(seed).normal(size=(n, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        return self.center + (u * self.semi_axes) @ self.rotation.T

    def heights(self, points: np.ndarray) -> np.ndarray:
        """[P] height of each point above the ellipsoid's centre, along its up axis (world units)."""
        return (np.asarray(points, float).reshape(-1, 3) - self.center) @ self.rotation[:, 2]


@dataclass(frozen=True)
class Neck:
    """Where the head runs on into its neck, in heights above the head volume's centre
    (`HeadVolume.heights`, world units): the neck from `top` down, nothing of the head below `cut`."""

    top: float
    cut: float


@dataclass(frozen=True)
class VisualHull:
    """The voxels of a grid over an ellipsoid that most views' silhouettes agree are head."""

    centers: np.ndarray  # [V, 3] world: the kept voxels' centres
    voxel_size: float  # edge of a (cubic) voxel, world units
    candidates: int  # voxels of the grid inside the ellipsoid (before the vote)
    voters: int  # views whose silhouette voted


def carve_visual_hull(volume: HeadVolume, cameras: Sequence[CameraFrame], silhouettes: Sequence[np.ndarray | None],
                      vote: float, resolution: int, neck: Neck | None = None) -> VisualHull:
    """The visual hull of `silhouettes` (bool [H, W] per camera, in its distorted frame; None: the
    view has no say) inside `volume`, on a grid of cubic voxels `resolution` across its longest
    axis. A voxel is kept when it falls inside the silhouette in at least the fraction `vote` of
    the voting views it is in the frame of (1.0 is the classic hull: one view's miss carves; a
    lower vote lets a few views' wrong cuts be outvoted both ways). With a `neck`, nothing below
    its cut is head, and about a voxel in the neck a view whose silhouette ends above it (in the
    frame's rows) has no say: a voxel in the neck no view calls head is carved. Only the
    largest 26-connected piece is kept: stray voxels kept by chance are no head."""
    from scipy import ndimage

    step = 2 * float(volume.semi_axes.max()) / resolution
    counts = np.maximum(1, np.ceil(2 * volume.semi_axes / step).astype(int))  # cells per ellipsoid axis
    grid = np.stack(np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * step for n in counts], indexing="ij"), axis=-1)
    inside = (np.square(grid / volume.semi_axes).sum(axis=-1) <= 1.0)  # [nx, ny, nz]
    height = grid[..., 2]  # the grid's third axis is the volume's up: `HeadVolume.heights`
    if neck is not None:
        inside &= height >= neck.cut
    centers = volume.center + grid[inside] @ volume.rotation.T  # [V, 3] world
    in_neck = height[inside] < (neck.top if neck is not None else -np.inf)
    seen = np.zeros(len(centers), np.int32)
    votes = np.zeros(len(centers), np.int32)
    voters = 0
    for camera, silhouette in zip(cameras, silhouettes):
        if silhouette is None:
            continue
        voters += 1
        pixel = pixels_in_frame(centers, camera)
        says = pixel >= 0
        if neck is not None:
            says &= ~(in_neck & (pixel // camera.width > lowest_row(silhouette)))
        seen += says
        votes += silhouette.reshape(-1)[np.maximum(pixel, 0)] & says
    kept = (votes >= vote * seen - 1e-9) & ~(in_neck & (votes == 0))
    grid_kept = np.zeros(inside.shape, bool)
    grid_kept[inside] = kept
    labels, n = ndimage.label(grid_kept, structure=np.ones((3, 3, 3)))
    if n > 1:
        largest = 1 + int(np.argmax(np.bincount(labels.reshape(-1))[1:]))
        kept = (labels == largest)[inside]
    return VisualHull(centers[kept], step, int(inside.sum()), voters)


def lowest_row(silhouette: np.ndarray) -> int:
    """The lowest row of the frame a bool [H, W] silhouette reaches (-1 when empty)."""
    rows = np.flatnonzero(silhouette.any(axis=1))
    return int(rows[-1]) if len(rows) else -1


def pixels_in_frame(points: np.ndarray, camera: CameraFrame) -> np.ndarray:
    """[P] flat pixel index (row * width + column) of each point in `camera`'s distorted frame;
    -1 where it is behind the camera, outside the frame, or beyond where the radial distortion
    still grows with the radius (a barrel lens's polynomial folds far points back in)."""
    uv, depth = project_points(points, camera)
    col, row = np.floor(uv[:, 0]), np.floor(uv[:, 1])
    ok = (depth > 0) & (col >= 0) & (col < camera.width) & (row >= 0) & (row < camera.height)
    model, params = camera.distortion.get("model"), camera.distortion.get("params", [])
    if model in ("SIMPLE_RADIAL", "RADIAL") and params and params[0] < 0:
        pinhole, _ = project_points(points, camera, distort=False)
        r2 = np.square((pinhole - [camera.cx, camera.cy]) / [camera.fx, camera.fy]).sum(axis=1)
        ok &= 1 + 3 * params[0] * r2 > 0  # d/dr of r (1 + k r^2) > 0
    return np.where(ok, row * camera.width + col, -1).astype(np.int64)


def optical_axes(cameras: Sequence[CameraFrame]) -> tuple[np.ndarray, np.ndarray]:
    """(centres [N, 3], unit viewing directions [N, 3]) of the cameras, in world coordinates."""
    c2w = np.array([c.camera_to_world for c in cameras])
    return c2w[:, :3, 3], c2w[:, :3, 2]


def camera_up(cameras: Sequence[CameraFrame], cfg: HeadVolumeConfig = HeadVolumeConfig()) -> np.ndarray:
    """[3] unit up direction. People hold phones upright (no roll) but tilt them: the cameras'
    x axes are level, so up is the direction most orthogonal to all of them. Where the x axes
    barely turn (a short arc) that leaves up undetermined, and the mean of the cameras' up
    vectors (-y) serves instead (it leans towards the cameras when they look down)."""
    c2w = np.array([c.camera_to_world for c in cameras])
    mean_up = -c2w[:, :3, 1].mean(axis=0)
    mean_up /= np.linalg.norm(mean_up)
    rights = c2w[:, :3, 0]
    values, vectors = np.linalg.eigh(rights.T @ rights / len(rights))
    if values[1] < cfg.min_level_spread:
        return mean_up
    up = vectors[:, 0]
    return up if up @ mean_up > 0 else -up


def convergence_point(centers: np.ndarray, directions: np.ndarray,
                      cfg: HeadVolumeConfig = HeadVolumeConfig()) -> Convergence:
    """The point closest (least squares) to the lines `centers[i] + t directions[i]`, t > 0.

    Raises StageError when the lines fix no point (nearly parallel), meet behind the cameras,
    or miss their point widely: no single subject for a head to be centred on.
    """
    centers = np.asarray(centers, float).reshape(-1, 3)
    d = np.asarray(directions, float).reshape(-1, 3)
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    n = len(d)
    if n < 2:
        raise StageError(f"{n} camera(s) cannot locate the subject; try a capture with more frames around the head")
    # Closest point to lines c_i + t d_i: sum (I - d d^T) p = sum (I - d d^T) c.
    projectors = np.eye(3) - d[:, :, None] * d[:, None, :]  # [N, 3, 3]
    normal = projectors.sum(axis=0)
    spread = float(np.linalg.eigvalsh(normal / n)[0])
    if spread < cfg.min_axis_spread:
        raise StageError("the cameras all look in nearly the same direction (a walk-by or a pan, not an orbit), "
                         "so there is no single subject to find the head from; try a video that circles the head "
                         "and keeps it in the middle of the frame")
    point = np.linalg.solve(normal, np.einsum("nij,nj->i", projectors, centers))
    to_point = point - centers
    distance = np.linalg.norm(to_point, axis=1)
    ahead = np.einsum("ni,ni->n", to_point, d)
    if np.median(ahead) <= 0:
        raise StageError("the cameras look away from each other (outwards, as in a panorama), not at one subject; "
                         "try a video that circles the head and keeps it in the middle of the frame")
    sine = np.linalg.norm(np.cross(to_point, d), axis=1) / np.maximum(distance, 1e-12)
    axis_miss = float(np.sqrt(np.mean(sine ** 2)))
    if axis_miss > cfg.max_axis_miss:
        raise StageError(f"the cameras do not look at one common subject (their axes miss it by "
                         f"{np.degrees(np.arcsin(min(axis_miss, 1.0))):.0f} degrees on average; a walk-by or a "
                         "scene of several things?); try a video that circles the head and keeps it in the middle "
                         "of the frame")
    return Convergence(point, axis_miss, spread)


def pixel_rays(camera: CameraFrame, uv: np.ndarray) -> np.ndarray:
    """[P, 3] unit world directions of the rays through pixels `uv` [P, 2] (lens distortion
    undone by fixed-point iteration through `project_points`)."""
    uv = np.asarray(uv, float).reshape(-1, 2)
    focal = np.array([camera.fx, camera.fy])
    xy = (uv - [camera.cx, camera.cy]) / focal  # normalised camera coordinates, distorted
    c2w = camera.camera_to_world
    for _ in range(10):  # SIMPLE_RADIAL k ~ 0.1 at the frame's edge: converges in a few steps
        world = _camera_to_world_points(c2w, xy)
        projected, _ = project_points(world, camera)
        xy = xy + (uv - projected) / focal
    rays = np.column_stack([xy, np.ones(len(xy))]) @ c2w[:3, :3].T
    return rays / np.linalg.norm(rays, axis=1, keepdims=True)


def triangulate_faces(cameras: Sequence[CameraFrame], ellipses: Sequence[HeadEllipse | None],
                      cfg: HeadVolumeConfig = HeadVolumeConfig()) -> FaceTriangulation | None:
    """The head centre and radii from head ellipses (masks.py `head_ellipse`) in >= 2 views.

    Robust to wrong views (a false detection, another person): every pair of views proposes a
    centre, the one most views agree with (reprojection within `face_inlier_tolerance` of their
    ellipse) wins and is refined by least squares over those views. Radii: each agreeing view's
    semi-axes times its depth over the focal length, median over views. None when fewer than two
    views agree or their rays fix no point.
    """
    views = [k for k, e in enumerate(ellipses) if e is not None]
    inliers = np.zeros(len(ellipses), bool)
    if len(views) < 2:
        return None
    centers = np.array([cameras[k].center for k in views])
    rays = np.array([pixel_rays(cameras[k], ellipses[k].center)[0] for k in views])
    best = None
    for i in range(len(views)):
        for j in range(i + 1, len(views)):
            candidate = _closest_point(centers[[i, j]], rays[[i, j]])
            if candidate is None:
                continue
            errors = _face_errors(candidate, [cameras[k] for k in views], [ellipses[k] for k in views])
            agree = errors < cfg.face_inlier_tolerance
            score = (agree.sum(), -errors[agree].sum())
            if best is None or score > best[0]:
                best = (score, agree)
    if best is None or best[0][0] < 2:
        return None
    agree = best[1]
    try:
        center = convergence_point(centers[agree], rays[agree], cfg).point
    except StageError:
        return None  # the agreeing views are too close together to fix a point
    horizontal, vertical = [], []
    for k in np.asarray(views)[agree]:
        cam, ellipse = cameras[k], ellipses[k]
        depth = (cam.world_to_camera[:3, :3] @ center + cam.world_to_camera[:3, 3])[2]
        horizontal.append(ellipse.axes[0] * depth / cam.fx)
        vertical.append(ellipse.axes[1] * depth / cam.fy)
    inliers[np.asarray(views)[agree]] = True
    return FaceTriangulation(center, (float(np.median(horizontal)), float(np.median(vertical))), inliers)


def extent_from_points(points: np.ndarray, center: np.ndarray, rotation: np.ndarray, prior_radius: float,
                       cfg: HeadVolumeConfig = HeadVolumeConfig()):
    """The head's half-extents [3] from the sparse points around `center`, along the columns
    of `rotation` (the axes of the head's box); None when too few points are there. The box
    stays centred on `center` and reaches the farthest of the head's points on either side:
    points gather where there is texture (the face), not on a bald scalp or smooth hair, so
    their own middle sits too low and too far forward.

    Points within `search_radius` prior radii are clustered (DBSCAN, eps `cluster_eps` prior
    radii); the largest cluster is the head (what the cameras circle is what they see most of;
    the background and a table edge fall apart into other clusters). Its extent along up and along its
    main horizontal directions, between robust quantiles, is the box.
    """
    from sklearn.cluster import DBSCAN

    points = np.asarray(points, float).reshape(-1, 3)
    near = points[np.linalg.norm(points - center, axis=1) < cfg.search_radius * prior_radius]
    if len(near) < cfg.min_head_points:
        return None
    labels = DBSCAN(eps=cfg.cluster_eps * prior_radius, min_samples=cfg.cluster_min_points).fit_predict(near)
    if labels.max() < 0:
        return None
    head = near[labels == np.bincount(labels[labels >= 0]).argmax()]
    if len(head) < cfg.min_head_points:
        return None
    local = (head - center) @ rotation  # [P, 3] coordinates along the box's axes
    low, high = np.quantile(local, [cfg.extent_quantile, 1 - cfg.extent_quantile], axis=0)
    return np.maximum(-low, high)


def estimate_head_volume(cameras: Sequence[CameraFrame], points: np.ndarray,
                         face_ellipses: Sequence[HeadEllipse | None] | None = None,
                         cfg: HeadVolumeConfig = HeadVolumeConfig()) -> HeadVolume:
    """The head's ellipsoid from registered cameras, the sparse points [P, 3] and, optionally,
    a head ellipse (or None) per camera from a face detector.

    Where to look: the faces' triangulated centre, else the cameras' convergence point (which
    raises StageError when the cameras converge on nothing: checked only without faces, since
    faces name the subject themselves). How big: the points' cluster there, else the faces'
    radii, else `default_radius`.
    """
    if len(cameras) < 2:
        raise StageError(f"only {len(cameras)} registered frame(s): too few to place the head in 3D; "
                         "try a capture with more frames around the head")
    centers, directions = optical_axes(cameras)
    up = camera_up(cameras, cfg)
    faces = triangulate_faces(cameras, face_ellipses, cfg) if face_ellipses is not None else None
    if faces is not None:
        center, center_source = faces.center, "faces"
        radii = np.array([faces.radii[0], faces.radii[0], faces.radii[1]])
    else:
        center, center_source = convergence_point(centers, directions, cfg).point, "cameras"
        radii = np.full(3, cfg.default_radius * np.median(np.linalg.norm(centers - center, axis=1)))
    rotation = _upright_axes(up, centers.mean(axis=0) - center)
    extent_source = "faces" if faces is not None else "default"
    extent = extent_from_points(points, center, rotation, float(np.max(radii)), cfg)
    if extent is not None:
        radii, extent_source = extent, "points"
    return HeadVolume(np.asarray(center, float), rotation, cfg.margin * np.asarray(radii, float),
                      center_source, extent_source)


def project_ellipsoid(volume: HeadVolume, camera: CameraFrame, boundary_samples: int = 72):
    """The head volume's outline in `camera`'s image: (center (x, y), semi-axes (a, b), angle in
    degrees) in pixels, the axis `a` at `angle` from the image's +x towards +y (OpenCV's
    `cv2.ellipse` convention) and |angle| <= 45, so at angle 0 `a` is horizontal. None when the
    ellipsoid is not wholly in front of the camera.

    Pinhole outline exactly, as the dual conic C* = P Q* P^T of the ellipsoid's dual quadric Q*;
    with lens distortion, that outline's points are distorted and an ellipse fitted to them.
    """
    w2c = camera.world_to_camera
    shape = volume.rotation * volume.semi_axes  # [3, 3] unit sphere -> ellipsoid (columns scaled)
    in_camera = w2c[:3, :3] @ shape
    center_camera = w2c[:3, :3] @ volume.center + w2c[:3, 3]
    nearest_depth = center_camera[2] - np.linalg.norm(in_camera[2])
    if nearest_depth <= 1e-9 * np.linalg.norm(center_camera):
        return None
    to_sphere = np.eye(4)
    to_sphere[:3, :3], to_sphere[:3, 3] = shape, volume.center
    dual_quadric = to_sphere @ np.diag([1.0, 1.0, 1.0, -1.0]) @ to_sphere.T
    projection = camera.K @ w2c[:3, :]
    center, axes, angle = _ellipse_from_dual_conic(projection @ dual_quadric @ projection.T)
    if camera.distortion.get("model") in ("SIMPLE_RADIAL", "RADIAL") and any(camera.distortion.get("params", [])):
        t = np.linspace(0, 2 * np.pi, boundary_samples, endpoint=False)
        c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        outline = center + np.outer(axes[0] * np.cos(t), [c, s]) + np.outer(axes[1] * np.sin(t), [-s, c])
        xy = (outline - [camera.cx, camera.cy]) / [camera.fx, camera.fy]
        distorted, _ = project_points(_camera_to_world_points(camera.camera_to_world, xy), camera)
        center, axes, angle = _ellipse_from_dual_conic(np.linalg.inv(_fit_conic(distorted)))
    return (float(center[0]), float(center[1])), (float(axes[0]), float(axes[1])), float(angle)


def _upright_axes(up: np.ndarray, towards_cameras: np.ndarray) -> np.ndarray:
    """[3, 3] columns: the horizontal direction across the cameras' mean view, the horizontal
    direction towards the cameras, up. Left-right and front-back differ in a head."""
    towards = towards_cameras - up * (towards_cameras @ up)
    if np.linalg.norm(towards) < 1e-9:  # cameras all around or straight above: any horizontal
        towards = np.cross(up, [1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.cross(up, [0.0, 1.0, 0.0])
    towards /= np.linalg.norm(towards)
    return np.column_stack([np.cross(towards, up), towards, up])


def _ellipse_from_dual_conic(dual: np.ndarray):
    """(center [2], semi-axes [2], angle degrees) of the ellipse whose dual conic is `dual`
    (3x3, any scale). For an ellipse (x - m)^T S^-1 (x - m) = 1 the dual conic is, up to scale,
    [[S - m m^T, -m], [-m^T, -1]]."""
    dual = -dual / dual[2, 2]
    m = -dual[:2, 2]
    S = dual[:2, :2] + np.outer(m, m)
    values, vectors = np.linalg.eigh((S + S.T) / 2)
    if values[0] <= 0:
        raise ValueError("the conic is not an ellipse")
    k = int(np.argmax(np.abs(vectors[0])))  # the axis nearer the image's x axis comes first
    first = vectors[:, k] * np.sign(vectors[0, k] or 1.0)
    axes = np.sqrt([values[k], values[1 - k]])
    return m, axes, float(np.degrees(np.arctan2(first[1], first[0])))


def _fit_conic(points: np.ndarray) -> np.ndarray:
    """The point conic (3x3) through `points` [P, 2] (least squares, coordinates normalised)."""
    mean = points.mean(axis=0)
    scale = np.sqrt(((points - mean) ** 2).sum(axis=1).mean())
    x, y = ((points - mean) / scale).T
    _, _, vt = np.linalg.svd(np.column_stack([x * x, x * y, y * y, x, y, np.ones_like(x)]))
    a, b, c, d, e, f = vt[-1]
    conic = np.array([[a, b / 2, d / 2], [b / 2, c, e / 2], [d / 2, e / 2, f]])
    normalise = np.array([[1 / scale, 0, -mean[0] / scale], [0, 1 / scale, -mean[1] / scale], [0, 0, 1]])
    return normalise.T @ conic @ normalise


def _camera_to_world_points(c2w: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """World points at depth 1 on the rays through normalised camera coordinates `xy` [P, 2]."""
    return np.column_stack([xy, np.ones(len(xy))]) @ c2w[:3, :3].T + c2w[:3, 3]


def _closest_point(centers: np.ndarray, rays: np.ndarray) -> np.ndarray | None:
    normal = sum(np.eye(3) - np.outer(d, d) for d in rays)
    if np.linalg.eigvalsh(normal)[0] < 1e-9:
        return None
    return np.linalg.solve(normal, sum((np.eye(3) - np.outer(d, d)) @ c for c, d in zip(centers, rays)))


def _face_errors(point: np.ndarray, cameras: Sequence[CameraFrame], ellipses) -> np.ndarray:
    """Per view: distance from the head ellipse's centre to `point` reprojected, in units of the
    ellipse's vertical semi-axis; inf where the point is behind the camera."""
    errors = []
    for cam, ellipse in zip(cameras, ellipses):
        uv, depth = project_points(point[None], cam)
        off = np.hypot(*(uv[0] - ellipse.center)) / ellipse.axes[1]
        errors.append(off if depth[0] > 0 else np.inf)
    return np.array(errors)
