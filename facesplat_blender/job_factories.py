"""The backend job behind each button (Run, Re-isolate, Install Backend), built from the panel's
settings and the preferences, with what to import into Blender when it succeeds."""

import sys
import tempfile
from pathlib import Path

import bpy

from . import importer, isolations, preferences, runner
from .core import cameras as cams
from .jobs import BackendJob, UserError


def abspath(path: str) -> Path:
    return Path(bpy.path.abspath(path)).resolve() if path else Path()


def resolve_workspace(context, source: Path) -> Path:
    """The panel's workspace, or facesplat/<input name> next to the .blend (or in the temp folder)."""
    settings = context.scene.facesplat
    if settings.workspace.strip():
        return abspath(settings.workspace)
    base = Path(bpy.path.abspath("//")) if bpy.data.filepath else Path(tempfile.gettempdir())
    return base / "facesplat" / (source.stem or source.name or "capture")


# Beside the workspace, not in it: the backend refuses an --output inside the workspace, and a new
# workspace folder must be empty (a log written there first would make it "a folder of other files").
def exported_head(ws: Path) -> Path:
    """Where the backend exports the head (the add-on imports the workspace's head.ply, the same bytes)."""
    return ws.with_name(ws.name + ".ply")


def log_path(ws: Path, kind: str) -> Path:
    """The backend's output for one button (`kind`: run, isolate), e.g. <workspace>.run.log."""
    return ws.with_name(f"{ws.name}.{kind}.log")


def _require_python(context) -> Path:
    python = preferences.backend_python(context)
    if python is None:
        raise UserError("No FaceSplat backend: press Install Backend in Preferences › Add-ons › FaceSplat, "
                        "or set Backend Python there")
    return python


def settings_values(context) -> dict:
    """The panel's run settings as config values {'section.name': value}, the device resolved."""
    s = context.scene.facesplat
    return runner.settings_values(s, device=preferences.get(context).device if s.device == "PREFS" else None)


def run_job(context) -> BackendJob:
    """`facesplat run` on the panel's input; on success the head and its cameras are imported."""
    s = context.scene.facesplat
    path = abspath(s.video if s.input_type == "VIDEO" else s.images)
    if s.input_type == "VIDEO" and not path.is_file():
        raise UserError(f"Video not found: '{s.video}'; choose a video file in the FaceSplat panel")
    if s.input_type == "IMAGES" and not path.is_dir():
        raise UserError(f"Image folder not found: '{s.images}'; choose a folder of photos")
    python = _require_python(context)
    ws = resolve_workspace(context, path)
    argv = runner.run_command(python, workspace=ws, output=exported_head(ws), values=settings_values(context),
                              preset=s.preset,
                              **({"video": path} if s.input_type == "VIDEO" else {"images": path}))

    def on_success(context):
        head = import_finished_run(context, ws, path.stem or path.name)
        return f"Imported {len(head.data.points)} Gaussians and their cameras from {ws}"

    return BackendJob("run", "Run", [argv], log_path(ws, "run"), ws / "events.jsonl", on_success)


def import_finished_run(context, ws: Path, name: str):
    """A finished run's workspace into the scene: the head and its cameras under one parent, every
    object linked to `ws` (so Re-isolate and kept isolations work on it). Used by Run and by the
    batch list's Import. Raises ValueError (one line), the scene untouched."""
    # A run's cameras are meant to be looked through, so it sets the render size to the frames'.
    # The cameras the splat was trained with: cameras_refined.json, or cameras.json in older workspaces.
    return importer.import_splats(context, ws / "head.ply", cameras_json=cams.trained_cameras_path(ws), name=name,
                                  workspace=ws, set_render_size=True)


def reisolate_job(context) -> BackendJob:
    """`facesplat isolate` on the active run's workspace; the head's points are replaced in place."""
    root, head = importer.run_objects(context.active_object)
    if head is None or not head.facesplat.workspace:
        raise UserError("Select the head (or any object) of a FaceSplat run to re-isolate it")
    ws = Path(head.facesplat.workspace)
    if not (ws / "scene.ply").is_file():
        raise UserError(f"{ws} has no scene.ply; re-isolation needs the workspace of a finished run")
    s = context.scene.facesplat
    threshold, min_opacity = s.threshold, s.min_opacity
    output = ws / "head.ply"  # the workspace's copy of the isolation just run
    kept = isolations.isolation_path(ws, threshold, min_opacity)
    argv = runner.isolate_command(_require_python(context), workspace=ws, output=exported_head(ws),
                                  values=settings_values(context))
    head_name = head.name

    def on_success(context):
        target = bpy.data.objects.get(head_name)
        if target is None:
            raise UserError(f"'{head_name}' was deleted while isolating; import {output} instead")
        # The kept copy (same content as head.ply), so the panel can tell which isolation is in the scene.
        count = importer.replace_splats_from_file(context, target, kept if kept.is_file() else output)
        return f"Re-isolated: {count} Gaussians (threshold {threshold:.2f}, min opacity {min_opacity:.2f})"

    return BackendJob("isolate", "Re-isolate", [argv], log_path(ws, "isolate"),
                      ws / "events.jsonl", on_success)


def install_job(context) -> BackendJob:
    prefs = preferences.get(context)
    folder = preferences.user_folder(create=True)
    if folder is None:
        raise UserError("Install Backend needs FaceSplat installed as an extension (Get Extensions › Install from Disk)")
    wheels = abspath(prefs.wheels) if prefs.wheels.strip() else None
    if wheels is None and not bpy.app.online_access:
        raise UserError("Online access is off (Preferences › System › Network): allow it for pip, "
                        "or set Offline Wheels to a folder of wheels")
    commands = runner.install_commands(sys.executable, preferences.env_dir(), preferences.bundled_backend(), wheels)
    return BackendJob("install", "Install Backend", commands, preferences.install_log(), None,
                      lambda context: f"Backend installed in {preferences.env_dir()}")
