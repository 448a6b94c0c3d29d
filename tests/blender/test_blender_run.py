"""The Run, Cancel and Re-isolate operators end to end against the REAL backend on the CPU, on a
tiny capture (16 frames at 180 px, 30 iterations). If only these fail, the add-on and the backend
CLI disagree or the backend is broken; the assertion message carries the backend's one-line cause
and the tail of its log.

The tests share one workspace and run in file order: cancel first, then a full run resumes the
same workspace, then re-isolation.
"""

import json
import sys
import time
from pathlib import Path

import pytest

from blender_worker import REPO, BlenderWorker, addon, process_group_members, reset_scene, scene_snapshot

sys.path.insert(0, str(REPO / "backend"))
from facesplat.core.ply import read_splat_ply  # noqa: E402

LPS = REPO / "samples" / "lps_orbit160"  # the sample capture, shipped in the repository
VIDEO = LPS / "video.mp4"
TINY = {"num_frames": 16, "height": 180, "num_iters": 30}  # 10 frames register too few for SfM
BACKEND = REPO / "backend"

if not VIDEO.exists():
    pytest.skip("sample capture not present", allow_module_level=True)


pytestmark = pytest.mark.backend


@pytest.fixture(scope="module")
def blender(extension_zip, tmp_path_factory):
    """A Blender whose backend Python is this test's interpreter, with the checkout's `facesplat` on its path."""
    worker = BlenderWorker(tmp_path_factory.mktemp("blender_home"), extension_zip,
                           env={"PYTHONPATH": str(BACKEND)})
    yield worker
    worker.close()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("run") / "lps workspace"  # a space, to catch quoting bugs


# ---- run inside Blender -------------------------------------------------------------------------

def w_configure(python, video, workspace, settings):
    import bpy

    reset_scene()
    bpy.context.preferences.addons[addon().__name__].preferences.python = python
    s = bpy.context.scene.facesplat
    s.input_type, s.video, s.workspace, s.device = "VIDEO", str(video), str(workspace), "cpu"
    for key, value in settings.items():
        setattr(s, key, value)


def _log_tail(job) -> str:
    return "\n".join(addon("runner").tail_lines(job.log_path, 15))


def w_run_then_cancel():
    """Start Run the way the modal operator does, press Cancel after the first progress events."""
    import bpy

    operators, context = addon("operators"), bpy.context
    before = scene_snapshot()
    job = operators.start_job(context, addon("job_factories").run_job(context))
    pid = job.process.pid
    state, message, events_seen = "RUNNING", "", []
    deadline = time.monotonic() + 300
    while state == "RUNNING" and not events_seen and time.monotonic() < deadline:
        time.sleep(0.1)
        state, message = operators.poll_job(context, job)
        events_seen = [job.process.last_event] if job.process.last_event else []
    if events_seen and state == "RUNNING":
        assert bpy.ops.facesplat.cancel() == {"FINISHED"}
        deadline = time.monotonic() + 60
        while state == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.1)
            state, message = operators.poll_job(context, job)
    log = _log_tail(job)
    operators.end_job(context)
    return {"state": state, "message": message, "events": events_seen, "pid": pid, "log": log,
            "before": before, "after": scene_snapshot(), "running": context.window_manager.facesplat_job.running}


def w_run():
    """Run FaceSplat as a script would (EXEC blocks until the backend is done and imported)."""
    import bpy

    try:
        result = bpy.ops.facesplat.run()
    except RuntimeError as e:
        return {"error": str(e)}
    scene = bpy.context.scene
    heads = [ob for ob in scene.objects if ob.facesplat.role == "HEAD"]
    cams = [ob for ob in scene.objects if ob.type == "CAMERA"]
    head = heads[0] if heads else None
    return {"result": sorted(result), "heads": len(heads), "cameras": len(cams),
            "backgrounds": sum(len(c.data.background_images) for c in cams),
            "head_points": len(head.data.points) if head else 0,
            "head_parent": head.parent.name if head and head.parent else None,
            "attributes": sorted(a.name for a in head.data.attributes) if head else [],
            "running": bpy.context.window_manager.facesplat_job.running}


def w_reisolate(threshold):
    import bpy

    heads = [ob for ob in bpy.context.scene.objects if ob.facesplat.role == "HEAD"]
    if not heads:
        return {"error": "no imported FaceSplat head in the scene (did the run test fail?)"}
    head = heads[0]
    bpy.context.view_layer.objects.active = head
    bpy.context.scene.facesplat.threshold = threshold
    before = (head.name, head.users_collection[0].name, head.parent.name, [list(r) for r in head.matrix_world])
    try:
        bpy.ops.facesplat.reisolate()
    except RuntimeError as e:
        return {"error": str(e)}
    head = bpy.data.objects[before[0]]
    after = (head.name, head.users_collection[0].name, head.parent.name, [list(r) for r in head.matrix_world])
    return {"before": before, "after": after, "points": len(head.data.points), "source": head.facesplat.source}


def w_run_failing(bad_video, workspace):
    import bpy

    s = bpy.context.scene.facesplat
    s.video, s.workspace = str(bad_video), str(workspace)
    before = scene_snapshot()
    try:
        bpy.ops.facesplat.run()
        message = None
    except RuntimeError as e:
        message = str(e)
    return message, before, scene_snapshot()


# ---- tests --------------------------------------------------------------------------------------

def test_cancel_stops_the_backend_and_leaves_blender_and_the_workspace_sound(blender, workspace):
    blender.call(w_configure, sys.executable, VIDEO, workspace, TINY)
    out = blender.call(w_run_then_cancel, timeout=400)
    assert out["events"], f"no progress event before the backend ended: {out['message']}\n{out['log']}"
    assert out["state"] == "CANCELLED", f"{out['state']}: {out['message']}\n{out['log']}"
    if Path("/proc").exists():
        deadline = time.monotonic() + 5
        while process_group_members(out["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process_group_members(out["pid"]) == [], "processes of the cancelled run are still alive"
    assert out["after"] == out["before"], "a cancelled run changed the scene"
    assert not out["running"]
    # the workspace is sound: whole lines only, no half-written files
    for line in (workspace / "events.jsonl").read_text().splitlines():
        json.loads(line)
    assert not [p for p in workspace.rglob("*.tmp")], "a temp file was left behind"


def test_run_imports_the_head_and_its_cameras(blender, workspace):
    out = blender.call(w_run, timeout=900)
    assert "error" not in out, f"the backend run failed: {out.get('error')}\n" + "\n".join(
        workspace.with_name(workspace.name + ".run.log").read_text(errors="replace").splitlines()[-15:])
    assert out["result"] == ["FINISHED"] and not out["running"]
    frames = json.loads((workspace / "cameras.json").read_text())["frames"]
    assert out["heads"] == 1 and out["head_points"] > 0
    assert out["cameras"] == len(frames) and out["backgrounds"] == len(frames)
    assert out["head_parent"] == "video"
    assert {"f_dc_0", "opacity", "scale_0", "rot_0", "color", "radius"} <= set(out["attributes"])


def test_reisolate_replaces_the_head_in_place(blender, workspace):
    out = blender.call(w_reisolate, 0.6, timeout=600)
    assert "error" not in out, f"re-isolation failed: {out.get('error')}"
    assert out["before"] == out["after"]
    # The backend keeps each isolation (isolations/head_t0.60_o0.05.ply); where it does, the head
    # comes from that copy, so the panel can tell which one is in the scene.
    kept = workspace / "isolations" / "head_t0.60_o0.05.ply"
    source = kept if kept.is_file() else workspace / "head.ply"
    assert out["source"] == str(source)
    assert out["points"] == len(read_splat_ply(source)) == len(read_splat_ply(workspace / "head.ply"))


def test_a_failing_run_reports_the_backends_cause(blender, workspace, tmp_path):
    bad = tmp_path / "not a video.mp4"
    bad.write_bytes(b"this is not a video")
    message, before, after = blender.call(w_run_failing, bad, tmp_path / "ws", timeout=300)
    # the backend's one-line cause, naming the input, as a Blender error report
    assert message and "not a video.mp4" in message and "Traceback" not in message, message
    assert after == before
