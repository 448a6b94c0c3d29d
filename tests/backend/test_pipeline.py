"""The real pipeline end to end on a small capture: real frames, Haar masks, pycolmap, training,
isolation, through the CLI; then resume, a changed parameter, and re-isolation."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time

import cv2
import numpy as np
import pytest

from facesplat.config import TrainConfig
from facesplat.core.cameras import read_cameras_json, project_points, write_cameras_json
from facesplat.core.events import read_events
from facesplat.core.ply import read_splat_ply
from helpers import REPO, run_cli

ARGS = ["--num-frames", "16", "--height", "270", "--num-iters", "300", "--device", "cpu"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, capture_dir):
    out = tmp_path_factory.mktemp("e2e")
    ws = out / "ws"
    started = time.time()
    result = run_cli("run", "--video", capture_dir / "video.mp4", "--output", out / "head.ply", "--workspace", ws, *ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, ws, time.time() - started, result


def stage_events(ws):
    events, _ = read_events(ws / "events.jsonl")
    return events


def events_after(ws, offset: int) -> list[dict]:
    """The events a command appended after byte `offset` of events.jsonl."""
    events, _ = read_events(ws / "events.jsonl", offset)
    return events


def on_true_head(means, cameras, capture_dir):
    """[N] fraction of the registered views in which each centre lands on the capture's true mask."""
    hits = np.zeros(len(means))
    for cam in cameras:
        gt = cv2.imread(str(capture_dir / "masks" / f"{cam.frame_index:04d}.png"), cv2.IMREAD_GRAYSCALE)
        gt = cv2.resize(gt, (cam.width, cam.height), interpolation=cv2.INTER_NEAREST)
        gt = cv2.dilate(gt, np.ones((5, 5), np.uint8))  # 2 px of slack at the silhouette
        uv, z = project_points(means, cam)
        ok = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 1] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] < cam.height)
        u, v = uv[ok].astype(int).T
        hits[np.flatnonzero(ok)] += gt[v, u] > 127
    return hits / len(cameras)


def test_run_writes_a_head_and_a_complete_workspace(finished_run, capture_dir):
    out, ws, _, result = finished_run
    head = read_splat_ply(out / "head.ply")
    scene = read_splat_ply(ws / "scene.ply")
    assert (out / "head.ply").read_bytes() == (ws / "head.ply").read_bytes()
    assert head.sh_degree == 1
    assert 50 < len(head) < len(scene)
    cameras = read_cameras_json(ws / "cameras.json")
    assert len(cameras) >= 14  # of 16 sampled
    for cam in cameras:
        assert (ws / cam.image).exists() and (ws / cam.mask).exists()
        assert cam.distortion["model"] == "SIMPLE_RADIAL"
    assert len({(c.fx, c.cx, c.cy) for c in cameras}) == 1  # one shared camera
    # The train stage's cameras: SfM's frames, intrinsics and images, poses as trained (refined
    # when TrainConfig.pose_lr > 0, else SfM's own).
    trained = read_cameras_json(ws / "cameras_refined.json")
    assert [c.frame_index for c in trained] == [c.frame_index for c in cameras]
    for sfm_cam, cam in zip(cameras, trained):
        assert (cam.image, cam.mask, cam.K.tolist(), cam.distortion) == (sfm_cam.image, sfm_cam.mask,
                                                                          sfm_cam.K.tolist(), sfm_cam.distortion)
        moved = np.linalg.norm(cam.center - sfm_cam.center)
        assert moved < 0.01 if TrainConfig().pose_lr > 0 else moved == 0  # millimetres at most
    report = json.loads((ws / "report.json").read_text())
    for key in ("stage_seconds", "frames_sampled", "frames_with_face", "frames_registered",
                "mean_reprojection_error_px", "gaussians_before_isolation", "gaussians_after_isolation",
                "final_loss", "psnr_in_mask_db"):
        assert key in report, key
    assert set(report["stage_seconds"]) == {"frames", "faces", "sfm", "masks", "train", "isolate"}
    assert report["mean_reprojection_error_px"] < 2.0
    assert report["psnr_in_mask_db"] > 15
    events = stage_events(ws)
    assert events[-1]["stage"] == "done"
    assert all(0.0 <= e["progress"] <= 1.0 for e in events)
    assert (ws / "preview.png").exists()
    # The provenance sidecar beside the output, valid against its published schema.
    import jsonschema

    sidecar = json.loads((out / "head.json").read_text())
    schema = json.loads((REPO / "docs" / "provenance.schema.json").read_text())
    jsonschema.validate(sidecar, schema)
    assert sidecar["source"]["name"] == "video.mp4"


def test_isolation_keeps_the_head_and_drops_the_room(finished_run, capture_dir):
    out, ws, _, _ = finished_run
    cameras = read_cameras_json(ws / "cameras.json")
    head = read_splat_ply(out / "head.ply")
    scene = read_splat_ply(ws / "scene.ply")
    # "On the head": the centre lands on the true (bust) mask in most registered views.
    head_on = on_true_head(head.means, cameras, capture_dir) > 0.5
    scene_on = on_true_head(scene.means, cameras, capture_dir) > 0.5
    assert head_on.mean() > 0.85, head_on.mean()  # what is kept is the head...
    # ...and most of what the scene holds off the head (room, fog) is gone.
    assert (~head_on).sum() < 0.4 * (~scene_on).sum(), ((~head_on).sum(), (~scene_on).sum())


def test_rerun_resumes_every_finished_stage(finished_run, capture_dir):
    out, ws, first_seconds, _ = finished_run
    before = {p.name: p.stat().st_mtime_ns for p in (ws / "stages").iterdir()}
    size = (ws / "events.jsonl").stat().st_size
    result = run_cli("run", "--video", capture_dir / "video.mp4", "--output", out / "head.ply", "--workspace", ws, *ARGS)
    assert result.returncode == 0, result.stderr[-2000:]
    new = events_after(ws, size)
    reused = {e["stage"] for e in new if "already done" in e["message"]}
    assert reused == {"frames", "faces", "sfm", "masks", "train", "isolate"}
    assert {p.name: p.stat().st_mtime_ns for p in (ws / "stages").iterdir()} == before


def test_isolate_with_another_threshold_changes_head_without_rendering(finished_run):
    out, ws, _, _ = finished_run
    default = read_splat_ply(out / "head.ply")
    strict_path = out / "strict.ply"
    size = (ws / "events.jsonl").stat().st_size
    result = run_cli("isolate", "--workspace", ws, "--output", strict_path, "--threshold", "0.8")
    assert result.returncode == 0, result.stderr
    strict = read_splat_ply(strict_path)
    assert 0 < len(strict) < len(default)
    new = events_after(ws, size)
    assert not any("checked view" in e["message"] for e in new)  # cached visibility, no re-render
    assert new[-1]["stage"] == "done"


def test_isolation_that_keeps_nothing_is_a_clean_error(finished_run, tmp_path):
    """Masks that miss the head in every view (blanked in a copy of the workspace whose isolation
    is undone, so that it renders again) leave nothing to keep."""
    _, finished_ws, _, _ = finished_run
    ws = tmp_path / "ws"
    shutil.copytree(finished_ws, ws)
    for path in (ws / "masks").glob("*.png"):
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert cv2.imwrite(str(path), np.zeros_like(mask))
    (ws / "isolation.npz").unlink()
    (ws / "stages" / "isolate.done.json").unlink()
    before = (ws / "head.ply").read_bytes()
    result = run_cli("isolate", "--workspace", ws, "--output", tmp_path / "none.ply")
    assert result.returncode == 3, result.stderr
    assert "kept none" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "none.ply").exists() and (ws / "head.ply").read_bytes() == before


def test_isolation_sees_the_scene_through_the_trained_cameras(finished_run, tmp_path):
    """Isolation renders every view with cameras_refined.json's poses, not cameras.json's: with the
    trained cameras turned away from the head (in a copy, its isolation marker removed; the cached
    visibility belongs to the other cameras), nothing is left to keep; restored, the same
    isolation keeps the head again."""
    _, finished_ws, _, _ = finished_run
    ws = tmp_path / "ws"
    shutil.copytree(finished_ws, ws)
    trained = read_cameras_json(ws / "cameras_refined.json")
    turn = np.eye(4)
    turn[:3, :3] = cv2.Rodrigues(np.array([0.0, np.pi / 2, 0.0]))[0]  # the head leaves every frame
    write_cameras_json(ws / "cameras_refined.json", [dataclasses.replace(c, world_to_camera=turn @ c.world_to_camera)
                                                     for c in trained])
    (ws / "stages" / "isolate.done.json").unlink()
    result = run_cli("isolate", "--workspace", ws, "--output", tmp_path / "none.ply")
    assert result.returncode == 3 and "kept none" in result.stderr, result.stderr[-2000:]
    write_cameras_json(ws / "cameras_refined.json", trained)
    result = run_cli("isolate", "--workspace", ws, "--output", tmp_path / "head.ply")
    assert result.returncode == 0, result.stderr[-2000:]
    default = finished_ws / "isolations" / "head_t0.30_o0.05.ply"  # head.ply may be another test's threshold
    assert len(read_splat_ply(tmp_path / "head.ply")) == len(read_splat_ply(default))


def test_changed_training_parameter_reuses_earlier_stages(finished_run, capture_dir, tmp_path):
    out, ws, _, _ = finished_run
    args = [a if a != "300" else "40" for a in ARGS]
    size = (ws / "events.jsonl").stat().st_size
    trained_before = (ws / "cameras_refined.json").stat().st_mtime_ns
    result = run_cli("run", "--video", capture_dir / "video.mp4", "--output", tmp_path / "h.ply", "--workspace", ws, *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (ws / "cameras_refined.json").stat().st_mtime_ns != trained_before  # the new training's cameras
    new = events_after(ws, size)
    reused = {e["stage"] for e in new if "already done" in e["message"]}
    assert reused == {"frames", "faces", "sfm", "masks"}
    assert any(e["stage"] == "train" and "step 40/40" in e["message"] for e in new)


def test_report_html_renders_offline_in_chromium(finished_run):
    """report.html: the figures table, the contact sheet's pictures and the training plot, shown by a
    real headless Chromium with no request leaving the file."""
    from headless_chromium import Chromium

    _, ws, _, _ = finished_run
    report = json.loads((ws / "report.json").read_text())
    history = report["train_history"]
    # The workspace is shared: an earlier test may have re-trained it with fewer steps, so the
    # history must end at the last training's own final step, as its events say.
    last_step = [e["message"] for e in stage_events(ws) if e.get("stage") == "train"
                 and e.get("message", "").startswith("step ")][-1]
    done, total = map(int, last_step.split(",")[0].removeprefix("step ").split("/"))
    assert done == total and history["step"][0] == 1 and history["step"][-1] == total
    assert history["gaussians"][-1] == report["gaussians_trained"] and len(history["loss"]) == len(history["step"])
    with Chromium(900, 1200) as browser:
        browser.open((ws / "report.html").as_uri())
        page = browser.evaluate("""JSON.stringify({
            rows: Object.fromEntries([...document.querySelectorAll('table.figures tr')]
                  .map(r => [r.cells[0].textContent, r.cells[1].textContent])),
            pictures: [...document.querySelectorAll('table.sheet img')].map(i => [i.complete, i.naturalWidth]),
            lines: document.querySelectorAll('svg polyline').length,
            warnings: document.querySelectorAll('ul.warnings li').length + document.querySelectorAll('p.ok').length})""")
        shot = browser.screenshot()
        requests = list(browser.requests)
    page = json.loads(page)
    assert page["rows"]["frames_registered"] == str(report["frames_registered"])
    assert page["rows"]["stage_seconds.train"] == f"{report['stage_seconds']['train']:.4g}"
    assert len(page["pictures"]) == 16 and all(done and width > 0 for done, width in page["pictures"])
    assert page["lines"] == 2 and page["warnings"] >= 1
    assert shot.std() > 20  # something is drawn, not a blank page
    outside = [url[:80] for url in requests if not url.startswith(("file:", "data:"))]
    assert not outside and requests[0] == (ws / "report.html").as_uri(), outside


def test_sfm_registers_larger_frames_and_scales_the_cameras_to_the_training_frames(finished_run, capture_dir):
    import pycolmap

    _, ws, _, _ = finished_run
    frames = json.loads((ws / "frames.json").read_text())
    assert {(f["width"], f["height"], f["sfm_width"], f["sfm_height"]) for f in frames} == {(480, 270, 960, 540)}
    model = pycolmap.Reconstruction(str(ws / "sfm" / "model"))
    (colmap_camera,) = model.cameras.values()
    assert (colmap_camera.width, colmap_camera.height) == (960, 540)
    assert all(image.name.startswith("frames_sfm/") for image in model.images.values())
    true_fx = json.loads((capture_dir / "cameras.json").read_text())["frames"][0]["fx"] * 270 / 540
    for cam in read_cameras_json(ws / "cameras.json"):
        assert (cam.width, cam.height) == (480, 270) and cam.image.startswith("frames/")
        assert abs(cam.fx / true_fx - 1) < 0.05, (cam.fx, true_fx)
        assert abs(cam.cx - 240) < 1 and abs(cam.cy - 135) < 1
    report = json.loads((ws / "report.json").read_text())
    assert report["sfm_frame_height"] == 540
