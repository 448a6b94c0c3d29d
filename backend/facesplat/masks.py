"""Stage 4: a soft head mask per registered view, from the head's 3D volume.

The head volume (head3d.py: faces triangulated where a detector found them, else the point the
cameras converge on, sized from the sparse points) is projected into every registered view: its
exact outline is the view's head ellipse, one head consistent across views, back of the head
included. Each view's soft ellipse is cut to the head's silhouette by colour (GrabCut seeded
with the ellipse: its core is head, beyond SILHOUETTE_RING times it background). Per-view cuts
disagree (a shadowed face cut away against a dark background, an ear the colour of the wall
lost, a patch of background kept), so they are then voted into one 3D head: the visual hull
(head3d.py `carve_visual_hull`) in the volume grown by SILHOUETTE_RING, where a few views'
misses are outvoted when there are many views (`hull_vote`), and each view's mask is that hull
seen from the view, at half weight where the view's own cut says background (`hull_beyond_cut`:
trimming there would bring each cut's own misses back). A person's head (placed by faces) ends
at a rule, not where the cuts happen to stop (`head_neck`): below the chin the neck is the same
skin as the shoulders and every cut ends it at its own height, so there a cut that ends above a
voxel has no say on it, and nothing below the neck's cut is head. With fewer than
`hull_min_views` cuts each view keeps its own cut; a view whose cut fails keeps the ellipse (or
the hull's view of it).

Writes `<out_dir>/<NNNNNN>.png` (uint8, 255 = head; same names as frames/) and returns the
records the pipeline keeps as `masks.json`:
    [{"frame_index", "mask": "masks/000012.png", "source": "projected",
      "center": [x, y], "axes": [a, b], "angle": degrees,
      "shape": "hull" | "silhouette" | "ellipse" | "empty", "cut": bool}]
`center` is in pixels, `axes` are the ellipse's semi-axes in pixels before the rotation by
`angle`; `shape` says what the mask is: the visual hull's view, the view's own cut, or the plain
soft ellipse ("empty": the head volume is not in front of that camera; center, axes and angle
are null); `cut` whether the view's own GrabCut cut succeeded (and voted in the hull).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from .config import MaskConfig
from .core.cameras import CameraFrame, project_points
from .core.files import atomic_write_bytes
from .errors import StageError
from .faces import HeadEllipse
from .head3d import HeadVolume, Neck, VisualHull, carve_visual_hull, lowest_row, pixels_in_frame, project_ellipsoid
from .stage import StageContext
from .workspace import frame_name


def masks_from_head_volume(cameras: list[CameraFrame], volume: HeadVolume, frames_root: Path, out_dir: Path,
                           cfg: MaskConfig, ctx: StageContext) -> list[dict]:
    """One head mask per registered camera: the head volume's outline in its view, cut to the
    silhouette, and the cuts made consistent across views by their visual hull (carved in the
    volume grown as far as the cut searches). A view the volume is not wholly in front of gets
    an empty mask."""
    ellipses = []
    for camera in cameras:
        outline = project_ellipsoid(volume, camera)
        ellipses.append(None if outline is None else HeadEllipse("projected", *outline))

    def cut(camera: CameraFrame, ellipse: HeadEllipse | None) -> np.ndarray | None:
        if ellipse is None or not cfg.refine:
            return None
        image = cv2.imread(str(frames_root / camera.image))
        if image is None:
            raise StageError(f"cannot read frame {frames_root / camera.image}; the workspace is damaged: "
                             "delete it and run again")
        return head_silhouette(image, ellipse, cfg.refine_margin)

    # GrabCut releases the GIL: one frame per core.
    with ThreadPoolExecutor(max_workers=max(1, min(4, cv2.getNumberOfCPUs()))) as pool:
        silhouettes = list(pool.map(cut, cameras, ellipses))
    ctx.emit("masks", 0.7, f"cut {sum(s is not None for s in silhouettes)} of {len(cameras)} views to the silhouette")
    hull = neck_hull = None
    neck = head_neck(volume, cfg)
    if cfg.refine and cfg.hull and sum(s is not None for s in silhouettes) >= cfg.hull_min_views:
        hull = carve_visual_hull(search_volume(volume), cameras,
                                 [None if s is None else vote_region(s, e, cfg.hull_slack)
                                  for s, e in zip(silhouettes, ellipses)], cfg.hull_vote, cfg.hull_resolution,
                                 neck)
        if not len(hull.centers):
            hull = None  # nothing is head in enough views: keep each view's own cut
        elif neck is not None:
            neck_hull = replace(hull, centers=hull.centers[volume.heights(hull.centers) < neck.top])
    ctx.emit("masks", 0.8, "carved the views' silhouettes into one head" if hull is not None else "masks cut per view")

    records = []
    for k, (camera, ellipse, silhouette) in enumerate(zip(cameras, ellipses, silhouettes)):
        shape = (camera.height, camera.width)
        if ellipse is None:
            mask, kind = np.zeros(shape, np.uint8), "empty"
        elif hull is not None:
            bound = search_volume(volume)
            mask, kind = hull_mask(hull, camera, bound, cfg), "hull"
            if silhouette is not None:
                neck_view = None if neck_hull is None else hull_mask(neck_hull, camera, bound, cfg)
                mask = trim_by_cut(mask, silhouette, cfg.hull_beyond_cut, neck_view)
        elif silhouette is not None:
            mask, kind = np.minimum(soft_ellipse_mask(shape, ellipse, cfg.blur_fraction), silhouette), "silhouette"
        else:
            mask, kind = soft_ellipse_mask(shape, ellipse, cfg.blur_fraction), "ellipse"
        name = frame_name(camera.frame_index)
        _write_png(out_dir / name, mask)
        record = {"frame_index": camera.frame_index, "mask": f"{out_dir.name}/{name}", "source": "projected",
                  "center": None, "axes": None, "angle": None}
        if ellipse is not None:
            record.update(center=[round(v, 2) for v in ellipse.center],
                          axes=[round(v, 2) for v in ellipse.axes], angle=round(ellipse.angle, 2))
        records.append({**record, "shape": kind, "cut": silhouette is not None})
        ctx.emit("masks", 0.8 + 0.2 * (k + 1) / len(cameras), f"made mask {k + 1} of {len(cameras)}")
    return records


def head_neck(volume: HeadVolume, cfg: MaskConfig) -> Neck | None:
    """Where the head runs on into its neck (`cfg.neck_top`, `cfg.neck_cut`: heights in the head
    ellipsoid's vertical semi-axes from its centre), for a head that faces placed. A face means a
    person, whose neck and shoulders are the face's skin, so each view's cut ends the neck at its
    own height (head3d.py `Neck`). A head placed by the cameras alone has no chin to measure
    from: its centre is where the cameras converge, and the stone head's chin, seen from above,
    lies below the neck cut there; it keeps the plain vote."""
    if volume.center_source != "faces":
        return None
    height = float(volume.semi_axes[2])
    return Neck(cfg.neck_top * height, cfg.neck_cut * height)


def trim_by_cut(hull_view: np.ndarray, silhouette: np.ndarray, beyond_cut: float,
                neck_view: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H, W]: a view's mask from the hull seen from it and the view's own cut. The hull's
    outline overshoots by up to a voxel, and a short arc cannot carve behind the head; the view's
    own cut could trim that (on the 360-degree orbit: precision 0.930 -> 0.976), but it brings back
    the cut's own misses (recall 0.992 -> 0.984, worst view 0.967 -> 0.910), and training pays more
    for a missing ear than for a rim of background. So where they disagree the mask is weighted
    `beyond_cut`: neither trimmed nor kept. The hull's neck seen from the view (`neck_view`) is
    kept whole below the lowest row the cut reaches: a cut that ends above says nothing there."""
    mask = np.maximum(np.minimum(hull_view, silhouette), (beyond_cut * hull_view).astype(np.uint8))
    if neck_view is not None:
        below = np.arange(hull_view.shape[0])[:, None] > lowest_row(silhouette >= 128)
        mask = np.maximum(mask, neck_view * below)
    return mask


def vote_region(silhouette: np.ndarray, ellipse: HeadEllipse, slack: float) -> np.ndarray:
    """[H, W] bool: where a view votes "head" for the hull, its cut grown by `slack` x the
    ellipse's minor semi-axis. Poses are never exact (on a full orbit SfM's cameras sit 5-13 mm
    from the truth), and an intersection of exact cuts shrinks by every view's error; the grown
    vote forgives that, and each view's own cut still trims its final mask."""
    inside = silhouette >= 128
    radius = int(round(slack * min(ellipse.axes)))
    if radius < 1:
        return inside
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
    return cv2.dilate(inside.astype(np.uint8), kernel) > 0


def search_volume(volume: HeadVolume) -> HeadVolume:
    """The head volume grown as far as the silhouette cut searches (SILHOUETTE_RING): the cut
    may find head beyond the ellipse (where the sparse points stop short of a smooth face), and
    the hull keeps what most views agree on there."""
    return replace(volume, semi_axes=SILHOUETTE_RING * volume.semi_axes)


def hull_mask(hull: VisualHull, camera: CameraFrame, bound: HeadVolume, cfg: MaskConfig) -> np.ndarray:
    """uint8 [H, W]: the hull's voxels seen from `camera`: their centres marked, each grown by
    half a voxel's edge projected at its own depth (voxels grouped by whole pixels of radius, one
    dilation per group), holes filled; with the cut's soft edge, inside the soft outline of
    `bound` (the ellipsoid the hull was carved in). Half an edge closes the gaps between the
    centres of a solid block; the nearest voxel's depth for all, or a voxel's half-diagonal,
    overshot the head's outline (on the rendered orbit: precision 0.83 or 0.88, not 0.94)."""
    shape = (camera.height, camera.width)
    outline = project_ellipsoid(bound, camera)
    mask = np.zeros(shape, np.uint8)
    if outline is None:
        return mask
    pixel = pixels_in_frame(hull.centers, camera)
    seen = pixel >= 0
    if not seen.any():
        return mask
    _, depth = project_points(hull.centers[seen], camera)
    radius = np.ceil(0.5 * hull.voxel_size * max(camera.fx, camera.fy) / depth).astype(int)
    for r in np.unique(radius):
        marks = np.zeros(shape, np.uint8)
        marks.reshape(-1)[pixel[seen][radius == r]] = 255
        mask |= cv2.dilate(marks, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2))
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    mask = cv2.drawContours(mask, contours, -1, 255, thickness=-1)
    ellipse = HeadEllipse("projected", *outline)
    sigma = cfg.refine_margin * min(ellipse.axes) / 2  # as the cut's edge
    if sigma > 0.5:
        mask = cv2.GaussianBlur(mask, (0, 0), sigma)
    return np.minimum(mask, soft_ellipse_mask(shape, ellipse, cfg.blur_fraction))


def soft_ellipse_mask(shape: tuple[int, int], ellipse: HeadEllipse, blur_fraction: float) -> np.ndarray:
    """uint8 [H, W], 255 inside the ellipse, a Gaussian fall-off (sigma = blur_fraction x the
    smaller semi-axis) across its edge, so training weighs the uncertain border less."""
    height, width = shape[:2]
    mask = np.zeros((height, width), np.uint8)
    center = tuple(int(round(v)) for v in ellipse.center)
    axes = tuple(max(1, int(round(v))) for v in ellipse.axes)
    cv2.ellipse(mask, center, axes, ellipse.angle, 0, 360, 255, thickness=-1, lineType=cv2.LINE_AA)
    sigma = blur_fraction * min(ellipse.axes)
    if sigma > 0.5:
        mask = cv2.GaussianBlur(mask, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    return mask


# GrabCut works on the ellipse's neighbourhood scaled to about this many pixels high: colour
# models need no more, and the cost stays the same whatever the frame size.
SILHOUETTE_WORK_PX = 200
GRABCUT_ITERATIONS = 3
# Seeds, in units of the ellipse's (horizontal, vertical) axes: inside CORE is surely head;
# between 1 and RING the background may still be head (ellipses are approximate); beyond RING is
# surely background. A frontal core of (0.6, 0.5) still lies inside Haar's face box, so shadowed
# cheeks against a dark background stay head (on a rendered full orbit, one frontal cut lost 10 %
# of the head with a 0.35 core); a profile's or a projected ellipse's centre is less sure.
SILHOUETTE_CORE = {"frontal": (0.6, 0.5), "profile": (0.35, 0.35), "projected": (0.35, 0.35)}
SILHOUETTE_RING = 1.25
# A cut keeping less than this fraction of its ellipse has followed a colour edge inside the
# head (skin against dark hair, say) rather than around it: keep the ellipse instead.
MIN_SILHOUETTE_FRACTION = 0.4


def head_silhouette(image: np.ndarray, ellipse: HeadEllipse, margin: float) -> np.ndarray | None:
    """uint8 [H, W] mask of the head's silhouette inside the ellipse (255 = head, soft edge of a
    few pixels), from a BGR frame; None when the cut looks wrong."""
    height, width = image.shape[:2]
    (cx, cy), (a, b), angle = ellipse.center, ellipse.axes, ellipse.angle
    # The neighbourhood: the bounding box of the ellipse grown by (1.6, 1.4), turned by `angle`.
    c, s = abs(np.cos(np.radians(angle))), abs(np.sin(np.radians(angle)))
    half_x, half_y = np.hypot(1.6 * a * c, 1.4 * b * s), np.hypot(1.6 * a * s, 1.4 * b * c)
    x0, y0 = max(0, int(cx - half_x)), max(0, int(cy - half_y))
    x1, y1 = min(width, int(cx + half_x) + 1), min(height, int(cy + half_y) + 1)
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    scale = min(1.0, SILHOUETTE_WORK_PX / (y1 - y0))
    roi = cv2.resize(image[y0:y1, x0:x1], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    center = (int(round((cx - x0) * scale)), int(round((cy - y0) * scale)))
    if not (0 <= center[0] < roi.shape[1] and 0 <= center[1] < roi.shape[0]):
        return None

    def axes(fx: float, fy: float) -> tuple[int, int]:
        return max(1, int(round(fx * a * scale))), max(1, int(round(fy * b * scale)))

    seeds = np.full(roi.shape[:2], cv2.GC_BGD, np.uint8)
    ring, core = (SILHOUETTE_RING,) * 2, SILHOUETTE_CORE[ellipse.source]
    for factors, label in ((ring, cv2.GC_PR_BGD), ((1.0, 1.0), cv2.GC_PR_FGD), (core, cv2.GC_FGD)):
        cv2.ellipse(seeds, center, axes(*factors), angle, 0, 360, int(label), thickness=-1)
    # GrabCut seeds its colour models by k-means from OpenCV's per-thread random generator: seeded
    # here, a frame's cut is the same whichever thread makes it and whatever it drew before.
    cv2.setRNGSeed(0)
    cv2.grabCut(roi, seeds, None, np.zeros((1, 65)), np.zeros((1, 65)), GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
    head = ((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)).astype(np.uint8)
    # The part connected to the face, holes filled (eyes, shadows).
    _, labels = cv2.connectedComponents(head)
    head = (labels == labels[center[1], center[0]]).astype(np.uint8)
    contours, _ = cv2.findContours(head, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    head = cv2.drawContours(np.zeros_like(head), contours, -1, 255, thickness=-1)
    inside = np.zeros_like(head)
    cv2.ellipse(inside, center, axes(1.0, 1.0), angle, 0, 360, 255, thickness=-1)
    if (head & inside).sum() < MIN_SILHOUETTE_FRACTION * inside.sum():
        return None

    mask = np.zeros((height, width), np.uint8)
    mask[y0:y1, x0:x1] = cv2.resize(head, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    grow = margin * min(a, b)
    if grow >= 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * int(grow) + 1,) * 2)
        mask = cv2.dilate(mask, kernel)
        mask = cv2.GaussianBlur(mask, (0, 0), grow / 2)
    return mask


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise StageError(f"could not encode {path.name} as PNG")
    atomic_write_bytes(path, png.tobytes())
