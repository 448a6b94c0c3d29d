"""Stage 1: sharp, upright, evenly spaced frames from a video or a folder of photos.

Writes `<out_dir>/<NNNNNN>.png` (NNNNNN = index of the frame in the source) and returns the
records the pipeline keeps as `frames.json`:
    [{"frame_index": int, "image": "frames/000012.png", "width": int, "height": int, "sharpness": float,
      "sfm_image": "frames_sfm/000012.png", "sfm_width": int, "sfm_height": int}]
Sharpness is the variance of the Laplacian of the stored (resized) frame. Structure from motion
gets larger frames than training where the source has them (`sfm_frame_height`): the `sfm_*`
keys name that copy, written into `sfm_dir`; without them SfM uses `image` itself.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .config import FramesConfig
from .core.files import atomic_write_bytes
from .errors import InputError, StageError
from .stage import StageContext
from .workspace import frame_name

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")

_ROTATE_CODES = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def extract_video_frames(video: Path, out_dir: Path, cfg: FramesConfig, ctx: StageContext,
                         sfm_dir: Path | None = None) -> list[dict]:
    """Sample `cfg.num_frames` frames evenly over `video`, the sharpest of each window's centre
    (and, with `sfm_dir`, each also at `sfm_frame_height` there when that is larger).

    The video is decoded once, front to back (seeking in MPEG-4 lands on the wrong frame), and
    only candidate frames are converted and scored.
    """
    video = Path(video)
    _check_num_frames(cfg.num_frames)
    _check_video_file(video)
    total = _reported_frame_count(video)
    records, decoded = _sample_video(video, total, out_dir, sfm_dir, cfg, ctx)
    if decoded != total:
        # The container's frame count was wrong: plan again on the true count.
        _check_frame_count(video, decoded, cfg.num_frames)
        records, decoded = _sample_video(video, decoded, out_dir, sfm_dir, cfg, ctx)
    if len(records) < cfg.num_frames:
        raise InputError(f"could not decode {cfg.num_frames - len(records)} of the {cfg.num_frames} sampled frames "
                         f"of {video}; the file may be damaged; try exporting the video again")
    return records


def load_image_folder(folder: Path, out_dir: Path, cfg: FramesConfig, ctx: StageContext,
                      sfm_dir: Path | None = None) -> list[dict]:
    """Take at most `cfg.num_frames` photos, evenly spaced in name order; `frame_index` is the
    photo's position in that order. EXIF orientation is applied (cv2.IMREAD_COLOR does it).
    With `sfm_dir`, each photo is also kept at `sfm_frame_height` there when that is larger."""
    folder = Path(folder)
    _check_num_frames(cfg.num_frames)
    paths = list_images(folder)
    picks = [window[0] for window in sampling_windows(len(paths), min(cfg.num_frames, len(paths)), 0.0)]
    records = []
    for k, index in enumerate(picks):
        image = cv2.imread(str(paths[index]), cv2.IMREAD_COLOR)
        if image is None:
            raise InputError(f"cannot read image {paths[index]}; "
                             "remove it from the folder or save it again as JPEG or PNG")
        records.append(_save_frame(out_dir, index, resize_to_height(image, cfg.height), source=image,
                                   sfm_dir=sfm_dir, sfm_height=sfm_frame_height(cfg)))
        ctx.emit("frames", (k + 1) / len(picks), f"loaded photo {k + 1} of {len(picks)}")
    return records


def sfm_frame_height(cfg: FramesConfig) -> int:
    """The height structure from motion works at: `cfg.sfm_height`, or the training height if
    larger (never above the source: frames are not upscaled). SIFT on small frames finds few,
    imprecise features: on a rendered full orbit at 270 px the cameras drifted 11 mm on average
    (31 mm at the loop's seam) and no visual hull could agree with them; at 360 px, 3 mm."""
    return max(cfg.height, cfg.sfm_height)


def sampling_windows(total: int, n: int, window_fraction: float) -> list[list[int]]:
    """Candidate frame indices for `n` samples over `total` frames.

    The frames are split into `n` equal windows (frame i spans [i, i + 1)); a window's candidates
    are the frames whose centre lies in its central `window_fraction`, or else the frame nearest
    its centre, so the picks stay evenly spaced.
    """
    assert 1 <= n <= total, (n, total)
    windows = []
    for k in range(n):
        start, stop = k * total / n, (k + 1) * total / n
        centre, half = (start + stop) / 2, window_fraction * (stop - start) / 2
        candidates = [i for i in range(int(start), int(np.ceil(stop)))
                      if start <= i + 0.5 < stop and abs(i + 0.5 - centre) <= half]
        windows.append(candidates or [int(np.ceil(centre - 1))])
    return windows


def resize_to_height(image: np.ndarray, height: int) -> np.ndarray:
    """Scale to `height` (never up: upscaling adds no detail), keep the aspect ratio; both sides
    even (video tools and some SfM code reject odd sizes), the height rounded down to stay within
    the target and the source."""
    h, w = image.shape[:2]
    out_h = max(2, min(height, h) // 2 * 2)
    out_w = max(2, 2 * round(w * out_h / h / 2))
    if (out_w, out_h) == (w, h):
        return image
    interpolation = cv2.INTER_AREA if out_h < h else cv2.INTER_LINEAR
    return cv2.resize(image, (out_w, out_h), interpolation=interpolation)


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian: high for crisp edges, low for motion blur or defocus."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def rotate_clockwise(image: np.ndarray, degrees: int) -> np.ndarray:
    """Turn a stored frame upright, given the clockwise display rotation of its stream."""
    degrees %= 360
    if degrees not in (0, 90, 180, 270):
        raise InputError(f"video rotation of {degrees} degrees is not supported; try re-exporting the video upright")
    return image if degrees == 0 else cv2.rotate(image, _ROTATE_CODES[degrees])


# --- video ---------------------------------------------------------------------------------

def _check_video_file(video: Path) -> None:
    if not video.exists():
        raise InputError(f"video not found: {video}; check the path")
    if not video.is_file():
        raise InputError(f"{video} is not a file; give a video file (or --images for a folder of photos)")
    if video.stat().st_size == 0:
        raise InputError(f"video {video} is empty (0 bytes); try copying it from the phone again")
    if cv2.haveImageReader(str(video)):
        raise InputError(f"{video} is a still image, not a video; try --images with a folder of photos")


def _open_video(video: Path) -> tuple[cv2.VideoCapture, int]:
    """Open with FFmpeg; return the capture and the clockwise rotation still to apply by hand.

    Phones store landscape sensor pixels plus a rotation tag. OpenCV's FFmpeg backend applies
    the tag when asked to (CAP_PROP_ORIENTATION_AUTO); where it cannot, rotate by hand.
    """
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise InputError(f"cannot read {video} as a video (not a video, or an empty or damaged file); "
                         "try an MP4 or MOV file from the phone's camera")
    if cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1):
        return cap, 0
    return cap, int(round(cap.get(cv2.CAP_PROP_ORIENTATION_META)))


def _reported_frame_count(video: Path) -> int:
    """The container's frame count, or a count by decoding when it reports none."""
    cap, _ = _open_video(video)
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if total <= 0:
            total = 0
            while cap.grab():
                total += 1
    finally:
        cap.release()
    return total


def _check_frame_count(video: Path, total: int, wanted: int) -> None:
    if total == 0:
        raise InputError(f"video {video} has no frames; try recording a few seconds around the head")
    if total == 1:
        raise InputError(f"video {video} has a single frame; try recording a few seconds around the head")
    if total < wanted:
        raise InputError(f"video {video} has only {total} frames but {wanted} were asked; try --num-frames {total}")


def _check_num_frames(n: int) -> None:
    if n < 1:
        raise InputError(f"{n} frames asked; try --num-frames 40")


def _sample_video(video: Path, total: int, out_dir: Path, sfm_dir: Path | None, cfg: FramesConfig,
                  ctx: StageContext) -> tuple[list[dict], int]:
    """One decoding pass: save the sharpest candidate of each window as soon as the window is
    over (only one frame is held at a time). Returns the records and the frames decoded."""
    _check_frame_count(video, total, cfg.num_frames)
    windows = sampling_windows(total, cfg.num_frames, cfg.sharpness_window)
    window_of = {i: k for k, window in enumerate(windows) for i in window}
    cap, rotation = _open_video(video)
    records, best, index = [], None, 0  # best = (sharpness, frame_index, frame, upright source) of the open window
    try:
        while cap.grab():
            k = window_of.get(index)
            if k is not None:
                ok, frame = cap.retrieve()
                if ok:
                    upright = rotate_clockwise(frame, rotation)
                    frame = resize_to_height(upright, cfg.height)
                    score = sharpness(frame)
                    if best is None or score > best[0]:
                        best = (score, index, frame, upright if sfm_dir is not None else None)
                if index == windows[k][-1] and best is not None:
                    records.append(_save_frame(out_dir, best[1], best[2], best[0], source=best[3], sfm_dir=sfm_dir,
                                               sfm_height=sfm_frame_height(cfg)))
                    best = None
                    ctx.emit("frames", len(records) / len(windows), f"sampled frame {len(records)} of {len(windows)}")
            index += 1
    finally:
        cap.release()
    return records, index


# --- photos --------------------------------------------------------------------------------

def list_images(folder: Path) -> list[Path]:
    """The photos of a folder, in name order: what the frames stage reads (and fingerprints)."""
    if not folder.exists():
        raise InputError(f"image folder not found: {folder}; check the path")
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give a folder of photos (or --video for a video file)")
    # Names starting with "." are hidden files, e.g. macOS "._IMG_0001.jpg" metadata, not photos.
    paths = sorted((p for p in folder.iterdir()
                    if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()),
                   key=lambda p: p.name)
    if not paths:
        raise InputError(f"no photos ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) in {folder}; "
                         "try a folder with the photos of the head")
    return paths


# --- output --------------------------------------------------------------------------------

def _save_frame(out_dir: Path, frame_index: int, image: np.ndarray, score: float | None = None, *,
                source: np.ndarray | None = None, sfm_dir: Path | None = None, sfm_height: int = 0) -> dict:
    """Write the training frame `image`, and `source` resized to `sfm_height` into `sfm_dir`
    where that is larger than `image`; the frames.json record of both."""
    name = frame_name(frame_index)
    _write_png(out_dir / name, image, frame_index)
    h, w = image.shape[:2]
    record = {"frame_index": int(frame_index), "image": f"{out_dir.name}/{name}", "width": w, "height": h,
              "sharpness": round(sharpness(image) if score is None else score, 3)}
    if sfm_dir is not None and source is not None:
        larger = resize_to_height(source, sfm_height)
        if larger.shape[0] > h:
            _write_png(sfm_dir / name, larger, frame_index)
            record.update(sfm_image=f"{sfm_dir.name}/{name}", sfm_width=larger.shape[1], sfm_height=larger.shape[0])
    return record


def _write_png(path: Path, image: np.ndarray, frame_index: int) -> None:
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise StageError(f"could not encode frame {frame_index} as PNG; try a smaller --height")
    atomic_write_bytes(path, png.tobytes())
