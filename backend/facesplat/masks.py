"""Stage 2: a soft head mask per frame, placed from Haar face detections.

Per frame: the largest face found by OpenCV's frontal cascade or its profile cascade (run on the
frame and on its mirror image, since it only knows one side), turned into a head ellipse. Frames
without a trustworthy face take the ellipse interpolated from their neighbours in time. The soft
ellipse is then cut down to the head's silhouette inside it by colour (GrabCut seeded with the
ellipse: its core is head, its outside background); a frame where that fails keeps the ellipse.

Alternatively (`masks_from_head_volume`), each registered view's ellipse is the outline of the
head's 3D volume (head3d.py), projected; the same cut follows.

Writes `masks/<NNNNNN>.png` (uint8, 255 = head; same names as frames/) and `masks.json`:
    [{"frame_index", "mask": "masks/000012.png",
      "source": "frontal" | "profile" | "interpolated" | "projected",
      "center": [x, y], "axes": [a, b], "angle": degrees, "shape": "silhouette" | "ellipse" | "empty"}]
`center` is in pixels, `axes` are the ellipse's semi-axes in pixels, horizontal and vertical
before the rotation by `angle` (0 for face ellipses); `shape` says whether the mask was cut to
the silhouette or is the plain soft ellipse ("empty": the head volume is not in front of that
camera; center, axes and angle are null).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .config import MaskConfig
from .core.cameras import CameraFrame
from .core.events import EventWriter
from .errors import StageError
from .head3d import HeadVolume, project_ellipsoid
from .workspace import Workspace, atomic_write_bytes, atomic_write_json

# The smallest face searched for is scaled to this many pixels before detection: the cascades'
# windows are 20-24 px, so nothing is lost, and the search costs a fraction of full size.
DETECT_FACE_PX = 28
SCALE_FACTOR = 1.1
MIN_NEIGHBORS = 4  # 3 lets textures through (marble veins); higher loses turned faces
# Of a frame's detections, those with fewer votes than this fraction of the strongest one's are
# dropped before taking the largest: a big false hit on background texture gathers few votes.
MIN_VOTES_FRACTION = 0.25

# Head ellipse around a face box of width w (Haar boxes are square): centre offset in units of w
# (dx towards the back of the head for a profile, dy down) and the shape of the semi-axes in units
# of `expansion` x w / 2. Fitted on the rendered orbit capture (lps_orbit160) so that expansion 1.6
# covers the true head silhouette above the chin in nearly every frame with a small margin.
HEAD_GEOMETRY = {
    "frontal": {"dx": 0.0, "dy": -0.08, "a": 0.7, "b": 1.0},
    "profile": {"dx": -0.2, "dy": 0.0, "a": 0.95, "b": 1.2},  # profile boxes jitter more in size
}

# Two detections in a row agree (belong to one head track) when their centres are within this
# many vertical semi-axes of each other and their sizes within this ratio.
TRACK_DISTANCE = 0.75
TRACK_SIZE_RATIO = 1.5
SMOOTH_NEIGHBOURS = 2  # the track is a running median over this many detections on each side


@dataclass
class Face:
    source: str  # "frontal" | "profile"
    box: tuple[float, float, float, float]  # x, y, w, h in frame pixels
    facing: int  # +1: the face looks towards +x (image right), -1: towards -x, 0: at the camera
    votes: int  # raw detections merged into this box: Haar's confidence


@dataclass
class HeadEllipse:
    source: str  # "frontal" | "profile" | "interpolated" | "projected"
    center: tuple[float, float]  # x, y pixels
    axes: tuple[float, float]  # horizontal, vertical semi-axes in pixels (before the rotation)
    angle: float = 0.0  # degrees, from the image's +x towards +y (cv2.ellipse's convention)


def compute_masks(frames: list[dict], ws: Workspace, cfg: MaskConfig,
                  events: EventWriter | None = None) -> list[dict]:
    """One soft head mask per frame of `frames` (the frames stage's records)."""
    detector = FaceDetector(cfg.min_face_fraction)
    detect_share = 0.6 if cfg.refine else 0.9  # of the stage's progress; the cut takes the rest
    found, shapes = [], []
    for k, frame in enumerate(frames):
        gray = _read_gray(ws.root / frame["image"])
        shapes.append(gray.shape)
        face = choose_face(detector.detect(gray))
        found.append(None if face is None else head_ellipse(face, cfg.expansion))
        _emit(events, detect_share * (k + 1) / len(frames), f"looked for the face in frame {k + 1} of {len(frames)}")
    if not any(found):
        raise StageError(f"no face found in any of the {len(frames)} frames; try a video where the face is "
                         f"visible and well lit for part of the orbit and at least {cfg.min_face_fraction:.0%} "
                         "of the frame high")

    kept = reject_outliers(found)
    detected = sum(e is not None for e in kept)
    if detected < cfg.min_frames_with_face * len(frames):
        raise StageError(f"the face was found in only {detected} of {len(frames)} frames, too few to place head masks "
                         "in the others; try a capture that keeps the face in view for more of the orbit (a slower "
                         "arc in front of the face, better light)")
    track = fill_gaps([f["frame_index"] for f in frames], smooth(kept))
    records = write_masks(frames, shapes, track, ws, cfg, events, progress_from=detect_share)
    _emit(events, 1.0, f"face found in {detected} of {len(frames)} frames, the rest interpolated")
    return records


def masks_from_head_volume(cameras: list[CameraFrame], volume: HeadVolume, ws: Workspace, cfg: MaskConfig,
                           events: EventWriter | None = None) -> list[dict]:
    """One head mask per registered camera: the head volume's outline in its view
    (`source` "projected"), cut to the silhouette like a face's ellipse. A view the volume is not
    wholly in front of gets an empty mask (`shape` "empty")."""
    outlines = [project_ellipsoid(volume, camera) for camera in cameras]
    ellipses = [None if o is None else HeadEllipse("projected", *o) for o in outlines]
    frames = [{"frame_index": c.frame_index, "image": c.image} for c in cameras]
    return write_masks(frames, [(c.height, c.width) for c in cameras], ellipses, ws, cfg, events, progress_from=0.0)


def write_masks(frames: list[dict], shapes: list[tuple[int, int]], ellipses: list[HeadEllipse | None],
                ws: Workspace, cfg: MaskConfig, events: EventWriter | None = None,
                progress_from: float = 0.0) -> list[dict]:
    """Per frame (a record with `frame_index` and `image`): the soft ellipse, cut to the head's
    silhouette when `cfg.refine`, written as masks/<name>.png; then masks.json. Returns its records.
    A None ellipse gives an empty mask."""

    def make_mask(frame: dict, shape: tuple[int, int], ellipse: HeadEllipse | None) -> tuple[np.ndarray, str]:
        if ellipse is None:
            return np.zeros(shape[:2], np.uint8), "empty"
        mask = soft_ellipse_mask(shape, ellipse, cfg.blur_fraction)
        if cfg.refine:
            silhouette = head_silhouette(cv2.imread(str(ws.root / frame["image"])), ellipse, cfg.refine_margin)
            if silhouette is not None:
                return np.minimum(mask, silhouette), "silhouette"
        return mask, "ellipse"

    records = []
    # GrabCut releases the GIL: one frame per core.
    with ThreadPoolExecutor(max_workers=max(1, min(4, cv2.getNumberOfCPUs()))) as pool:
        made = pool.map(make_mask, frames, shapes, ellipses)
        for k, (frame, ellipse, (mask, mask_shape)) in enumerate(zip(frames, ellipses, made)):
            name = ws.frame_name(frame["frame_index"])
            _write_png(ws.masks_dir / name, mask)
            record = {"frame_index": frame["frame_index"], "mask": f"{ws.masks_dir.name}/{name}"}
            if ellipse is not None:
                record.update(source=ellipse.source, center=[round(v, 2) for v in ellipse.center],
                              axes=[round(v, 2) for v in ellipse.axes], angle=round(ellipse.angle, 2))
            else:
                record.update(source="projected", center=None, axes=None, angle=None)
            records.append({**record, "shape": mask_shape})
            if cfg.refine:
                _emit(events, progress_from + (1 - progress_from) * (k + 1) / len(frames),
                      f"cut mask {k + 1} of {len(frames)} to the head")
    _remove_stale_masks(ws, {Path(r["mask"]).name for r in records})
    atomic_write_json(ws.masks_json, records)
    return records


class FaceDetector:
    """OpenCV's frontal and profile Haar cascades, loaded once."""

    def __init__(self, min_face_fraction: float):
        self.min_face_fraction = min_face_fraction
        self.frontal = _load_cascade("haarcascade_frontalface_default.xml")
        self.profile = _load_cascade("haarcascade_profileface.xml")

    def detect(self, gray: np.ndarray) -> list[Face]:
        """Every face in a grayscale frame, in frame pixels."""
        height = gray.shape[0]
        min_face = max(1.0, self.min_face_fraction * height)
        scale = min(1.0, DETECT_FACE_PX / min_face)
        small = cv2.equalizeHist(cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                                 if scale < 1.0 else gray)
        sizes = {"minSize": (round(min_face * scale),) * 2, "maxSize": (small.shape[0],) * 2}
        width = small.shape[1]

        def run(cascade, image):
            boxes, votes = cascade.detectMultiScale2(image, SCALE_FACTOR, MIN_NEIGHBORS, **sizes)
            return zip(boxes, votes)

        faces = [Face("frontal", box, 0, n) for box, n in run(self.frontal, small)]
        # The profile cascade finds faces looking towards -x; the mirror image shows the others.
        faces += [Face("profile", box, -1, n) for box, n in run(self.profile, small)]
        faces += [Face("profile", (width - x - w, y, w, h), +1, n)
                  for (x, y, w, h), n in run(self.profile, cv2.flip(small, 1))]
        return [Face(f.source, tuple(float(v) / scale for v in f.box), f.facing, int(f.votes)) for f in faces]


def choose_face(faces: list[Face]) -> Face | None:
    """The largest well-supported face: the filmed head is close, other faces are not."""
    if not faces:
        return None
    min_votes = MIN_VOTES_FRACTION * max(f.votes for f in faces)
    return max((f for f in faces if f.votes >= min_votes), key=lambda f: f.box[2] * f.box[3])


def head_ellipse(face: Face, expansion: float) -> HeadEllipse:
    """The head around a face box: shifted up (the skull is above the eyes) and, for a profile,
    towards the back of the head; grown by `expansion` to take in hair, ears and neck."""
    g = HEAD_GEOMETRY[face.source]
    x, y, w, h = face.box
    center = (x + w / 2 + g["dx"] * face.facing * w, y + h / 2 + g["dy"] * h)
    return HeadEllipse(face.source, center, (expansion * g["a"] * w / 2, expansion * g["b"] * h / 2))


def reject_outliers(found: list[HeadEllipse | None]) -> list[HeadEllipse | None]:
    """Keep the head's track, drop the rest (a face on a poster, a false hit on the background,
    a half-size box). The head is what most frames see: start from the longest run of
    detections that agree one to the next, then extend it both ways, one detection at a time,
    with each detection that agrees with the last one kept."""
    detected = [k for k, e in enumerate(found) if e is not None]
    if not detected:
        return list(found)
    runs = [[detected[0]]]
    for k in detected[1:]:
        if _agrees(found[k], found[runs[-1][-1]]):
            runs[-1].append(k)
        else:
            runs.append([k])
    main = max(runs, key=len)
    kept = [None] * len(found)
    for k in main:
        kept[k] = found[k]
    later = [k for k in detected if k > main[-1]]
    earlier = [k for k in reversed(detected) if k < main[0]]
    for start, order in ((main[-1], later), (main[0], earlier)):
        last = found[start]
        for k in order:
            if _agrees(found[k], last):
                kept[k] = last = found[k]
    return kept


def smooth(found: list[HeadEllipse | None]) -> list[HeadEllipse | None]:
    """Running median over neighbouring detections: Haar boxes jitter by 10-20 % in size from
    frame to frame, the head does not."""
    detected = [k for k, e in enumerate(found) if e is not None]
    smoothed = list(found)
    for j, k in enumerate(detected):
        window = [found[n] for n in detected[max(0, j - SMOOTH_NEIGHBOURS):j + SMOOTH_NEIGHBOURS + 1]]
        smoothed[k] = _median(window, found[k].source)
    return smoothed


def fill_gaps(frame_indices: list[int], found: list[HeadEllipse | None]) -> list[HeadEllipse]:
    """Ellipses for every frame: linear in the frame index between detections, held at the ends."""
    known = [k for k, e in enumerate(found) if e is not None]
    assert known, "fill_gaps needs at least one detection"
    t = np.asarray(frame_indices, float)
    params = np.array([[*found[k].center, *found[k].axes] for k in known])  # [K, 4] cx cy a b
    filled = np.stack([np.interp(t, t[known], params[:, c]) for c in range(4)], axis=1)  # [N, 4]
    return [e if e is not None else HeadEllipse("interpolated", (float(p[0]), float(p[1])), (float(p[2]), float(p[3])))
            for e, p in zip(found, filled)]


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
# of the head with a 0.35 core); a profile's or an interpolated ellipse's centre is less sure.
SILHOUETTE_CORE = {"frontal": (0.6, 0.5), "profile": (0.35, 0.35), "interpolated": (0.35, 0.35),
                   "projected": (0.35, 0.35)}
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


def _median(ellipses: list[HeadEllipse], source: str) -> HeadEllipse:
    p = np.median([[*e.center, *e.axes] for e in ellipses], axis=0)  # [4] cx cy a b
    return HeadEllipse(source, (float(p[0]), float(p[1])), (float(p[2]), float(p[3])))


def _agrees(e: HeadEllipse, reference: HeadEllipse) -> bool:
    """Same place and size as `reference`, within what a head moves between nearby frames."""
    b = reference.axes[1]
    close = np.hypot(e.center[0] - reference.center[0], e.center[1] - reference.center[1]) <= TRACK_DISTANCE * b
    return close and 1 / TRACK_SIZE_RATIO <= e.axes[1] / b <= TRACK_SIZE_RATIO


def _load_cascade(name: str) -> cv2.CascadeClassifier:
    path = Path(cv2.data.haarcascades) / name
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        # opencv-python 5.x dropped the cascades (see pyproject.toml).
        raise StageError(f"OpenCV face model {name} is missing from {path.parent}; "
                         "try `pip install \"opencv-python-headless<5\"`")
    return cascade


def _read_gray(path: Path) -> np.ndarray:
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise StageError(f"cannot read frame {path}; try deleting the workspace and running again")
    return gray


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, png = cv2.imencode(".png", image)
    assert ok, "PNG encoding failed"
    atomic_write_bytes(path, png.tobytes())


def _remove_stale_masks(ws: Workspace, keep: set[str]) -> None:
    """Masks of frames no longer sampled would mislead anything that lists the folder."""
    for path in ws.masks_dir.glob("*.png"):
        if path.name not in keep:
            path.unlink()


def _emit(events: EventWriter | None, progress: float, message: str) -> None:
    if events is not None:
        events.emit("masks", progress, message)
