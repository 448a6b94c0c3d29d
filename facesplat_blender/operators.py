"""Operators: run the backend, cancel it, re-isolate, install the backend, import and export PLY.

Backend commands run as child processes (runner.py). From the UI they are modal operators
polling on a timer, so Blender stays responsive; from a script (EXEC) they block until done.
"""

import sys
import tempfile
import time
from pathlib import Path

import bpy
from bpy.props import BoolProperty, StringProperty
from bpy.types import Operator
from bpy_extras.io_utils import ExportHelper, ImportHelper

from . import exporter, importer, preferences, runner
from .core.ply import PlyFormatError

POLL_SECONDS = 0.25


class UserError(Exception):
    """Something the user can fix before a run starts (a missing file, no backend)."""


class BackendJob:
    """Backend commands run one after the other (usually one; the install needs two), followed
    from a timer, and what to do in Blender when they all succeed."""

    def __init__(self, kind: str, title: str, commands: list[list[str]], log_path: Path,
                 events_path: Path | None = None, on_success=None):
        self.kind, self.title = kind, title
        self.commands, self.log_path, self.events_path = commands, log_path, events_path
        self.on_success = on_success  # callable(context) -> message, may raise
        self.step = 0
        self.process: runner.BackendProcess | None = None

    def start(self) -> "BackendJob":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_bytes(b"")
        self._start_step()
        return self

    def _start_step(self) -> None:
        self.process = runner.BackendProcess(self.commands[self.step], self.log_path, self.events_path).start()

    def cancel(self) -> None:
        if self.process is not None:
            self.process.cancel()

    def fraction(self) -> float:
        if self.events_path is None:  # no progress events (pip): count the commands
            return self.step / len(self.commands)
        ev = self.process.last_event if self.process else None
        return float(ev.get("progress", 0.0)) if ev else 0.0

    def status_text(self) -> str:
        if self.process is None:
            return ""
        if self.process.cancelled:
            return "cancelling…"
        if self.events_path is None:  # pip: no events, show its output
            lines = runner.tail_lines(self.log_path, 1)
            return f"step {self.step + 1}/{len(self.commands)}: {lines[0][:60] if lines else 'starting…'}"
        return self.process.progress_text()

    def tick(self, context) -> tuple[str, str]:
        """Advance; returns (state, message) with state RUNNING, FINISHED, CANCELLED or FAILED."""
        proc = self.process
        proc.poll()
        if context.window_manager.facesplat_job.cancel_requested:
            proc.cancel()
        _show(context, self)
        if proc.running:
            return "RUNNING", ""
        proc.poll()  # the last events, written just before exit
        if proc.cancelled:
            return "CANCELLED", f"{self.title} cancelled"
        if proc.returncode != 0:
            return "FAILED", proc.error_message()
        if self.step + 1 < len(self.commands):
            self.step += 1
            try:
                self._start_step()
            except RuntimeError as e:  # e.g. the new environment's python is missing
                return "FAILED", str(e)
            return "RUNNING", ""
        try:
            return "FINISHED", (self.on_success(context) if self.on_success else f"{self.title} finished")
        except (PlyFormatError, ValueError, OSError, exporter.ExportError) as e:
            return "FAILED", str(e)


_ACTIVE: BackendJob | None = None


def active_job() -> BackendJob | None:
    return _ACTIVE


def launch(context, job: BackendJob) -> BackendJob:
    global _ACTIVE
    if _ACTIVE is not None:
        raise UserError(f"{_ACTIVE.title} is still running; cancel it first")
    try:
        job.start()
    except (OSError, RuntimeError) as e:
        raise UserError(str(e)) from None
    _ACTIVE = job
    state = context.window_manager.facesplat_job
    state.running, state.title, state.cancel_requested = True, job.title, False
    state.stage, state.progress, state.message = "", 0.0, ""
    return job


def _show(context, job: BackendJob) -> None:
    """Mirror the job into WindowManager properties (the panel draws those) and the status bar."""
    state = context.window_manager.facesplat_job
    ev = job.process.last_event or {}
    state.stage, state.progress = job.status_text(), job.fraction()
    state.message = str(ev.get("message", ""))[:200]
    text = f"FaceSplat {job.title}: {state.stage} · {state.message}  (Esc to cancel)"
    for window in context.window_manager.windows:
        if window.workspace is not None:
            window.workspace.status_text_set(text)
        for area in (window.screen.areas if window.screen else ()):
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


def finish_job(context) -> None:
    global _ACTIVE
    _ACTIVE = None
    state = context.window_manager.facesplat_job
    state.running, state.cancel_requested = False, False
    for window in context.window_manager.windows:
        if window.workspace is not None:
            window.workspace.status_text_set(None)
        for area in (window.screen.areas if window.screen else ()):
            area.tag_redraw()


@bpy.app.handlers.persistent  # stays in load_pre across file loads
def stop_active_job(*_args) -> None:
    """Stop the backend when Blender quits, loads another file or disables the add-on."""
    global _ACTIVE
    if _ACTIVE is not None and _ACTIVE.process is not None:
        _ACTIVE.process.stop()
    _ACTIVE = None


class _JobOperator:
    """Modal with a timer when invoked from the UI; blocking when executed from a script."""

    def make_job(self, context) -> BackendJob:
        raise NotImplementedError

    @classmethod
    def poll(cls, context):
        return _ACTIVE is None

    def invoke(self, context, event):
        try:
            self._job = launch(context, self.make_job(context))
        except UserError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(POLL_SECONDS, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            self._job.cancel()
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        try:
            state, message = self._job.tick(context)
        except BaseException:  # never leave a job marked as running behind a bug
            context.window_manager.event_timer_remove(self._timer)
            self._job.process.stop()
            finish_job(context)
            raise
        if state == "RUNNING":
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        return self._conclude(context, state, message)

    def execute(self, context):
        try:
            job = launch(context, self.make_job(context))
        except UserError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        state, message = "RUNNING", ""
        try:
            while state == "RUNNING":
                time.sleep(POLL_SECONDS)
                state, message = job.tick(context)
        except BaseException:
            job.process.stop()
            finish_job(context)
            raise
        return self._conclude(context, state, message)

    def _conclude(self, context, state, message):
        finish_job(context)
        if state == "FINISHED":
            self.report({"INFO"}, message)
            return {"FINISHED"}
        self.report({"WARNING"} if state == "CANCELLED" else {"ERROR"}, message)
        return {"CANCELLED"}


def _abspath(path: str) -> Path:
    return Path(bpy.path.abspath(path)).resolve() if path else Path()


def resolve_workspace(context, source: Path) -> Path:
    """The panel's workspace, or facesplat/<input name> next to the .blend (or in the temp folder)."""
    settings = context.scene.facesplat
    if settings.workspace.strip():
        return _abspath(settings.workspace)
    base = Path(bpy.path.abspath("//")) if bpy.data.filepath else Path(tempfile.gettempdir())
    return base / "facesplat" / (source.stem or source.name or "capture")


def _require_python(context) -> Path:
    python = preferences.backend_python(context)
    if python is None:
        raise UserError("No FaceSplat backend: press Install Backend in Preferences › Add-ons › FaceSplat, "
                        "or set Backend Python there")
    return python


def run_job(context) -> BackendJob:
    """`facesplat run` on the panel's input; on success the head and its cameras are imported."""
    s = context.scene.facesplat
    path = _abspath(s.video if s.input_type == "VIDEO" else s.images)
    if s.input_type == "VIDEO" and not path.is_file():
        raise UserError(f"Video not found: '{s.video}'; choose a video file in the FaceSplat panel")
    if s.input_type == "IMAGES" and not path.is_dir():
        raise UserError(f"Image folder not found: '{s.images}'; choose a folder of photos")
    python = _require_python(context)
    ws = resolve_workspace(context, path)
    device = preferences.get(context).device if s.device == "PREFS" else s.device
    output = ws / "head.ply"
    argv = runner.run_command(python, workspace=ws, output=output, num_frames=s.num_frames, height=s.height,
                              num_iters=s.num_iters, device=device, silhouette_masks=s.silhouette_masks,
                              **({"video": path} if s.input_type == "VIDEO" else {"images": path}))

    def on_success(context):
        head = importer.import_splats(context, output, cameras_json=ws / "cameras.json",
                                      name=path.stem or path.name, workspace=ws)
        return f"Imported {len(head.data.points)} Gaussians and their cameras from {ws}"

    return BackendJob("run", "Run", [argv], ws / "logs" / "blender-run.log", ws / "events.jsonl", on_success)


def reisolate_job(context) -> BackendJob:
    """`facesplat isolate` on the active run's workspace; the head's points are replaced in place."""
    root, head = importer.run_objects(context.active_object)
    if head is None or not head.facesplat.workspace:
        raise UserError("Select the head (or any object) of a FaceSplat run to re-isolate it")
    ws = Path(head.facesplat.workspace)
    if not (ws / "scene.ply").is_file():
        raise UserError(f"{ws} has no scene.ply; re-isolation needs the workspace of a finished run")
    s = context.scene.facesplat
    output = ws / "head.ply"
    argv = runner.isolate_command(_require_python(context), workspace=ws, output=output,
                                  threshold=s.threshold, min_opacity=s.min_opacity)
    head_name = head.name

    def on_success(context):
        target = bpy.data.objects.get(head_name)
        if target is None:
            raise ValueError(f"'{head_name}' was deleted while isolating; import {output} instead")
        splats = importer.ply.read_splat_ply(output)
        importer.replace_splats(context, target, splats, source=output)
        return f"Re-isolated: {len(splats)} Gaussians (threshold {s.threshold:.2f}, min opacity {s.min_opacity:.2f})"

    return BackendJob("isolate", "Re-isolate", [argv], ws / "logs" / "blender-isolate.log",
                      ws / "events.jsonl", on_success)


def install_job(context) -> BackendJob:
    prefs = preferences.get(context)
    folder = preferences.user_folder(create=True)
    if folder is None:
        raise UserError("Install Backend needs FaceSplat installed as an extension (Get Extensions › Install from Disk)")
    wheels = _abspath(prefs.wheels) if prefs.wheels.strip() else None
    if wheels is None and not bpy.app.online_access:
        raise UserError("Online access is off (Preferences › System › Network): allow it for pip, "
                        "or set Offline Wheels to a folder of wheels")
    commands = runner.install_commands(sys.executable, preferences.env_dir(), preferences.bundled_backend(), wheels)
    return BackendJob("install", "Install Backend", commands, preferences.install_log(), None,
                      lambda context: f"Backend installed in {preferences.env_dir()}")


class FACESPLAT_OT_run(_JobOperator, Operator):
    """Run the FaceSplat backend on the video or image folder, then import the head and its cameras"""

    bl_idname = "facesplat.run"
    bl_label = "Run FaceSplat"
    bl_options = {"REGISTER", "UNDO"}  # the import at the end is one undo step

    def make_job(self, context):
        return run_job(context)


class FACESPLAT_OT_reisolate(_JobOperator, Operator):
    """Select the head Gaussians again with the panel's threshold and minimum opacity (seconds)"""

    bl_idname = "facesplat.reisolate"
    bl_label = "Re-isolate Head"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return _ACTIVE is None and importer.run_objects(context.active_object)[1] is not None

    def make_job(self, context):
        return reisolate_job(context)


class FACESPLAT_OT_install_backend(_JobOperator, Operator):
    """Create a Python environment in the extension's user folder and pip-install the bundled backend"""

    bl_idname = "facesplat.install_backend"
    bl_label = "Install Backend"

    def make_job(self, context):
        return install_job(context)


class FACESPLAT_OT_cancel(Operator):
    """Stop the running FaceSplat command and everything it started"""

    bl_idname = "facesplat.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        return _ACTIVE is not None

    def execute(self, context):
        context.window_manager.facesplat_job.cancel_requested = True
        _ACTIVE.cancel()
        return {"FINISHED"}


class FACESPLAT_OT_import_ply(Operator, ImportHelper):
    """Import a 3D Gaussian Splat PLY (SH degree 0-3) as a point cloud; with a FaceSplat
    workspace's cameras.json beside it, its cameras too"""

    bl_idname = "facesplat.import_ply"
    bl_label = "Import 3D Gaussian Splat"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".ply"
    filter_glob: StringProperty(default="*.ply", options={"HIDDEN"})
    import_cameras: BoolProperty(name="Cameras", default=True,
                                 description="Also import cameras.json from the same folder, if there is one")

    def execute(self, context):
        path = Path(self.filepath)
        cameras = path.parent / "cameras.json"
        use_cameras = self.import_cameras and cameras.is_file()
        try:
            # A workspace's head.ply is named after its workspace folder, a lone PLY after itself.
            head = importer.import_splats(context, path, cameras_json=cameras if use_cameras else None,
                                          name=path.parent.name if use_cameras else path.stem,
                                          workspace=path.parent if use_cameras else None)
        except (PlyFormatError, ValueError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Imported {len(head.data.points)} Gaussians from {path.name}")
        return {"FINISHED"}


class FACESPLAT_OT_export_ply(Operator, ExportHelper):
    """Export the active object's Gaussians as a standard 3DGS PLY (Inria layout)"""

    bl_idname = "facesplat.export_ply"
    bl_label = "Export 3D Gaussian Splat"

    filename_ext = ".ply"
    filter_glob: StringProperty(default="*.ply", options={"HIDDEN"})
    apply_transform: BoolProperty(
        name="Apply Transform", default=True,
        description="Bake the object's world transform into positions, rotations, scales and colours")

    @classmethod
    def poll(cls, context):
        return exporter.has_splat_attributes(context.active_object)

    def invoke(self, context, event):
        if not self.filepath:
            folder = Path(bpy.path.abspath("//")) if bpy.data.filepath else Path.home()
            self.filepath = str(folder / (bpy.path.clean_name(context.active_object.name) + self.filename_ext))
        return ExportHelper.invoke(self, context, event)

    def execute(self, context):
        try:
            path, count = exporter.export_splats(context, context.active_object, self.filepath, self.apply_transform)
        except (exporter.ExportError, OSError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Exported {count} Gaussians to {path}")
        return {"FINISHED"}


def menu_import(self, context):
    self.layout.operator(FACESPLAT_OT_import_ply.bl_idname, text="3D Gaussian Splat (.ply)")


def menu_export(self, context):
    self.layout.operator(FACESPLAT_OT_export_ply.bl_idname, text="3D Gaussian Splat (.ply)")


classes = (FACESPLAT_OT_run, FACESPLAT_OT_reisolate, FACESPLAT_OT_install_backend, FACESPLAT_OT_cancel,
           FACESPLAT_OT_import_ply, FACESPLAT_OT_export_ply)
