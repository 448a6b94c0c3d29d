"""Hostile and clumsy use of the real CLI (issue 15's reproductions): each ends in one line of
cause and advice with the right exit code, and never overwrites or deletes what it must not."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import pytest

from facesplat.core.events import read_events
from facesplat.core.ply import read_splat_ply
from helpers import REPO, run_cli, start_cli, wait_for_event
from test_cli_errors import assert_clean_failure

S = ["--height", "180", "--num-iters", "150", "--num-frames", "12", "--device", "cpu"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, capture_dir):
    """A finished run of the sample capture at tiny settings: (video, output, workspace)."""
    root = tmp_path_factory.mktemp("finished")
    video = root / "v.mp4"
    shutil.copy(capture_dir / "video.mp4", video)
    result = run_cli("run", "--video", video, "--output", root / "head.ply", "--workspace", root / "ws", *S)
    assert result.returncode == 0, result.stderr[-3000:]
    return video, root / "head.ply", root / "ws"


def copy_workspace(ws, tmp_path):
    dest = tmp_path / "ws"
    shutil.copytree(ws, dest)
    return dest


# --- never overwrite the input or the workspace -------------------------------------------------

def test_output_that_is_the_input_video_is_refused(finished, tmp_path):
    video, _, ws = finished
    before = video.read_bytes()
    result = run_cli("run", "--video", video, "--output", video, "--workspace", copy_workspace(ws, tmp_path), *S)
    assert_clean_failure(result, 2, "input video")
    assert video.read_bytes() == before


def test_output_inside_the_workspace_is_refused(finished, tmp_path):
    ws = copy_workspace(finished[2], tmp_path)
    scene = (ws / "scene.ply").read_bytes()
    for inside in ("scene.ply", "frames/000000.png", "stages"):
        result = run_cli("isolate", "--workspace", ws, "--output", ws / inside)
        assert_clean_failure(result, 2, "inside the workspace")
    assert (ws / "scene.ply").read_bytes() == scene
    # The workspace's own head.ply is allowed (what the Blender add-on asks for).
    result = run_cli("isolate", "--workspace", ws, "--output", ws / "head.ply", "--threshold", "0.5")
    assert result.returncode == 0, result.stderr


def test_a_folder_of_other_files_is_not_taken_as_a_workspace(finished, tmp_path):
    video = finished[0]
    folder = tmp_path / "mine"
    files = {"frames/holiday.png": b"png", "masks/drawing.png": b"art", "sfm/thesis.txt": b"words",
             "head.ply": b"my own ply", "report.json": b'{"mine": 1}'}
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    result = run_cli("run", "--video", video, "--output", tmp_path / "h.ply", "--workspace", folder, *S)
    assert_clean_failure(result, 2, "not a facesplat workspace")
    assert {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} == set(files)
    assert all((folder / name).read_bytes() == data for name, data in files.items())


# --- exit codes and no writes on a folder that is not a workspace ------------------------------

@pytest.mark.parametrize("kind", ["missing", "file", "random folder"])
def test_isolate_needs_a_workspace(tmp_path, kind):
    target = {"missing": tmp_path / "nope", "file": tmp_path / "a.txt", "random folder": tmp_path / "folder"}[kind]
    if kind == "file":
        target.write_text("x")
    if kind == "random folder":
        target.mkdir()
        (target / "notes.txt").write_text("x")
    result = run_cli("isolate", "--workspace", target, "--output", tmp_path / "h.ply")
    assert_clean_failure(result, 2)
    if kind == "random folder":
        assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]  # no stages/ made in it


@pytest.mark.parametrize("flag,value,words", [
    ("--height", "64", ("--height", "180")), ("--num-frames", "2", ("--num-frames",)),
    ("--num-iters", "0", ("--num-iters",)), ("--threshold", "1.5", ("--threshold",)),
    ("--min-opacity", "-0.1", ("--min-opacity",)), ("--threshold", "nan", ("--threshold",)),
])
def test_numeric_flags_out_of_bounds(tmp_path, capture_dir, flag, value, words):
    result = run_cli("run", "--video", capture_dir / "video.mp4", "--output", tmp_path / "h.ply",
                     "--workspace", tmp_path / "ws", flag, value)
    assert_clean_failure(result, 2, *[w.lower() for w in words])
    assert not (tmp_path / "ws").exists()


# --- re-isolation and the stage markers --------------------------------------------------------

def test_reisolation_marks_its_stage_and_keeps_every_isolation(finished, tmp_path):
    video, _, original = finished
    ws = copy_workspace(original, tmp_path)
    default_head = read_splat_ply(ws / "head.ply")
    result = run_cli("isolate", "--workspace", ws, "--output", tmp_path / "h08.ply", "--threshold", "0.8")
    assert result.returncode == 0, result.stderr
    strict = read_splat_ply(tmp_path / "h08.ply")
    assert len(strict) < len(default_head)
    # The same run command again (default threshold) must not reuse the 0.8 head.
    result = run_cli("run", "--video", video, "--output", tmp_path / "again.ply", "--workspace", ws, *S)
    assert result.returncode == 0, result.stderr
    assert "isolate: already done" not in result.stderr and "train: already done" in result.stderr
    assert len(read_splat_ply(tmp_path / "again.ply")) == len(default_head)
    kept = sorted(p.name for p in (ws / "isolations").iterdir())
    assert kept == ["head_t0.30_o0.05.ply", "head_t0.80_o0.05.ply"]
    assert len(read_splat_ply(ws / "isolations" / "head_t0.80_o0.05.ply")) == len(strict)


# --- a damaged workspace ----------------------------------------------------------------------

def test_truncated_scene_ply_is_a_one_line_error(finished, tmp_path):
    ws = copy_workspace(finished[2], tmp_path)
    os.truncate(ws / "scene.ply", 100_000)
    result = run_cli("isolate", "--workspace", ws, "--output", tmp_path / "h.ply", "--threshold", "0.5")
    assert_clean_failure(result, 3, "scene.ply")
    check = run_cli("check", "--workspace", ws)
    assert check.returncode == 3 and "DAMAGED" in check.stdout and "Traceback" not in check.stderr


@pytest.mark.parametrize("broken", ["cameras_refined.json", "cameras.json"])
def test_broken_cameras_json_is_a_one_line_error(finished, tmp_path, broken):
    """Isolation reads the cameras the splat was trained with (cameras_refined.json); a workspace
    from before pose refinement has only SfM's cameras.json, and isolation reads that."""
    ws = copy_workspace(finished[2], tmp_path)
    (ws / "isolation.npz").unlink()  # so isolation has to read the cameras
    if broken == "cameras.json":
        (ws / "cameras_refined.json").unlink()
    (ws / broken).write_text('{"bad":')
    result = run_cli("isolate", "--workspace", ws, "--output", tmp_path / "h.ply", "--threshold", "0.5")
    assert_clean_failure(result, 3, broken)
    assert not (tmp_path / "h.ply").exists()


def test_check_tells_the_state_of_a_good_workspace(finished):
    result = run_cli("check", "--workspace", finished[2])
    assert result.returncode == 0, result.stderr
    assert "every stage is done" in result.stdout
    assert "12 frames" in result.stdout and "Gaussians in head.ply" in result.stdout


# --- one run per workspace --------------------------------------------------------------------

def test_a_second_run_on_a_workspace_in_use_is_refused(finished, tmp_path):
    video, _, original = finished
    ws = copy_workspace(original, tmp_path)
    events_before = (ws / "events.jsonl").read_bytes()
    with open(ws / ".lock", "w") as lock:  # what a running facesplat holds
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("4242\n")
        lock.flush()
        started = time.time()
        result = run_cli("run", "--video", video, "--output", tmp_path / "h.ply", "--workspace", ws, *S)
        refused_in = time.time() - started
        assert_clean_failure(result, 2, "in use", "4242")
        result = run_cli("isolate", "--workspace", ws, "--output", tmp_path / "h.ply")
        assert_clean_failure(result, 2, "in use")
    assert refused_in < 60  # refused at once, not after waiting for the other run
    assert (ws / "events.jsonl").read_bytes() == events_before  # the other run's progress is untouched
    # A lock file left by a killed run (nobody holds it) is taken over.
    (ws / ".lock").write_text("999999\n")
    result = run_cli("isolate", "--workspace", ws, "--output", tmp_path / "h.ply")
    assert result.returncode == 0, result.stderr


# --- an image folder that also holds the output ------------------------------------------------

def test_output_inside_the_image_folder_does_not_rerun_the_stages(finished, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for frame in sorted((finished[2] / "frames").glob("*.png")):
        shutil.copy(frame, photos / frame.name)
    args = ["run", "--images", photos, "--output", photos / "head.ply", "--workspace", tmp_path / "ws", *S]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    again = run_cli(*args, "--threshold", "0.2")
    assert again.returncode == 0, again.stderr[-2000:]
    for stage in ("frames", "faces", "sfm", "masks", "train"):
        assert f"{stage}: already done" in again.stderr


# --- killed, then resumed ----------------------------------------------------------------------

def test_sigkill_during_training_then_the_same_command_resumes(finished, capture_dir, tmp_path):
    ws = tmp_path / "ws"
    args = ["run", "--video", finished[0], "--output", tmp_path / "h.ply", "--workspace", ws,
            *S[:2], "--num-iters", "3000", *S[4:]]
    proc = start_cli(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_event(ws / "events.jsonl", lambda e: e["stage"] == "train" and "step" in e["message"])
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    check = run_cli("check", "--workspace", ws)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "a run resumes at: train" in check.stdout
    result = run_cli(*args[:-8], *S)  # the same capture, a short training this time
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(f"{s}: already done" in result.stderr for s in ("frames", "faces", "sfm", "masks"))
    assert run_cli("check", "--workspace", ws).returncode == 0


# --- a full disk --------------------------------------------------------------------------------

@contextlib.contextmanager
def small_disk(path, size):
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_workspace_on_a_small_disk_stops_before_sfm_with_an_error_event(finished, tmp_path):
    with small_disk(tmp_path / "disk", "3m") as disk:
        result = run_cli("run", "--video", finished[0], "--output", tmp_path / "h.ply", "--workspace", disk / "ws", *S)
        line = assert_clean_failure(result, 2, "free")
        events, _ = read_events(disk / "ws" / "events.jsonl")
        assert events[-1]["stage"] == "error" and events[-1]["message"] in line


def test_disk_full_while_writing_frames(finished, tmp_path):
    with small_disk(tmp_path / "disk", "200k") as disk:
        result = run_cli("run", "--video", finished[0], "--output", tmp_path / "h.ply", "--workspace", disk / "ws",
                         "--height", "540", "--device", "cpu")
        assert_clean_failure(result, 2, "disk is full")
        assert not list((disk / "ws").rglob(".*.tmp"))  # nothing half-written left behind


@pytest.mark.parametrize("command", ["run", "isolate"])
def test_output_on_a_full_disk_keeps_the_old_output(finished, tmp_path, command):
    video, _, original = finished
    ws = copy_workspace(original, tmp_path)
    with small_disk(tmp_path / "disk", "1m") as disk:
        out = disk / "head.ply"
        out.write_bytes(b"the old head")
        with contextlib.suppress(OSError):
            with open(disk / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 65536)
        args = ["run", "--video", video, *S] if command == "run" else ["isolate"]
        result = run_cli(*args, "--output", out, "--workspace", ws)
        assert_clean_failure(result, 2, "disk is full")
        assert out.read_bytes() == b"the old head"


# --- advice from the frame size ------------------------------------------------------------------

def test_portrait_video_at_the_lowest_height_registers(capture_dir, tmp_path):
    """A 9:16 phone video (landscape pixels with a rotation tag) at --height 180 is 101 px wide.
    It used to register 2 of 40 frames, with advice to orbit slower; SfM on full frames before any
    mask now registers enough of it (and, when it does not, `registration_advice` names a larger
    --height for frames too small)."""
    from test_frames import set_mp4_rotation
    from helpers import write_video

    cap = cv2.VideoCapture(str(capture_dir / "video.mp4"))
    frames = []
    while len(frames) < 160:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)  # landscape pixels; the tag shows them as portrait (the head lies sideways)
    cap.release()
    video = set_mp4_rotation(write_video(tmp_path / "portrait.mp4", frames), 90)
    result = run_cli("run", "--video", video, "--output", tmp_path / "h.ply", "--workspace", tmp_path / "ws",
                     "--height", "180", "--num-frames", "40", "--num-iters", "5", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "ws" / "report.json").read_text())
    assert report["frames_registered"] >= 20  # 28-40 over runs: COLMAP's threaded matching varies
    frame = cv2.imread(str(tmp_path / "ws" / "frames" / sorted(os.listdir(tmp_path / "ws" / "frames"))[0]))
    assert frame.shape[:2] == (180, 102)  # portrait, as shown


def test_registration_advice_names_a_larger_height_for_small_frames():
    from facesplat.sfm import registration_advice

    small = [{"width": 102, "height": 180}] * 3
    assert "--height 424" in registration_advice(small)
    # Sized from the frames SfM read, not the smaller training frames.
    larger_for_sfm = [{"width": 51, "height": 90, "sfm_width": 102, "sfm_height": 180}] * 3
    assert "--height 424" in registration_advice(larger_for_sfm)
    assert "slower orbit" in registration_advice([{"width": 960, "height": 540}])


# --- Cancel (SIGTERM) during structure from motion ------------------------------------------------

def test_sigterm_during_sfm_is_a_clean_resumable_interrupt(finished, tmp_path):
    """pycolmap's glog turns SIGTERM into an abort with a stack dump unless the handler is restored."""
    ws = tmp_path / "ws"
    args = ["run", "--video", finished[0], "--output", tmp_path / "h.ply", "--workspace", ws, *S]
    proc = start_cli(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_event(ws / "events.jsonl", lambda e: e["stage"] == "sfm", poll=0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Aborted" not in err and "Traceback" not in err
    events, _ = read_events(ws / "events.jsonl")
    assert events[-1]["stage"] == "error"
    assert run_cli("check", "--workspace", ws).returncode == 0


def test_an_interrupt_a_library_rewraps_is_still_a_cancel():
    """SIGTERM during `import pycolmap` (the sfm stage's first line) surfaces as pycolmap's own
    "Cannot import the C++ backend" error chained from the KeyboardInterrupt; it must end the run as
    an interrupt, not as that advice. An error with no interrupt behind it passes through unchanged."""
    from facesplat.errors import Cancelled
    from facesplat.pipeline import stage_errors

    def rewrapped():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as err:
            raise RuntimeError("Cannot import the C++ backend") from err

    with pytest.raises(Cancelled, match="interrupted"):
        with stage_errors("sfm"):
            rewrapped()
    with pytest.raises(RuntimeError, match="C\\+\\+ backend"):
        with stage_errors("sfm"):
            raise RuntimeError("Cannot import the C++ backend")


SWALLOWED_INTERRUPT = """
import ctypes, os, signal
from facesplat import interrupt
from facesplat.errors import Cancelled
from facesplat.pipeline import stage_errors
from facesplat.stage import StageContext
interrupt.install()
# SIGINT arrives inside a Python callback called from C, as it did in llvmlite's object-cache hook
# while numba compiled the kernels: Python has to drop the KeyboardInterrupt there.
callback = ctypes.CFUNCTYPE(None)(lambda: os.kill(os.getpid(), signal.SIGINT))
callback()
print("went on after the callback")
try:
    StageContext().emit("train", 0.1, "step 10")
except KeyboardInterrupt:
    print("the next progress event raised the interrupt")
try:
    with stage_errors("train"):  # what numba raised next when the interrupt broke its compilation
        raise RuntimeError("no compiled object yet for <Library '_forward_tile'>")
except Cancelled as err:
    print(err)
"""


def test_an_interrupt_swallowed_in_a_c_callback_stops_at_the_next_progress_event():
    """Seen in CI: Ctrl-C as training started landed in numba's compiler callback and the run
    trained on, or numba failed later with a traceback. The interrupt must still stop the run at its
    next progress event, and an error that follows it is the interrupt (exit 130, resumable)."""
    from facesplat.pipeline import INTERRUPTED

    result = subprocess.run([sys.executable, "-c", SWALLOWED_INTERRUPT], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(REPO / "backend")})
    assert result.stderr == ""  # no "Exception ignored ... KeyboardInterrupt" traceback either
    assert result.stdout.splitlines() == ["went on after the callback", "the next progress event raised the interrupt",
                                          INTERRUPTED]


def test_a_workspace_made_read_only_is_a_one_line_error(finished, tmp_path):
    if os.geteuid() == 0:
        # root ignores file modes: take the write bit away with a read-only bind mount instead
        ws = copy_workspace(finished[2], tmp_path)
        if subprocess.run(["mount", "--bind", "-o", "ro", str(ws), str(ws)], capture_output=True).returncode != 0:
            pytest.skip("a read-only bind mount needs root")
        try:
            result = run_cli("isolate", "--workspace", ws, "--output", tmp_path / "h.ply", "--threshold", "0.6")
        finally:
            subprocess.run(["umount", "-l", str(ws)], check=False)
    else:
        ws = copy_workspace(finished[2], tmp_path)
        for p in [ws, *ws.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        result = run_cli("isolate", "--workspace", ws, "--output", tmp_path / "h.ply", "--threshold", "0.6")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and result.stderr.count("facesplat: error:") == 1
