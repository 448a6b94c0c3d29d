"""Head masks from the 3D head volume (head3d.py) against face-detector masks (not a test).

    python benchmarks/bench_head_masks.py [--capture ../shared/data/captures/lps_orbit160]
        [--photos ../shared/data/buddha_head_multiview] [--workdir /tmp/bench_head_masks]
        [--height 270] [--num-frames 40]

For the rendered capture: frames and structure from motion (full frames, no masks; cached in
the work folder), then per registered frame the recall of the true head (cut at the neck) and
the precision against the true bust, mean and worst, by view (frontal / profile / back, from
the true camera's angle to the face), for:
  haar       the face-detector masks of the current pipeline (compute_masks);
  cameras    the head volume from the cameras and sparse points only (no face);
  faces      the same with Haar's head ellipses triangulated first;
each as the plain ellipse and cut to the silhouette (GrabCut). For the photos (no true masks):
registration, how the volume was placed, and a picture of the projected outlines and the cut
masks on the photos (<workdir>/photos_projected.png).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))
sys.path.insert(0, str(REPO / "benchmarks"))

from facesplat.config import FramesConfig, MaskConfig, SfmConfig  # noqa: E402
from facesplat.core.cameras import read_cameras_json  # noqa: E402
from facesplat.errors import StageError  # noqa: E402
from facesplat.frames import extract_video_frames, load_image_folder  # noqa: E402
from facesplat.head3d import estimate_head_volume, project_ellipsoid  # noqa: E402
from facesplat.masks import (FaceDetector, choose_face, compute_masks, head_ellipse,  # noqa: E402
                             masks_from_head_volume, reject_outliers)
from facesplat.sfm import load_points, reconstruct  # noqa: E402
from facesplat.workspace import Workspace  # noqa: E402

from capture_truth import true_cameras, true_head_mask  # noqa: E402


def prepare(ws: Workspace, load_frames) -> tuple[list[dict], list, np.ndarray]:
    """Frames and SfM on the full frames, once per work folder: (frames, cameras, points)."""
    if not ws.cameras_json.exists():
        frames = load_frames()
        reconstruct(frames, [], ws, SfmConfig())
    import json
    frames = json.loads(ws.frames_json.read_text())
    return frames, read_cameras_json(ws.cameras_json), load_points(ws.points_npz)[0]


def face_ellipses(ws: Workspace, cameras, cfg: MaskConfig) -> list:
    """Haar's head ellipse per camera (None where none, or an outlier of the track)."""
    detector = FaceDetector(cfg.min_face_fraction)
    found = []
    for cam in cameras:
        face = choose_face(detector.detect(cv2.imread(str(ws.root / cam.image), cv2.IMREAD_GRAYSCALE)))
        found.append(None if face is None else head_ellipse(face, cfg.expansion))
    return reject_outliers(found)


def view_class(capture: Path, frame_index: int) -> str:
    """frontal / profile / back from the true camera's azimuth around the head (face towards -Y)."""
    center = np.linalg.inv(np.array(true_cameras(capture)[frame_index]["w2c"]))[:3, 3]
    azimuth = abs(np.degrees(np.arctan2(center[0], -center[1])))
    return "frontal" if azimuth < 30 else "profile" if azimuth < 110 else "back"


def scores(ws: Workspace, records: list[dict], capture: Path) -> dict[int, tuple[float, float]]:
    """frame_index -> (recall of the true head, precision against the true bust)."""
    out = {}
    for record in records:
        head, bust = true_head_mask(capture, record["frame_index"])
        mask = cv2.imread(str(ws.root / record["mask"]), cv2.IMREAD_GRAYSCALE)
        covered = cv2.resize(mask, head.shape[::-1], interpolation=cv2.INTER_LINEAR) >= 128
        out[record["frame_index"]] = ((covered & head).sum() / head.sum(), (covered & bust).sum() / max(1, covered.sum()))
    return out


def print_table(rows: list[tuple[str, dict]], classes: dict[int, str]) -> None:
    print(f"{'method':<22}{'views':<9}{'n':>3}  {'recall mean':>11} {'worst':>6}  {'precision mean':>14} {'worst':>6}")
    for name, per_frame in rows:
        for view in ("all", "frontal", "profile", "back"):
            keys = [k for k in per_frame if view == "all" or classes[k] == view]
            if not keys:
                continue
            r = np.array([per_frame[k][0] for k in keys])
            p = np.array([per_frame[k][1] for k in keys])
            print(f"{name:<22}{view:<9}{len(keys):>3}  {r.mean():>11.3f} {r.min():>6.3f}  {p.mean():>14.3f} {p.min():>6.3f}")


def bench_capture(capture: Path, work: Path, height: int, num_frames: int) -> None:
    ws = Workspace(work / capture.name)
    frames, cameras, points = prepare(ws, lambda: extract_video_frames(
        capture / "video.mp4", ws, FramesConfig(num_frames=num_frames, height=height)))
    print(f"\n{capture.name}: {len(cameras)} of {len(frames)} frames registered, {len(points)} sparse points")
    registered = {c.frame_index for c in cameras}
    classes = {c.frame_index: view_class(capture, c.frame_index) for c in cameras}
    rows = []
    for refine in (False, True):
        cfg = MaskConfig(refine=refine)
        cut = "cut" if refine else "ellipse"
        try:
            haar = [r for r in compute_masks(frames, ws, cfg) if r["frame_index"] in registered]
            rows.append((f"haar {cut}", scores(ws, haar, capture)))
            if not refine:
                print(f"haar: a face in {sum(r['source'] != 'interpolated' for r in haar)} of {len(haar)} frames")
        except StageError as e:
            print(f"haar {cut}: {e}")
        started = time.perf_counter()
        volume = estimate_head_volume(cameras, points)
        if not refine:
            print(f"cameras: centre {np.round(volume.center, 3)}, semi-axes {np.round(volume.semi_axes, 3)} "
                  f"({volume.center_source}, {volume.extent_source}), {time.perf_counter() - started:.2f} s")
        rows.append((f"cameras {cut}", scores(ws, masks_from_head_volume(cameras, volume, ws, cfg), capture)))
        volume = estimate_head_volume(cameras, points, face_ellipses(ws, cameras, cfg))
        if not refine:
            print(f"faces: centre {np.round(volume.center, 3)}, semi-axes {np.round(volume.semi_axes, 3)} "
                  f"({volume.center_source}, {volume.extent_source})")
        rows.append((f"faces {cut}", scores(ws, masks_from_head_volume(cameras, volume, ws, cfg), capture)))
    print_table(sorted(rows, key=lambda row: row[0].split()[1]), classes)


def bench_photos(photos: Path, work: Path) -> None:
    ws = Workspace(work / photos.name)
    frames, cameras, points = prepare(ws, lambda: load_image_folder(photos, ws, FramesConfig(height=540)))
    print(f"\n{photos.name}: {len(cameras)} of {len(frames)} photos registered, {len(points)} sparse points")
    cfg = MaskConfig()
    faces = face_ellipses(ws, cameras, cfg)
    print(f"haar: a face in {sum(f is not None for f in faces)} of {len(cameras)} photos")
    volume = estimate_head_volume(cameras, points, faces)
    print(f"volume: centre {np.round(volume.center, 3)}, semi-axes {np.round(volume.semi_axes, 3)} "
          f"({volume.center_source}, {volume.extent_source})")
    records = masks_from_head_volume(cameras, volume, ws, cfg)
    print(f"masks: {sum(r['shape'] == 'silhouette' for r in records)} cut to the silhouette, "
          f"{sum(r['shape'] == 'ellipse' for r in records)} plain ellipses, {sum(r['shape'] == 'empty' for r in records)} empty")
    tiles = []
    for cam, record in zip(cameras, records):
        image = cv2.imread(str(ws.root / cam.image))
        mask = cv2.imread(str(ws.root / record["mask"]), cv2.IMREAD_GRAYSCALE)
        shown = (image * (0.35 + 0.65 * (mask[..., None] / 255.0))).astype(np.uint8)
        outline = project_ellipsoid(volume, cam)
        if outline is not None:
            (cx, cy), (a, b), angle = outline
            cv2.ellipse(shown, (round(cx), round(cy)), (round(a), round(b)), angle, 0, 360, (255, 0, 255), 2)
        tiles.append(cv2.resize(shown, (480, round(480 * cam.height / cam.width))))
    while len(tiles) % 4:
        tiles.append(np.zeros_like(tiles[0]))
    picture = np.vstack([np.hstack(tiles[k:k + 4]) for k in range(0, len(tiles), 4)])
    cv2.imwrite(str(work / "photos_projected.png"), picture)
    print(f"picture: {work / 'photos_projected.png'} (magenta: the projected head volume; dimmed: outside the mask)")


def main() -> None:
    data = REPO.parent / "shared" / "data"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capture", type=Path, default=data / "captures" / "lps_orbit160")
    parser.add_argument("--photos", type=Path, default=data / "buddha_head_multiview")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_head_masks"))
    parser.add_argument("--height", type=int, default=270)
    parser.add_argument("--num-frames", type=int, default=40)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    bench_capture(args.capture, args.workdir, args.height, args.num_frames)
    bench_photos(args.photos, args.workdir)


if __name__ == "__main__":
    main()
