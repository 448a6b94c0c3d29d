"""Bad input: one line of cause and advice on stderr, a non-zero exit, no traceback, nothing
half-written. Real files, the real CLI (`python -m facesplat`)."""

from __future__ import annotations

import signal
import subprocess

import cv2
import numpy as np
import pytest
import torch

from facesplat.core.events import read_events
from helpers import REPO, run_cli, start_cli, wait_for_event, write_video

DATA = REPO / "tests" / "data"  # small real images shipped with the tests (see its README)
STONE_HEAD = REPO / "samples" / "buddha_head_photos"


def assert_clean_failure(result, code, *words):
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    err_lines = [l for l in result.stderr.splitlines() if l.startswith("facesplat: ")]
    assert len(err_lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for w in words:
        assert w in err_lines[0].lower(), err_lines[0]
    return err_lines[0]


def run_fails(tmp_path, *args, code=2, words=()):
    out = tmp_path / "out" / "head.ply"
    # Few steps and a time limit: should a case slip through, it fails fast instead of training.
    result = run_cli("run", *args, "--output", out, "--workspace", tmp_path / "ws", "--device", "cpu",
                     "--num-iters", "5", timeout=300)
    line = assert_clean_failure(result, code, *words)
    assert not out.exists()  # nothing half-written
    return line


def face_video(path, n, size=(320, 240), noise_seed=None):
    """A video of the astronaut photo over per-frame random noise (no parallax at all)."""
    face = cv2.resize(cv2.imread(str(DATA / "face_photos" / "astronaut.png")), (160, 160))
    rng = np.random.default_rng(noise_seed)
    frames = []
    for _ in range(n):
        f = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        f[40:200, 80:240] = face
        frames.append(f)
    return write_video(path, frames)


def test_missing_video(tmp_path):
    run_fails(tmp_path, "--video", tmp_path / "nope.mp4", words=("does not exist",))


def test_text_file_is_not_a_video(tmp_path):
    p = tmp_path / "notes.mp4"
    p.write_text("hello\n" * 100)
    run_fails(tmp_path, "--video", p, words=("video",))


def test_zero_length_video(tmp_path):
    p = tmp_path / "empty.mp4"
    p.write_bytes(b"")
    run_fails(tmp_path, "--video", p)


def test_one_frame_video(tmp_path):
    p = face_video(tmp_path / "one.mp4", 1)
    run_fails(tmp_path, "--video", p, words=("frame",))


def test_fewer_frames_than_asked(tmp_path):
    p = face_video(tmp_path / "short.mp4", 10)
    line = run_fails(tmp_path, "--video", p, "--num-frames", "40", "--height", "240")
    assert "10" in line and "--num-frames" in line


def test_no_face_and_no_parallax_fails_at_structure_from_motion(tmp_path):
    # A slowly moving colour gradient with a few shapes: texture for the eye, no face anywhere, and
    # no 3D scene behind it. No face is no failure any more; nothing to triangulate is.
    yy, xx = np.mgrid[0:270, 0:480].astype(np.float32)
    frames = []
    for i in range(8):
        f = np.stack([(xx + 20 * i) % 256, (yy * 0.8) % 256, np.full_like(xx, 90)], axis=2).astype(np.uint8)
        cv2.rectangle(f, (40 + 10 * i, 60), (140 + 10 * i, 160), (20, 200, 240), -1)
        cv2.circle(f, (360 - 8 * i, 150), 50, (250, 250, 250), -1)
        frames.append(f)
    p = write_video(tmp_path / "shapes.mp4", frames)
    run_fails(tmp_path, "--video", p, "--num-frames", "6", "--height", "270", code=3,
              words=("structure from motion", "registered"))
    events, _ = read_events(tmp_path / "ws" / "events.jsonl")
    assert any(e["stage"] == "faces" and "found in 0 of 6" in e["message"] for e in events)


def test_stone_head_photos_without_a_face_give_the_head(tmp_path):
    """Real photos of a stone Buddha head, mostly from above and behind, in no temporal order:
    Haar finds at most a stray "face". The head is placed from the cameras alone."""
    import json

    from facesplat.core.ply import read_splat_ply

    out = tmp_path / "head.ply"
    result = run_cli("run", "--images", STONE_HEAD, "--output", out, "--workspace",
                     tmp_path / "ws", "--height", "540", "--num-iters", "60", "--device", "cpu", timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "ws" / "report.json").read_text())
    assert report["frames_sampled"] == 11
    assert report["frames_registered"] >= 10  # 11 in every run seen; COLMAP's threads vary a little
    assert report["head_center_from"] == "cameras"
    volume = json.loads((tmp_path / "ws" / "head_volume.json").read_text())
    head = read_splat_ply(out)
    assert len(head) > 50
    # What is kept lies in the head's volume (no floor, no board with markers).
    local = (head.means - np.array(volume["center"])) @ np.array(volume["rotation"])
    assert (((local / np.array(volume["semi_axes"])) ** 2).sum(axis=1) < 1.2 ** 2).mean() > 0.95


def test_sfm_registers_too_few_frames(tmp_path):
    # Same face, independent noise: nothing to triangulate, so COLMAP cannot register the frames.
    p = face_video(tmp_path / "flat.mp4", 12, size=(320, 240), noise_seed=1)
    line = run_fails(tmp_path, "--video", p, "--num-frames", "8", "--height", "240", code=3,
                     words=("structure from motion", "registered"))
    assert "try" in line


def test_unwritable_output_fails_before_any_work(tmp_path, capture_dir):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the output's folder should be
    result = run_cli("run", "--video", capture_dir / "video.mp4", "--output", blocker / "head.ply",
                     "--workspace", tmp_path / "ws", "--device", "cpu")
    assert_clean_failure(result, 2, "output")
    assert not (tmp_path / "ws" / "frames").exists()  # checked before the first stage began


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(tmp_path, capture_dir):
    result = run_cli("run", "--video", capture_dir / "video.mp4", "--output", tmp_path / "h.ply",
                     "--workspace", tmp_path / "ws", "--device", "cuda")
    assert_clean_failure(result, 4, "cuda", "--device cpu")


def test_out_of_range_flags(tmp_path, capture_dir):
    result = run_cli("run", "--video", capture_dir / "video.mp4", "--output", tmp_path / "h.ply",
                     "--num-frames", "1")
    assert_clean_failure(result, 2, "--num-frames")


def test_isolate_on_an_empty_workspace(tmp_path):
    (tmp_path / "ws").mkdir()
    result = run_cli("isolate", "--workspace", tmp_path / "ws", "--output", tmp_path / "h.ply")
    assert_clean_failure(result, 2, "facesplat run")


def test_gpu_out_of_memory_becomes_a_clean_error(tmp_path, capture_dir, monkeypatch, capsys):
    """A real OOM needs a GPU; here the train stage raises torch's own OOM exception type."""
    from facesplat import cli, train

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train, "train", oom)
    ws = tmp_path / "ws"
    code = cli.main(["run", "--video", str(capture_dir / "video.mp4"), "--output", str(tmp_path / "h.ply"),
                     "--workspace", str(ws), "--num-frames", "8", "--height", "270", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 4
    assert err.count("facesplat: error:") == 1 and "out of memory" in err and "Traceback" not in err
    events, _ = read_events(ws / "events.jsonl")
    assert events[-1]["stage"] == "error" and "--device cpu" in events[-1]["message"]
    assert not (tmp_path / "h.ply").exists()


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("started", ["normally", "with-sigint-ignored"])
def test_ctrl_c_leaves_a_resumable_workspace(tmp_path, capture_dir, started):
    """Also when started with SIGINT ignored, as a script's background job is (and as the runs of
    a `facesplat batch` started so would be): SIGINT is how the batch cancels them."""
    ws = tmp_path / "ws"
    args = ["run", "--video", capture_dir / "video.mp4", "--output", tmp_path / "h.ply", "--workspace", ws,
            "--num-frames", "12", "--height", "270", "--num-iters", "2000", "--device", "cpu"]
    proc = start_cli(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                     preexec_fn=_ignore_sigint if started == "with-sigint-ignored" else None)
    wait_for_event(ws / "events.jsonl", lambda e: e["stage"] == "train")  # interrupt once training has started
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "resume" in err
    events, _ = read_events(ws / "events.jsonl")
    assert events[-1]["stage"] == "error"
    done = {p.name for p in (ws / "stages").iterdir()}
    assert done == {"frames.done.json", "faces.done.json", "sfm.done.json", "masks.done.json"}
    assert not (tmp_path / "h.ply").exists() and not (ws / "scene.ply").exists()
