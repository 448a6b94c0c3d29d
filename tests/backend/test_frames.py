"""Frames stage on real files: videos written with OpenCV (mp4v), photos written with cv2.imwrite."""

from __future__ import annotations

import json
import struct

import cv2
import numpy as np
import pytest

from facesplat.config import FramesConfig
from facesplat.core.events import EventWriter, read_events
from facesplat.errors import InputError
from facesplat.frames import (extract_video_frames, load_image_folder, resize_to_height, rotate_clockwise,
                              sampling_windows)
from facesplat.stage import StageContext
from facesplat.workspace import Workspace
from helpers import write_video


def numbered_frame(i, size=(96, 128)):
    """Frame number i as 8 black/white vertical bars (bit 0 on the left): survives mp4v compression."""
    bits = (i >> np.arange(8)) & 1
    columns = np.repeat(bits * 255, -(-size[1] // 8))[:size[1]].astype(np.uint8)
    return np.repeat(np.broadcast_to(columns, size)[..., None], 3, axis=2).copy()


def frame_number(image):
    bars = image.mean(axis=(0, 2)).reshape(8, -1).mean(axis=1)
    return int(((bars > 128) << np.arange(8)).sum())


def textured_frame(seed, size=(96, 128)):
    """8-px random checkerboard: the Laplacian sees it, a blur removes it."""
    cells = np.random.default_rng(seed).integers(0, 2, (size[0] // 8, size[1] // 8), dtype=np.uint8) * 255
    gray = cv2.resize(cells, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def upright_pattern():
    """Red top, blue bottom, green middle-left: any rotation or mirror changes it."""
    image = np.zeros((96, 64, 3), np.uint8)
    image[:32] = (0, 0, 255)
    image[64:] = (255, 0, 0)
    image[32:64, :32] = (0, 255, 0)
    return image


def set_mp4_rotation(path, degrees):
    """Tag an MP4 like a phone does: the track header's display matrix rotates by `degrees` clockwise
    (the matrix FFmpeg writes for `-metadata:s:v rotate=<degrees>`)."""
    data = bytearray(path.read_bytes())

    def children(start, end):
        while start + 8 <= end:
            size, kind = struct.unpack(">I4s", data[start:start + 8])
            yield kind, start, size
            start += size

    cos, sin = {90: (0, 1), 180: (-1, 0), 270: (0, -1)}[degrees]
    matrix = struct.pack(">9i", cos << 16, sin << 16, 0, -sin << 16, cos << 16, 0, 0, 0, 1 << 30)
    for kind, moov, size in children(0, len(data)):
        if kind == b"moov":
            for kind, trak, trak_size in children(moov + 8, moov + size):
                if kind == b"trak":
                    for kind, tkhd, _ in children(trak + 8, trak + trak_size):
                        if kind == b"tkhd":
                            offset = tkhd + 8 + (52 if data[tkhd + 8] == 1 else 40)  # version 1 has 64-bit times
                            data[offset:offset + 36] = matrix
    path.write_bytes(bytes(data))
    return path


def jpeg_with_exif_orientation(image, orientation):
    """JPEG bytes with an EXIF APP1 segment holding only the Orientation tag (0x0112)."""
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) \
        + b"\x00\x00\x00\x00"
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(tiff)) + b"Exif\x00\x00" + tiff
    jpeg = jpeg.tobytes()
    return jpeg[:2] + app1 + jpeg[2:]


def assert_one_line_input_error(call, *must_contain):
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message, message
    assert "; " in message, message  # cause; advice
    for part in must_contain:
        assert part in message, message
    return message


@pytest.fixture
def ws(tmp_path):
    return Workspace(tmp_path / "ws").prepare()


def sample(extract, source, ws, cfg, events=None):
    """The frames stage as the pipeline runs it: into an emptied frames/ folder."""
    return extract(source, ws.fresh_dir(ws.frames_dir), cfg, StageContext(events))


# --- sampling ------------------------------------------------------------------------------

def test_sampling_windows_are_even_disjoint_and_central():
    windows = sampling_windows(100, 7, 0.5)
    assert len(windows) == 7
    flat = [i for w in windows for i in w]
    assert flat == sorted(set(flat))
    for k, w in enumerate(windows):
        start, stop = k * 100 / 7, (k + 1) * 100 / 7
        assert start + 0.25 * (stop - start) - 1 <= w[0] and w[-1] <= stop - 0.25 * (stop - start)
    assert sampling_windows(10, 10, 0.5) == [[i] for i in range(10)]
    assert [len(w) for w in sampling_windows(60, 6, 0.0)] == [1] * 6


def test_video_sampling_count_indices_and_files(ws):
    video = write_video(ws.root / "in.mp4", [numbered_frame(i) for i in range(60)])
    records = sample(extract_video_frames, video, ws, FramesConfig(num_frames=10, height=96, sharpness_window=0.0))

    expected = [w[0] for w in sampling_windows(60, 10, 0.0)]
    assert [r["frame_index"] for r in records] == expected
    assert np.all(np.diff(expected) == 6)
    for r in records:
        assert r["image"] == f"frames/{ws.frame_name(r['frame_index'])}"
        image = cv2.imread(str(ws.root / r["image"]))
        assert image.shape == (r["height"], r["width"], 3) == (96, 128, 3)
        assert frame_number(image) == r["frame_index"], "stored frame is not the source frame"
    assert sorted(p.name for p in ws.frames_dir.iterdir()) == [ws.frame_name(i) for i in expected]


def test_prefers_sharpest_frame_in_the_window_centre(ws):
    # 8 windows of 6 frames; the central half of window k holds frames 6k+1..6k+4 (centres within 1.5
    # of 6k+3), and with no search at all the pick is 6k+2.
    sharp = {6 * k + (1 if k % 2 else 4) for k in range(8)}
    edge_decoys = {6 * k for k in range(8)} | {6 * k + 5 for k in range(8)}  # sharp too, but off centre
    frames = [textured_frame(i) if i in sharp | edge_decoys else cv2.GaussianBlur(textured_frame(i), (0, 0), 3)
              for i in range(48)]
    video = write_video(ws.root / "in.mp4", frames)
    records = sample(extract_video_frames, video, ws, FramesConfig(num_frames=8, height=96, sharpness_window=0.5))

    assert [r["frame_index"] for r in records] == sorted(sharp)
    blurred = sample(extract_video_frames, video, ws, FramesConfig(num_frames=8, height=96, sharpness_window=0.0))
    assert sum(r["sharpness"] for r in records) > 2 * sum(r["sharpness"] for r in blurred)


def test_sizes_are_even_and_keep_the_aspect_ratio(ws):
    for shape, height in [((75, 101), 75), ((480, 640), 45), ((1080, 1920), 541), ((100, 30), 51)]:
        out = resize_to_height(np.zeros((*shape, 3), np.uint8), height)
        h, w = out.shape[:2]
        assert h % 2 == 0 and w % 2 == 0, (shape, height, out.shape)
        assert h <= height and h <= shape[0] and h >= min(height, shape[0]) - 1
        assert abs(w / h - shape[1] / shape[0]) < 2.5 / h
    assert resize_to_height(np.zeros((90, 160, 3), np.uint8), 1080).shape[:2] == (90, 160), "never upscale"

    video = write_video(ws.root / "in.mp4", [numbered_frame(i, (90, 160)) for i in range(8)])
    records = sample(extract_video_frames, video, ws, FramesConfig(num_frames=4, height=45))
    assert {(r["width"], r["height"]) for r in records} == {(78, 44)}


# --- rotation ------------------------------------------------------------------------------

@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_phone_rotation_tag_gives_upright_frames(ws, degrees):
    up = upright_pattern()
    stored = rotate_clockwise(up, -degrees)  # what the phone's sensor recorded
    video = set_mp4_rotation(write_video(ws.root / "in.mp4", [stored] * 6), degrees)

    records = sample(extract_video_frames, video, ws, FramesConfig(num_frames=2, height=96))
    image = cv2.imread(str(ws.root / records[0]["image"]))
    assert image.shape == up.shape
    assert np.abs(image.astype(int) - up).mean() < 12

    # The fallback for OpenCV builds that cannot rotate: the tag's angle, applied by hand.
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)
    ok, raw = cap.read()
    assert ok and cap.get(cv2.CAP_PROP_ORIENTATION_META) == degrees
    assert np.abs(rotate_clockwise(raw, degrees).astype(int) - up).mean() < 12
    cap.release()


# --- bad video input -----------------------------------------------------------------------

def test_bad_video_inputs_raise_one_line_input_errors(ws, tmp_path):
    cfg = FramesConfig(num_frames=4, height=48)
    run = lambda path, c=cfg: lambda: sample(extract_video_frames, path, ws, c)  # noqa: E731

    assert_one_line_input_error(run(tmp_path / "nope.mp4"), "not found")
    assert_one_line_input_error(run(tmp_path), "not a file")
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n")
    assert_one_line_input_error(run(text), "cannot read")
    png = tmp_path / "photo.png"
    cv2.imwrite(str(png), textured_frame(0))
    assert_one_line_input_error(run(png), "still image", "--images")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert_one_line_input_error(run(empty), "empty")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert_one_line_input_error(run(garbage), "cannot read")
    no_frames = write_video(tmp_path / "no_frames.mp4", [np.zeros((48, 64, 3), np.uint8)])
    no_frames.write_bytes(no_frames.read_bytes()[:300])  # header only: what a zero-length recording leaves
    assert_one_line_input_error(run(no_frames))

    one = write_video(tmp_path / "one.mp4", [numbered_frame(1)])
    assert_one_line_input_error(run(one), "single frame")
    short = write_video(tmp_path / "short.mp4", [numbered_frame(i) for i in range(3)])
    assert_one_line_input_error(run(short), "only 3 frames", "--num-frames 3")
    assert_one_line_input_error(run(short, FramesConfig(num_frames=0)), "--num-frames")
    assert not any(ws.frames_dir.iterdir())


# --- photo folders -------------------------------------------------------------------------

def test_image_folder_sorted_even_picks_and_orientation(ws, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    up = upright_pattern()
    for i, suffix in enumerate([".png", ".jpg", ".JPEG", ".bmp", None, ".webp", ".tif", ".png", ".jpeg"]):
        if suffix:
            cv2.imwrite(str(folder / f"img_{i:02d}{suffix}"), numbered_frame(i, (96, 64)))
    # EXIF orientation 6 = "rotate 90 clockwise to display": store the picture turned the other way.
    (folder / "img_04.jpg").write_bytes(jpeg_with_exif_orientation(rotate_clockwise(up, -90), 6))
    (folder / "notes.txt").write_text("not a photo")
    (folder / "._img_00.jpg").write_bytes(b"macOS metadata")

    records = sample(load_image_folder, folder, ws, FramesConfig(num_frames=3, height=96))
    assert [r["frame_index"] for r in records] == [1, 4, 7]
    upright = cv2.imread(str(ws.root / records[1]["image"]))
    assert upright.shape == up.shape and np.abs(upright.astype(int) - up).mean() < 12
    assert frame_number(cv2.imread(str(ws.root / records[2]["image"]))) == 7

    everything = sample(load_image_folder, folder, ws, FramesConfig(num_frames=40, height=48))
    assert [r["frame_index"] for r in everything] == list(range(9))
    assert all((r["width"], r["height"]) == (32, 48) for r in everything)
    assert len(list(ws.frames_dir.iterdir())) == 9


def test_bad_image_folders_raise_one_line_input_errors(ws, tmp_path):
    cfg = FramesConfig(num_frames=4)
    assert_one_line_input_error(lambda: sample(load_image_folder, tmp_path / "nope", ws, cfg), "not found")
    file = tmp_path / "a.txt"
    file.write_text("x")
    assert_one_line_input_error(lambda: sample(load_image_folder, file, ws, cfg), "not a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no photos here")
    assert_one_line_input_error(lambda: sample(load_image_folder, empty, ws, cfg), "no photos")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    assert_one_line_input_error(lambda: sample(load_image_folder, broken, ws, cfg), "cannot read image", "a.jpg")


# --- workspace hygiene and progress ----------------------------------------------------------

def test_rerun_removes_stale_frames_and_emits_progress(ws):
    video = write_video(ws.root / "in.mp4", [numbered_frame(i) for i in range(30)])
    sample(extract_video_frames, video, ws, FramesConfig(num_frames=10, height=48))
    events = EventWriter(ws.events)
    records = sample(extract_video_frames, video, ws, FramesConfig(num_frames=3, height=48), events)

    assert sorted(p.name for p in ws.frames_dir.iterdir()) == [ws.frame_name(r["frame_index"]) for r in records]
    emitted, _ = read_events(ws.events)
    assert {e["stage"] for e in emitted} == {"frames"}
    assert len(emitted) == 3 and emitted[-1]["progress"] == 1.0


# --- larger frames for structure from motion ------------------------------------------------

def test_sfm_gets_larger_copies_of_the_same_frames_where_the_source_has_them(ws):
    video = write_video(ws.root / "in.mp4", [numbered_frame(i, (192, 256)) for i in range(12)])
    cfg = FramesConfig(num_frames=4, height=96, sfm_height=144)
    records = extract_video_frames(video, ws.fresh_dir(ws.frames_dir), cfg, StageContext(),
                                   sfm_dir=ws.fresh_dir(ws.sfm_frames_dir))
    for r in records:
        assert (r["width"], r["height"]) == (128, 96)
        assert r["sfm_image"] == f"frames_sfm/{ws.frame_name(r['frame_index'])}"
        larger = cv2.imread(str(ws.root / r["sfm_image"]))
        assert larger.shape == (r["sfm_height"], r["sfm_width"], 3) == (144, 192, 3)
        assert frame_number(larger) == frame_number(cv2.imread(str(ws.root / r["image"]))) == r["frame_index"]

    # Never above the source: 192 px frames asked for at 540 px come at 192.
    records = extract_video_frames(video, ws.fresh_dir(ws.frames_dir), FramesConfig(num_frames=4, height=96),
                                   StageContext(), sfm_dir=ws.fresh_dir(ws.sfm_frames_dir))
    assert {(r["sfm_width"], r["sfm_height"]) for r in records} == {(256, 192)}
    # A training height at or above the SfM height (or the source) needs no second copy.
    for cfg in (FramesConfig(num_frames=4, height=144, sfm_height=144), FramesConfig(num_frames=4, height=400)):
        records = extract_video_frames(video, ws.fresh_dir(ws.frames_dir), cfg, StageContext(),
                                       sfm_dir=ws.fresh_dir(ws.sfm_frames_dir))
        assert not any("sfm_image" in r for r in records) and not any(ws.sfm_frames_dir.iterdir())


def test_photos_keep_a_larger_copy_for_sfm(ws, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"img_{i}.png"), numbered_frame(i, (192, 128)))
    records = load_image_folder(folder, ws.fresh_dir(ws.frames_dir), FramesConfig(num_frames=3, height=96),
                                StageContext(), sfm_dir=ws.fresh_dir(ws.sfm_frames_dir))
    for r in records:
        assert (r["width"], r["height"], r["sfm_width"], r["sfm_height"]) == (64, 96, 128, 192)
        assert frame_number(cv2.imread(str(ws.root / r["sfm_image"]))) == r["frame_index"]
