"""The Batch panel in real Blender on a batch folder made for real: each capture run by the body
of `facesplat batch`'s Ray task (batch.run_capture: `python -m facesplat run` as a child, at tiny
settings on the CPU) and batch.json written by the batch module's own writer. Ray itself is
left out (tests/backend/test_batch.py runs it); what the add-on reads is the same file.

The panel lists the captures (the failed one greyed, with its cause), imports the finished one
as Run would (head and cameras under one parent, linked to its workspace), Re-isolate works on
it, and a failed capture or a broken batch.json gives a clear report with the scene untouched.
"""

import sys
from types import SimpleNamespace

import pytest

from blender_worker import REPO, BlenderWorker, addon, reset_scene, scene_snapshot
from test_blender_addon import RecordingLayout

sys.path.insert(0, str(REPO / "backend"))
from facesplat import batch  # noqa: E402
from facesplat.config import DEFAULT_PRESET  # noqa: E402
from facesplat.core.ply import read_splat_ply  # noqa: E402

VIDEO = REPO / "samples" / "lps_orbit160" / "video.mp4"
TINY = {"frames.height": 180, "train.num_iters": 30, "frames.num_frames": 12, "device": "cpu"}

if not VIDEO.exists():
    pytest.skip("sample capture not present", allow_module_level=True)

pytestmark = pytest.mark.backend


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory):
    """A batch folder: 'lps' done, 'notes' (a text file) failed with the backend's cause."""
    root = tmp_path_factory.mktemp("batch")
    inputs = root / "captures"
    inputs.mkdir()
    (inputs / "notes.txt").write_text("not a video")
    output_dir = root / "collection"
    captures = [batch.Capture("lps", VIDEO, False), batch.Capture("notes", inputs / "notes.txt", False)]
    batch.configure(captures, DEFAULT_PRESET, TINY)
    results = {}
    for c in captures:
        outcome = batch.run_capture(batch.run_argv(c, output_dir, DEFAULT_PRESET), str(c.log(output_dir)))
        status = "done" if outcome["exit_code"] == 0 else "failed"
        results[c.name] = batch._result(c, output_dir, status, cause=outcome["cause"],
                                        wall_seconds=outcome["seconds"])
    batch._write_tables(output_dir, inputs, results)
    assert results["lps"]["status"] == "done", captures[0].log(output_dir).read_text()[-2000:]
    return output_dir


@pytest.fixture(scope="module")
def blender(extension_zip, tmp_path_factory):
    """Re-isolate runs the backend: this test's interpreter with the checkout's `facesplat`."""
    worker = BlenderWorker(tmp_path_factory.mktemp("blender_home"), extension_zip,
                           env={"PYTHONPATH": str(REPO / "backend")})
    yield worker
    worker.close()


# ---- run inside Blender -------------------------------------------------------------------------

def w_list(batch_dir, python):
    """Choose the batch folder (the list fills itself) and draw the Batch panel."""
    import bpy

    reset_scene()
    bpy.context.preferences.addons[addon().__name__].preferences.python = python
    s = bpy.context.scene.facesplat
    s.batch_dir = str(batch_dir)
    listed = [(c.name, c.status, c.importable, c.figures, c.cause) for c in s.batch_captures]
    log = []
    s.batch_index = 1  # the failed one: the Import button is disabled under it
    bpy.types.FACESPLAT_PT_batch.draw(SimpleNamespace(layout=RecordingLayout(log)), bpy.context)
    return listed, s.batch_error, log


def _run_objects():
    import bpy

    objects = bpy.context.scene.objects
    heads = [ob for ob in objects if ob.facesplat.role == "HEAD"]
    return {"heads": [(h.name, h.facesplat.workspace, h.facesplat.source, h.parent.name if h.parent else None,
                       h.parent.facesplat.workspace if h.parent else None, len(h.data.points)) for h in heads],
            "cameras": sorted({ob.facesplat.workspace for ob in objects if ob.type == "CAMERA"}),
            "camera_count": sum(ob.type == "CAMERA" for ob in objects),
            "camera_parents": sorted({ob.parent.name for ob in objects if ob.type == "CAMERA" and ob.parent})}


def w_import_chosen(index):
    """Import the list's chosen capture, as the panel's button does (no capture name given)."""
    import bpy

    bpy.context.scene.facesplat.batch_index = index
    result = bpy.ops.facesplat.batch_import()
    return sorted(result), _run_objects(), bpy.context.active_object.name


def w_import_failing(capture):
    import bpy

    before = scene_snapshot()
    try:
        bpy.ops.facesplat.batch_import(capture=capture)
        message = None
    except RuntimeError as e:
        message = str(e)
    return message, before, scene_snapshot()


def w_reisolate(threshold):
    import bpy

    head = next(ob for ob in bpy.context.scene.objects if ob.facesplat.role == "HEAD")
    bpy.context.view_layer.objects.active = head
    bpy.context.scene.facesplat.threshold = threshold
    try:
        bpy.ops.facesplat.reisolate()
    except RuntimeError as e:
        return {"error": str(e)}
    return {"points": len(head.data.points), "source": head.facesplat.source}


def w_broken_batch(folder):
    """A broken batch.json: the panel says why, Refresh and Import report it, the scene stays."""
    import bpy

    s = bpy.context.scene.facesplat
    before = scene_snapshot()
    s.batch_dir = str(folder)
    state = {"error": s.batch_error, "listed": len(s.batch_captures)}
    log = []
    bpy.types.FACESPLAT_PT_batch.draw(SimpleNamespace(layout=RecordingLayout(log)), bpy.context)
    state["log"] = log
    for op in (bpy.ops.facesplat.batch_refresh, lambda: bpy.ops.facesplat.batch_import(capture="lps")):
        try:
            op()
            state.setdefault("reports", []).append(None)
        except RuntimeError as e:
            state.setdefault("reports", []).append(str(e))
    state["unchanged"] = scene_snapshot() == before
    return state


# ---- tests --------------------------------------------------------------------------------------

def test_the_panel_lists_the_captures_with_status_figures_and_cause(blender, batch_dir):
    listed, error, log = blender.call(w_list, batch_dir, sys.executable)
    assert error == ""
    (lps, lps_status, lps_ok, lps_figures, _), (notes, notes_status, notes_ok, _, notes_cause) = listed
    assert (lps, lps_status, lps_ok) == ("lps", "done", True)
    gaussians = len(read_splat_ply(batch_dir / "lps" / "workspace" / "head.ply"))
    assert lps_figures.startswith(f"{gaussians} Gaussians · ") and " frames · PSNR " in lps_figures
    assert (notes, notes_status, notes_ok) == ("notes", "failed", False)
    assert "notes.txt" in notes_cause and "Traceback" not in notes_cause  # the backend's one-line cause
    items = {entry[1]: entry[2] for entry in log if entry[0] == "item"}
    assert items["lps"][0] == ("active", True) and ("label", lps_figures) in items["lps"]
    assert items["notes"][0] == ("active", False) and ("label", notes_cause) in items["notes"]  # greyed
    # the failed capture is chosen: its cause under the list, the Import button disabled
    assert log.index(("enabled", False)) == log.index(("operator", "facesplat.batch_import")) - 1


def test_importing_a_finished_capture_is_importing_its_run(blender, batch_dir):
    result, objects, active = blender.call(w_import_chosen, 0)
    ws = batch_dir / "lps" / "workspace"
    assert result == ["FINISHED"]
    points = len(read_splat_ply(ws / "head.ply"))
    # as Run imports: the head under an empty named after the capture, every object linked to the workspace
    assert objects["heads"] == [("lps head", str(ws), str(ws / "head.ply"), "lps", str(ws), points)]
    assert active == "lps head"
    frames = batch._result(batch.Capture("lps", VIDEO, False), batch_dir, "done")["frames_registered"]
    assert objects["camera_count"] == frames and objects["cameras"] == [str(ws)]
    assert objects["camera_parents"] == ["lps"]


def test_reisolate_works_on_the_imported_capture(blender, batch_dir):
    out = blender.call(w_reisolate, 0.6, timeout=600)
    assert "error" not in out, out.get("error")
    kept = batch_dir / "lps" / "workspace" / "isolations" / "head_t0.60_o0.05.ply"
    assert out["source"] == str(kept) and out["points"] == len(read_splat_ply(kept))


def test_a_failed_capture_cannot_be_imported(blender, batch_dir):
    message, before, after = blender.call(w_import_failing, "notes")
    assert message and "capture notes failed: " in message and "notes.txt" in message
    assert "run the same batch again" in message and "Traceback" not in message, message
    assert after == before


def test_a_broken_batch_json_is_reported_and_the_scene_untouched(blender, tmp_path):
    (tmp_path / "batch.json").write_text('{"captures": [{"name": "../../etc", "status": "done"}]}')
    state = blender.call(w_broken_batch, tmp_path)
    assert "is not a folder name" in state["error"] and state["listed"] == 0
    assert ("label", state["error"]) in state["log"] and ("operator", "facesplat.batch_import") not in state["log"]
    refresh, imported = state["reports"]
    assert refresh and "'../../etc' is not a folder name" in refresh and "Traceback" not in refresh
    assert imported and "is not a folder name" in imported
    assert state["unchanged"]
