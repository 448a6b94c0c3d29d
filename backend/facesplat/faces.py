"""Stage 2: faces in the frames, where a detector finds them (Haar frontal + profile).

Per frame: the largest well-supported face found by OpenCV's frontal cascade or its profile
cascade (run on the frame and on its mirror image, since it only knows one side), and the head
ellipse around it. Detections that do not follow the head's track (a poster, a false hit on the
background) are dropped and the track is smoothed. Finding no face is no failure: structure from
motion and the 3D head estimate (head3d.py) place the head without one (statues, backs of heads);
faces, where found, give the head frame its front and the head's 3D centre its most trusted cue.

Returns the records the pipeline keeps as `faces.json`:
    [{"frame_index", "face": {"source": "frontal" | "profile", "box": [x, y, w, h], "facing": -1 | 0 | 1,
      "votes": int} | null, "head": {"source", "center": [x, y], "axes": [a, b]} | null}]
`head` is null where no face was found or the face was rejected as not the head's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .config import FacesConfig
from .errors import StageError
from .stage import StageContext

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
    source: str  # "frontal" | "profile" (around a face) | "projected" (outline of the 3D head)
    center: tuple[float, float]  # x, y pixels
    axes: tuple[float, float]  # horizontal, vertical semi-axes in pixels (before the rotation)
    angle: float = 0.0  # degrees, from the image's +x towards +y (cv2.ellipse's convention)



def detect_faces(frames: list[dict], frames_root: Path, cfg: FacesConfig, ctx: StageContext) -> list[dict]:
    """The face and head ellipse of each frame (frames' records, images under `frames_root`)."""
    detector = FaceDetector(cfg.min_face_fraction)
    faces = []
    for k, frame in enumerate(frames):
        faces.append(choose_face(detector.detect(_read_gray(frames_root / frame["image"]))))
        ctx.emit("faces", (k + 1) / len(frames), f"looked for the face in frame {k + 1} of {len(frames)}")
    heads = smooth(reject_outliers([None if f is None else head_ellipse(f, cfg.expansion) for f in faces]))
    records = [{"frame_index": frame["frame_index"],
                "face": None if face is None else {"source": face.source, "box": [round(v, 2) for v in face.box],
                                                   "facing": face.facing, "votes": face.votes},
                "head": None if head is None else ellipse_record(head)}
               for frame, face, head in zip(frames, faces, heads)]
    found = sum(r["head"] is not None for r in records)
    ctx.emit("faces", 1.0, f"a face found in {found} of {len(frames)} frames")
    return records


def ellipse_record(e: HeadEllipse) -> dict:
    return {"source": e.source, "center": [round(v, 2) for v in e.center], "axes": [round(v, 2) for v in e.axes],
            "angle": round(e.angle, 2)}


def ellipse_from_record(record: dict | None) -> HeadEllipse | None:
    if not record:
        return None
    return HeadEllipse(record["source"], tuple(record["center"]), tuple(record["axes"]), record.get("angle", 0.0))


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
