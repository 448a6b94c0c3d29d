"""Face detectors whose models ship inside a pip wheel, against the pipeline's Haar cascades (not a test).

    python benchmarks/bench_face_detectors.py [--capture ../shared/data/captures/lps_orbit160]
        [--photos ../shared/data/buddha_head_multiview] [--workdir /tmp/bench_face_detectors]
        [--num-frames 40] [--height 540]

Run it with an interpreter that has mediapipe 0.10.21 (see benchmarks/requirements-detectors.txt
and docs/face_detectors.md); without mediapipe only Haar is measured. Nothing is downloaded: every
model is read from the installed wheels.

Detectors, each run on the frame as the pipeline stores it (`--height` pixels high):
  haar        the pipeline's FaceDetector + choose_face (backend/facesplat/masks.py)
  mp_short    mediapipe face_detection, model 0 (short range, BlazeFace)
  mp_full     mediapipe face_detection, model 1 (full range, sparse)
  mp_mesh     mediapipe face_mesh (468 landmarks; the box around them)
and mediapipe selfie_segmentation (models 0 and 1) as a person segmenter.

For the rendered capture (`--num-frames` frames of video.mp4 sampled evenly): per detector the
frames with a face found, and of those the frames whose box centre lies on the true head (the
scan's silhouette cut at the neck), by view (frontal / profile / back from the true camera);
for the segmenter the IoU of its mask (> 0.5) with the true silhouette of the bust, mean and worst.
For the photos (no true masks): hits per detector and a contact sheet with every box drawn
(<workdir>/photos_detections.png; the capture's boxes in capture_detections.png). Per-frame time
is the median over all frames.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))
sys.path.insert(0, str(REPO / "benchmarks"))

from facesplat.config import MaskConfig  # noqa: E402
from facesplat.masks import FaceDetector, choose_face  # noqa: E402

from capture_truth import true_cameras, true_head_mask  # noqa: E402

try:
    import mediapipe as mp
except ImportError:  # the benchmark still measures Haar
    mp = None

Box = tuple[float, float, float, float]  # x, y, w, h in frame pixels
COLOURS = {"haar": (0, 0, 255), "mp_short": (0, 200, 0), "mp_full": (255, 160, 0), "mp_mesh": (0, 220, 255),
           "selfie_0": (255, 0, 255), "selfie_1": (255, 255, 0)}  # BGR, for the contact sheets
COLOUR_NAMES = {"haar": "red", "mp_short": "green", "mp_full": "blue", "mp_mesh": "yellow", "selfie_0": "magenta",
                "selfie_1": "cyan"}
VIEWS = ("frontal", "profile", "back")


def make_detectors() -> dict:
    """name -> function(bgr frame) -> the chosen face box or None."""
    haar = FaceDetector(MaskConfig().min_face_fraction)
    detectors = {"haar": lambda bgr: _box_of(choose_face(haar.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))))}
    if mp is None:
        return detectors
    short = mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5)
    full = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)
    mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False)

    def detection(model):
        def run(bgr):
            found = model.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).detections
            if not found:
                return None
            best = max(found, key=lambda d: d.score[0])  # one subject: the surest face
            r, (h, w) = best.location_data.relative_bounding_box, bgr.shape[:2]
            return r.xmin * w, r.ymin * h, r.width * w, r.height * h
        return run

    def landmarks(bgr):
        found = mesh.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).multi_face_landmarks
        if not found:
            return None
        (h, w) = bgr.shape[:2]
        xy = np.array([(p.x * w, p.y * h) for p in found[0].landmark])
        (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
        return x0, y0, x1 - x0, y1 - y0

    detectors.update(mp_short=detection(short), mp_full=detection(full), mp_mesh=landmarks)
    return detectors


def make_segmenters() -> dict:
    """name -> function(bgr frame) -> bool person mask [H, W]."""
    if mp is None:
        return {}
    models = {f"selfie_{m}": mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=m) for m in (0, 1)}
    return {name: (lambda bgr, model=model: model.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).segmentation_mask > 0.5)
            for name, model in models.items()}


def _box_of(face) -> Box | None:
    return None if face is None else tuple(face.box)


def timed(fn, frame):
    start = time.perf_counter()
    out = fn(frame)
    return out, (time.perf_counter() - start) * 1000


def view_class(capture: Path, frame_index: int) -> str:
    """frontal / profile / back from the true camera's azimuth around the head (face towards -Y);
    the same split as bench_head_masks.py."""
    center = np.linalg.inv(np.array(true_cameras(capture)[frame_index]["w2c"]))[:3, 3]
    azimuth = abs(np.degrees(np.arctan2(center[0], -center[1])))
    return "frontal" if azimuth < 30 else "profile" if azimuth < 110 else "back"


def read_video_frames(video: Path, count: int, height: int) -> list[tuple[int, np.ndarray]]:
    """`count` frames sampled evenly over the video, with their indices, scaled to `height`."""
    capture = cv2.VideoCapture(str(video))
    decoded = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        decoded.append(frame)
    if not decoded:
        raise SystemExit(f"cannot decode {video}; check the file is a video OpenCV can read")
    picks = sorted(set(np.linspace(0, len(decoded) - 1, min(count, len(decoded))).round().astype(int)))
    return [(int(i), scale_to_height(decoded[i], height)) for i in picks]


def scale_to_height(image: np.ndarray, height: int) -> np.ndarray:
    if image.shape[0] == height:
        return image
    s = height / image.shape[0]
    return cv2.resize(image, (round(image.shape[1] * s), height), interpolation=cv2.INTER_AREA)


def on_head(box: Box, head: np.ndarray, frame_shape: tuple[int, int]) -> bool:
    """Whether the box centre (frame pixels) falls on the true head mask (capture pixels)."""
    sy, sx = head.shape[0] / frame_shape[0], head.shape[1] / frame_shape[1]
    cx, cy = (box[0] + box[2] / 2) * sx, (box[1] + box[3] / 2) * sy
    inside = 0 <= int(cy) < head.shape[0] and 0 <= int(cx) < head.shape[1]
    return bool(inside and head[int(cy), int(cx)])


def bench_capture(capture: Path, detectors: dict, segmenters: dict, num_frames: int, height: int,
                  sheet_path: Path) -> None:
    frames = read_video_frames(capture / "video.mp4", num_frames, height)
    views = {i: view_class(capture, i) for i, _ in frames}
    counts = {v: sum(1 for x in views.values() if x == v) for v in VIEWS}
    print(f"\n## capture {capture.name}: {len(frames)} frames sampled of video.mp4 at {height} px "
          f"({', '.join(f'{counts[v]} {v}' for v in VIEWS)})\n")
    print("| detector | face found | on the true head | frontal on head | profile on head | back on head "
          "| median ms/frame |")
    print("|---|---|---|---|---|---|---|")
    truth = {i: true_head_mask(capture, i) for i, _ in frames}
    drawn = {i: frame.copy() for i, frame in frames}
    for name, detect in detectors.items():
        found, hit, per_view, times = 0, 0, dict.fromkeys(VIEWS, 0), []
        for i, frame in frames:
            box, ms = timed(detect, frame)
            times.append(ms)
            if box is None:
                continue
            draw_box(drawn[i], box, name)
            found += 1
            if on_head(box, truth[i][0], frame.shape[:2]):
                hit += 1
                per_view[views[i]] += 1
        n = len(frames)
        print(f"| {name} | {found}/{n} | {hit}/{n} | "
              + " | ".join(f"{per_view[v]}/{counts[v]}" for v in VIEWS)
              + f" | {statistics.median(times):.0f} |")
    for i, canvas in drawn.items():
        cv2.putText(canvas, f"{i:04d}", (10, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 3)
    write_sheet(list(drawn.values()), sheet_path, columns=8, tile_height=180)
    print(f"\nboxes drawn on every frame: {sheet_path}")
    if not segmenters:
        return
    print("\n| segmenter (mask > 0.5) | IoU with the true bust: mean | worst (frame) | "
          "mean frontal | mean profile | mean back | median ms/frame |")
    print("|---|---|---|---|---|---|---|")
    for name, segment in segmenters.items():
        ious, times = {}, []
        for i, frame in frames:
            mask, ms = timed(segment, frame)
            times.append(ms)
            bust = truth[i][1]
            mask = cv2.resize(mask.astype(np.uint8), bust.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
            ious[i] = (mask & bust).sum() / max(1, (mask | bust).sum())
        worst = min(ious, key=ious.get)
        by_view = [np.mean([ious[i] for i in ious if views[i] == v]) if counts[v] else float("nan") for v in VIEWS]
        print(f"| {name} | {np.mean(list(ious.values())):.3f} | {ious[worst]:.3f} ({worst:04d}, {views[worst]}) | "
              + " | ".join(f"{x:.3f}" for x in by_view) + f" | {statistics.median(times):.0f} |")


def bench_photos(photos: Path, detectors: dict, segmenters: dict, height: int, sheet_path: Path) -> None:
    paths = sorted(p for p in photos.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        raise SystemExit(f"no .png or .jpg photos in {photos}; pass --photos a folder of photos")
    images = []
    for p in paths:
        image = cv2.imread(str(p))
        if image is None:
            raise SystemExit(f"cannot read photo {p}; check it is a PNG or JPEG")
        images.append(scale_to_height(image, height))
    print(f"\n## photos {photos.name}: {len(paths)} photos at {height} px (no true masks: see {sheet_path})\n")
    print("| detector | face found | photos with a face | median ms/photo |")
    print("|---|---|---|---|")
    drawn = [image.copy() for image in images]
    for name, detect in detectors.items():
        hits, times = [], []
        for p, image, canvas in zip(paths, images, drawn):
            box, ms = timed(detect, image)
            times.append(ms)
            if box is not None:
                hits.append(p.name.split(".")[0])
                draw_box(canvas, box, name)
        print(f"| {name} | {len(hits)}/{len(paths)} | {', '.join(hits) or '-'} | {statistics.median(times):.0f} |")
    for name, segment in segmenters.items():
        covered = []
        for image, canvas in zip(images, drawn):
            mask = segment(image)
            covered.append(mask.mean())
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(canvas, contours, -1, COLOURS[name], 2)
        print(f"\n{name} on the photos: mask covers {min(covered):.0%}-{max(covered):.0%} of the photo "
              f"(median {statistics.median(covered):.0%}); outline drawn in {COLOUR_NAMES[name]}")
    for p, canvas in zip(paths, drawn):
        cv2.putText(canvas, p.name.split(".")[0], (10, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 3)
    write_sheet(drawn, sheet_path)


def draw_box(canvas: np.ndarray, box: Box, name: str) -> None:
    x, y, w, h = (round(v) for v in box)
    cv2.rectangle(canvas, (x, y), (x + w, y + h), COLOURS[name], 3)
    cv2.putText(canvas, name, (x, max(20, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.7, COLOURS[name], 2)


def write_sheet(images: list[np.ndarray], path: Path, columns: int = 4, tile_height: int = 270) -> None:
    tiles = [scale_to_height(image, tile_height) for image in images]
    w = max(t.shape[1] for t in tiles)
    tiles = [cv2.copyMakeBorder(t, 0, 0, 0, w - t.shape[1], cv2.BORDER_CONSTANT) for t in tiles]
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
    rows = [np.hstack(tiles[r:r + columns]) for r in range(0, len(tiles), columns)]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.vstack(rows)):
        raise SystemExit(f"cannot write {path}; check the folder is writable")


def main() -> None:
    data = REPO.parent / "shared" / "data"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capture", type=Path, default=data / "captures" / "lps_orbit160")
    parser.add_argument("--photos", type=Path, default=data / "buddha_head_multiview")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_face_detectors"))
    parser.add_argument("--num-frames", type=int, default=40)
    parser.add_argument("--height", type=int, default=540)
    args = parser.parse_args()
    for folder, needs in ((args.capture, "video.mp4"), (args.photos, None)):
        if not folder.is_dir() or (needs and not (folder / needs).exists()):
            raise SystemExit(f"{folder} is not a {'capture folder with ' + needs if needs else 'folder'}; "
                             "pass --capture / --photos (see ../shared/data/README.md)")
    detectors, segmenters = make_detectors(), make_segmenters()
    if mp is None:
        print("mediapipe is not installed here: measuring Haar only (see docs/face_detectors.md)")
    else:
        print(f"mediapipe {mp.__version__}, OpenCV {cv2.__version__}, numpy {np.__version__}")
    bench_capture(args.capture, detectors, segmenters, args.num_frames, args.height,
                  args.workdir / "capture_detections.png")
    bench_photos(args.photos, detectors, segmenters, args.height, args.workdir / "photos_detections.png")


if __name__ == "__main__":
    main()
