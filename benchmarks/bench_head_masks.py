"""Head masks of the masks stage against the truth of a rendered capture (not a test).

    python benchmarks/bench_head_masks.py [--capture ../shared/data/captures/lps_orbit160 ...]
        [--photos ../shared/data/buddha_head_multiview] [--workdir /tmp/bench_head_masks]
        [--height 540] [--num-frames 16] [--sweep]

Each capture (and the photos) goes through the pipeline's own stages frames -> faces -> sfm
(cached in the work folder); then the masks stage's code makes the masks three ways:
  ellipse   the head volume's projected ellipse (MaskConfig refine=False);
  cut       that ellipse cut to the silhouette by GrabCut, per view (hull=False);
  hull      the cuts voted into one visual hull, each view's mask its projection trimmed by the
            view's own cut (the default).
Per capture: the recall of the true head (cut at the neck) and the precision against the true
bust, per registered frame, mean and worst, for all views and by view kind (faces.json: frontal,
profile, other = no face found). `--sweep` adds the hull's vote threshold against how the
projected hull is combined with the view's own cut. For the photos (no truth): a contact sheet
of every photo, dimmed outside each mask (<workdir>/<name>_masks.png).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))
sys.path.insert(0, str(REPO / "benchmarks"))

from facesplat import pipeline  # noqa: E402
from facesplat.config import Config, MaskConfig  # noqa: E402
from facesplat.faces import HeadEllipse, ellipse_from_record  # noqa: E402
from facesplat.head3d import carve_visual_hull, estimate_head_volume, project_ellipsoid  # noqa: E402
from facesplat.masks import (head_silhouette, hull_mask, masks_from_head_volume, search_volume,  # noqa: E402
                             soft_ellipse_mask)
from facesplat.stage import StageContext  # noqa: E402
from facesplat.workspace import Workspace  # noqa: E402

from capture_truth import true_head_mask  # noqa: E402

VIEW_KINDS = ("all", "frontal", "profile", "other")
SWEEP_VOTES = (0.6, 0.8, 0.9, 1.0)


def prepare(ws_dir: Path, source: Path, is_images: bool, height: int, num_frames: int):
    """frames -> faces -> sfm through the pipeline (skipped when done): (workspace, cameras,
    sparse points, face head ellipse per camera or None, view kind per frame index)."""
    ws = Workspace(ws_dir).prepare()
    cfg = Config()
    cfg.frames.height, cfg.frames.num_frames = height, num_frames
    run = pipeline.Run(ws, cfg, StageContext(), source, is_images)
    pipeline.run_stages(run, [pipeline.STAGE_BY_NAME[s] for s in ("frames", "faces", "sfm")])
    cameras = run.cameras()
    points = pipeline.read_npz(ws.points_npz, "xyz")["xyz"]
    faces = {f["frame_index"]: f for f in run.faces()}
    heads = [ellipse_from_record(faces[c.frame_index].get("head")) for c in cameras]
    kinds = {i: (f["face"] or {}).get("source", "other") for i, f in faces.items()}
    return ws, cameras, points, heads, kinds


def make_masks(ws: Workspace, cameras, volume, cfg: MaskConfig, name: str) -> tuple[list[dict], float]:
    """The masks stage's masks with `cfg` into <ws>/<name>/: (records, seconds)."""
    started = time.perf_counter()
    records = masks_from_head_volume(cameras, volume, ws.root, ws.fresh_dir(ws.root / name), cfg, StageContext())
    return records, time.perf_counter() - started


def score(capture: Path, frame_index: int, mask: np.ndarray) -> tuple[float, float]:
    """(recall of the true head, precision against the true bust) of a uint8 mask."""
    head, bust = true_head_mask(capture, frame_index)
    covered = cv2.resize(mask, head.shape[::-1], interpolation=cv2.INTER_LINEAR) >= 128
    return (covered & head).sum() / head.sum(), (covered & bust).sum() / max(1, covered.sum())


def print_rows(rows: list[tuple[str, dict]], kinds: dict[int, str], shown=VIEW_KINDS) -> None:
    print(f"{'masks':<24}{'views':<9}{'n':>3}  {'recall mean':>11} {'worst':>6}  {'precision mean':>14} {'worst':>6}")
    for name, per_frame in rows:
        for kind in shown:
            keys = [k for k in per_frame if kind == "all" or kinds[k] == kind]
            if not keys:
                continue
            r, p = np.array([per_frame[k] for k in keys]).T
            print(f"{name:<24}{kind:<9}{len(keys):>3}  {r.mean():>11.3f} {r.min():>6.3f}  {p.mean():>14.3f} {p.min():>6.3f}")


def bench_capture(capture: Path, args) -> None:
    ws, cameras, points, heads, kinds = prepare(args.workdir / capture.name, capture / "video.mp4", False,
                                                args.height, args.num_frames)
    volume = estimate_head_volume(cameras, points, heads, MaskConfig().head)
    print(f"\n{capture.name}: {len(cameras)} frames registered, {len(points)} sparse points, a face in "
          f"{sum(h is not None for h in heads)}; head from {volume.center_source}, sized by {volume.extent_source}")
    rows, seconds = [], {}
    for name, cfg in (("ellipse", MaskConfig(refine=False)), ("cut", MaskConfig(hull=False)), ("hull", MaskConfig())):
        records, seconds[name] = make_masks(ws, cameras, volume, cfg, f"bench_{name}")
        rows.append((name, {r["frame_index"]: score(capture, r["frame_index"], cv2.imread(
            str(ws.root / r["mask"]), cv2.IMREAD_GRAYSCALE)) for r in records}))
    print_rows(rows, kinds)
    print("masks stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    if args.sweep:
        sweep(capture, ws, cameras, volume, kinds)


def sweep(capture: Path, ws: Workspace, cameras, volume, kinds) -> None:
    """The hull's vote threshold against how each view's mask combines the projected hull with
    its own cut (as far as the cut searches, not clipped to the ellipse): hull alone, hull and
    cut (both), hull or cut (either)."""
    cfg = MaskConfig()
    shapes = [(c.height, c.width) for c in cameras]
    ellipses = [HeadEllipse("projected", *project_ellipsoid(volume, c)) for c in cameras]
    cuts = [head_silhouette(cv2.imread(str(ws.root / c.image)), e, cfg.refine_margin) for c, e in zip(cameras, ellipses)]
    cut_masks = [soft_ellipse_mask(s, e, cfg.blur_fraction) if c is None else c for s, e, c in zip(shapes, ellipses, cuts)]
    grown = search_volume(volume)
    rows = []
    for vote in SWEEP_VOTES:
        started = time.perf_counter()
        hull = carve_visual_hull(grown, cameras, [None if c is None else c >= 128 for c in cuts], vote,
                                 cfg.hull_resolution)
        projected = [hull_mask(hull, c, grown, replace(cfg, hull_vote=vote)) for c in cameras]
        took = time.perf_counter() - started
        for mode, combine in (("alone", lambda h, c: h), ("and cut", np.minimum), ("or cut", np.maximum)):
            rows.append((f"hull {vote:.2f} {mode}", {c.frame_index: score(capture, c.frame_index, combine(h, m))
                                                    for c, h, m in zip(cameras, projected, cut_masks)}))
        print(f"vote {vote:.2f}: {len(hull.centers)} of {hull.candidates} voxels kept, {took:.2f} s")
    print_rows(rows, kinds, shown=("all",))


def bench_photos(photos: Path, args) -> None:
    ws, cameras, points, heads, _ = prepare(args.workdir / photos.name, photos, True, args.photo_height, Config().frames.num_frames)
    volume = estimate_head_volume(cameras, points, heads, MaskConfig().head)
    print(f"\n{photos.name}: {len(cameras)} photos registered, {len(points)} sparse points, a face in "
          f"{sum(h is not None for h in heads)}; head from {volume.center_source}, sized by {volume.extent_source}")
    rows = []
    for name, cfg in (("ellipse", MaskConfig(refine=False)), ("cut", MaskConfig(hull=False)), ("hull", MaskConfig())):
        records, seconds = make_masks(ws, cameras, volume, cfg, f"bench_{name}")
        print(f"{name}: {seconds:.1f} s, " + ", ".join(f"{sum(r['shape'] == s for r in records)} {s}"
                                                        for s in ("hull", "silhouette", "ellipse", "empty")))
        rows.append(records)
    sheet = args.workdir / f"{photos.name}_masks.png"
    cv2.imwrite(str(sheet), contact_sheet(ws, cameras, volume, rows[1:]))
    print(f"contact sheet: {sheet} (left: cut, right: hull; magenta: the projected head volume, "
          "blue: as far as the cut searches; dimmed: outside the mask)")


def contact_sheet(ws: Workspace, cameras, volume, variants: list[list[dict]], tile_width: int = 480) -> np.ndarray:
    """Per camera a row: the photo dimmed outside each variant's mask, the mask's outline in green."""
    rows = []
    for k, cam in enumerate(cameras):
        image = cv2.imread(str(ws.root / cam.image))
        tiles = []
        for records in variants:
            mask = cv2.imread(str(ws.root / records[k]["mask"]), cv2.IMREAD_GRAYSCALE)
            shown = (image * (0.3 + 0.7 * (mask[..., None] / 255.0))).astype(np.uint8)
            for outline_of, colour in ((volume, (255, 0, 255)), (search_volume(volume), (255, 128, 0))):
                outline = project_ellipsoid(outline_of, cam)
                if outline is not None:
                    (cx, cy), (a, b), angle = outline
                    cv2.ellipse(shown, (round(cx), round(cy)), (round(a), round(b)), angle, 0, 360, colour, 2)
            contours, _ = cv2.findContours((mask >= 128).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(shown, contours, -1, (0, 255, 0), 2)
            cv2.putText(shown, f"{cam.frame_index} {records[k]['shape']}", (10, 34), cv2.FONT_HERSHEY_SIMPLEX, 1.1,
                        (0, 255, 255), 2)
            tiles.append(cv2.resize(shown, (tile_width, round(tile_width * cam.height / cam.width))))
        rows.append(np.hstack(tiles))
    pairs = [np.hstack([rows[k], rows[k + 1] if k + 1 < len(rows) else np.zeros_like(rows[k])])
             for k in range(0, len(rows), 2)]
    return np.vstack(pairs)


def main() -> None:
    data = REPO.parent / "shared" / "data"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capture", type=Path, nargs="*", default=sorted((data / "captures").glob("*/")))
    parser.add_argument("--photos", type=Path, default=data / "buddha_head_multiview")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_head_masks"))
    parser.add_argument("--height", type=int, default=540, help="capture frame height (the pipeline's default)")
    parser.add_argument("--photo-height", type=int, default=540)
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--no-photos", action="store_true", help="skip the photos' contact sheet")
    parser.add_argument("--sweep", action="store_true", help="also sweep the hull's vote and how it meets the cut")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    for capture in args.capture:
        bench_capture(capture, args)
    if not args.no_photos:
        bench_photos(args.photos, args)


if __name__ == "__main__":
    main()
