"""Operators: run the backend, cancel it, re-isolate, use a kept isolation, install the backend,
import and export PLY, list a batch folder and import one of its captures.

Backend commands run as child processes (jobs.py, runner.py). From the UI they are modal operators
polling on a timer, so Blender stays responsive; from a script (EXEC) they block until done.
What each command is: job_factories.py.
"""

import time
from pathlib import Path

import bpy
from bpy.props import BoolProperty, IntProperty, StringProperty
from bpy.types import Operator
from bpy_extras.io_utils import ExportHelper, ImportHelper

from . import batches, exporter, importer, isolations, jobs, properties, tools
from .core import cameras as cams
from .job_factories import abspath, import_finished_run, install_job, reisolate_job, run_job
from .jobs import BackendJob, UserError

POLL_SECONDS = 0.25


def start_job(context, job: BackendJob) -> BackendJob:
    """Launch `job` as the active one and show it in the panel (WindowManager.facesplat_job)."""
    jobs.launch(job)
    state = context.window_manager.facesplat_job
    state.running, state.title, state.cancel_requested = True, job.title, False
    state.stage, state.progress, state.message = "", 0.0, ""
    return job


def poll_job(context, job: BackendJob) -> tuple[str, str]:
    """One timer tick: pass on a Cancel press, advance the job, mirror it into the panel and the
    status bar. Returns the job's (state, message)."""
    if context.window_manager.facesplat_job.cancel_requested:
        job.cancel()
    result = job.tick(context)
    state = context.window_manager.facesplat_job
    state.stage, state.progress, state.message = job.status_text(), job.fraction(), job.message()[:200]
    text = f"FaceSplat {job.title}: {state.stage} · {state.message}  (Esc to cancel)"
    for window in context.window_manager.windows:
        if window.workspace is not None:
            window.workspace.status_text_set(text)
        for area in (window.screen.areas if window.screen else ()):
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()
    return result


def end_job(context) -> None:
    """The active job has ended: forget it and clear the panel and the status bar."""
    jobs.finish()
    state = context.window_manager.facesplat_job
    state.running, state.cancel_requested = False, False
    for window in context.window_manager.windows:
        if window.workspace is not None:
            window.workspace.status_text_set(None)
        for area in (window.screen.areas if window.screen else ()):
            area.tag_redraw()


class _JobOperator:
    """Modal with a timer when invoked from the UI; blocking when executed from a script."""

    def make_job(self, context) -> BackendJob:
        raise NotImplementedError

    @classmethod
    def poll(cls, context):
        return jobs.active() is None

    def invoke(self, context, event):
        try:
            self._job = start_job(context, self.make_job(context))
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
            state, message = poll_job(context, self._job)
        except BaseException:  # never leave a job marked as running behind a bug
            context.window_manager.event_timer_remove(self._timer)
            self._job.stop()
            end_job(context)
            raise
        if state == "RUNNING":
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        return self._conclude(context, state, message)

    def execute(self, context):
        try:
            job = start_job(context, self.make_job(context))
        except UserError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        state, message = "RUNNING", ""
        try:
            while state == "RUNNING":
                time.sleep(POLL_SECONDS)
                state, message = poll_job(context, job)
        except BaseException:
            job.stop()
            end_job(context)
            raise
        return self._conclude(context, state, message)

    def _conclude(self, context, state, message):
        end_job(context)
        if state == "FINISHED":
            self.report({"INFO"}, message)
            return {"FINISHED"}
        self.report({"WARNING"} if state == "CANCELLED" else {"ERROR"}, message)
        return {"CANCELLED"}


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
        return jobs.active() is None and importer.run_objects(context.active_object)[1] is not None

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
        return jobs.active() is not None

    def execute(self, context):
        context.window_manager.facesplat_job.cancel_requested = True
        jobs.active().cancel()
        return {"FINISHED"}


class FACESPLAT_OT_import_ply(Operator, ImportHelper):
    """Import a 3D Gaussian Splat PLY (SH degree 0-3) as a point cloud; with a FaceSplat
    workspace's cameras beside it (cameras_refined.json, else cameras.json), its cameras too"""

    bl_idname = "facesplat.import_ply"
    bl_label = "Import 3D Gaussian Splat"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".ply"
    filter_glob: StringProperty(default="*.ply", options={"HIDDEN"})
    import_cameras: BoolProperty(name="Cameras", default=True,
                                 description="Also import the cameras from the same folder, if it is a FaceSplat "
                                             "workspace (cameras_refined.json, or cameras.json)")
    set_render_size: BoolProperty(
        name="Set Render Size", default=False,
        description="Set the scene's render resolution and pixel aspect to the cameras' frames, so looking "
                    "through an imported camera lines up with its frame")

    def execute(self, context):
        path = Path(self.filepath)
        cameras = cams.trained_cameras_path(path.parent)  # cameras_refined.json, else cameras.json
        use_cameras = self.import_cameras and cameras.is_file()
        try:
            # A workspace's head.ply is named after its workspace folder, a lone PLY after itself.
            head = importer.import_splats(context, path, cameras_json=cameras if use_cameras else None,
                                          name=path.parent.name if use_cameras else path.stem,
                                          workspace=path.parent if use_cameras else None,
                                          set_render_size=self.set_render_size)
        except ValueError as e:  # core's PLY and cameras.json errors: one line, the scene untouched
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Imported {len(head.data.points)} Gaussians from {path.name}")
        return {"FINISHED"}


class FACESPLAT_OT_use_isolation(Operator):
    """Put one of the workspace's kept isolations in place of the head's Gaussians (no backend run)"""

    bl_idname = "facesplat.use_isolation"
    bl_label = "Use Kept Isolation"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="Isolation", subtype="FILE_PATH", options={"SKIP_SAVE"},
                             description="A kept isolation: <workspace>/isolations/head_t*_o*.ply")

    @classmethod
    def poll(cls, context):
        return jobs.active() is None and importer.run_objects(context.active_object)[1] is not None

    def execute(self, context):
        head = importer.run_objects(context.active_object)[1]
        path = Path(self.filepath)
        try:
            count = importer.replace_splats_from_file(context, head, path)
        except ValueError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        # The sliders show the settings of what is now in the scene.
        kept = next((k for k in isolations.kept_isolations(path.parent.parent) if k.path == path), None)
        if kept is not None:
            s = context.scene.facesplat
            s.threshold, s.min_opacity = kept.threshold, kept.min_opacity
        self.report({"INFO"}, f"{head.name}: {count} Gaussians from {path.name}")
        return {"FINISHED"}


class FACESPLAT_OT_batch_refresh(Operator):
    """Read the batch folder's batch.json again (a running batch rewrites it as captures end)"""

    bl_idname = "facesplat.batch_refresh"
    bl_label = "Refresh"

    def execute(self, context):
        s = context.scene.facesplat
        error = properties.load_batch(s)
        if error:
            self.report({"ERROR"}, error)
            return {"CANCELLED"}
        done = sum(item.importable for item in s.batch_captures)
        self.report({"INFO"}, f"{len(s.batch_captures)} captures, {done} ready to import")
        return {"FINISHED"}


class FACESPLAT_OT_batch_import(Operator):
    """Import the chosen finished capture of the batch as a finished Run is imported: the head and
    its cameras under one parent, linked to the capture's workspace (Re-isolate works on it)"""

    bl_idname = "facesplat.batch_import"
    bl_label = "Import Capture"
    bl_options = {"REGISTER", "UNDO"}

    capture: StringProperty(name="Capture", options={"SKIP_SAVE"},
                            description="The capture's name in batch.json (empty: the one chosen in the list)")

    def execute(self, context):
        s = context.scene.facesplat
        name = self.capture
        if not name and 0 <= s.batch_index < len(s.batch_captures):
            name = s.batch_captures[s.batch_index].name
        if not s.batch_dir.strip() or not name:
            self.report({"ERROR"}, "Choose a batch folder in the FaceSplat panel and a capture in its list")
            return {"CANCELLED"}
        try:
            # batch.json again, not the list: a running batch may have changed it since it was drawn.
            capture = batches.find_capture(abspath(s.batch_dir), name)
            why = capture.why_not_importable()
            if why:
                raise ValueError(why)
            head = import_finished_run(context, capture.workspace, capture.name)
        except ValueError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Imported {capture.name}: {len(head.data.points)} Gaussians and their cameras")
        return {"FINISHED"}


class _SplatExport(ExportHelper):
    """What the PLY and the HTML exports share (a mixin: Blender cannot subclass a registered operator)."""

    apply_transform: BoolProperty(
        name="Apply Transform", default=True,
        description="Bake the object's world transform into positions, rotations, scales and colours")
    file_format = "ply"

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
            path, count = exporter.export_splats(context, context.active_object, self.filepath, self.apply_transform,
                                                 self.file_format, f"Blender {bpy.app.version_string}, {_addon_name()}")
        except (exporter.ExportError, OSError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Exported {count} Gaussians to {path} (and its provenance, .json)")
        return {"FINISHED"}


class FACESPLAT_OT_export_ply(Operator, _SplatExport):
    """Export the active object's Gaussians as a standard 3DGS PLY (Inria layout)"""

    bl_idname = "facesplat.export_ply"
    bl_label = "Export 3D Gaussian Splat"

    filename_ext = ".ply"
    filter_glob: StringProperty(default="*.ply", options={"HIDDEN"})


class FACESPLAT_OT_export_html(Operator, _SplatExport):
    """Export the active object's Gaussians as one self-contained HTML page that shows them in a browser, offline"""

    bl_idname = "facesplat.export_html"
    bl_label = "Export FaceSplat Viewer"

    filename_ext = ".html"
    filter_glob: StringProperty(default="*.html", options={"HIDDEN"})
    file_format = "html"


def _addon_name() -> str:
    """'FaceSplat add-on <version>' from the extension's manifest (no bl_info in an extension)."""
    import re

    manifest = Path(__file__).resolve().parent / "blender_manifest.toml"
    if not manifest.exists():  # a dev checkout: the manifest sits beside the add-on folder
        manifest = manifest.parent.parent / "blender_manifest.toml"
    try:
        version = re.search(r'^version\s*=\s*"([^"]+)"', manifest.read_text(encoding="utf-8"), re.MULTILINE)
    except OSError:
        version = None
    return f"FaceSplat add-on {version.group(1) if version else 'unknown version'}"


class _HeadOperator:
    """Works on the head of the run the active object belongs to (head, its empty, a camera)."""

    @classmethod
    def poll(cls, context):
        return _active_head(context) is not None


def _active_head(context):
    return tools.active_head(context)


class FACESPLAT_OT_add_crop_box(_HeadOperator, Operator):
    """Add a box around the head's Gaussians: move, rotate and scale it, then Crop"""

    bl_idname = "facesplat.add_crop_box"
    bl_label = "Add Crop Box"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        box = tools.add_crop_box(context, _active_head(context))
        for ob in context.selected_objects:
            ob.select_set(False)
        box.select_set(True)
        context.view_layer.objects.active = box
        return {"FINISHED"}


class FACESPLAT_OT_crop(_HeadOperator, Operator):
    """Delete the head's Gaussians outside the crop box (or inside it); export writes the rest"""

    bl_idname = "facesplat.crop"
    bl_label = "Crop"
    bl_options = {"REGISTER", "UNDO"}

    keep_inside: BoolProperty(name="Keep Inside", default=True,
                              description="Keep the Gaussians inside the box (off: delete them)")

    def execute(self, context):
        head = _active_head(context)
        box = tools.crop_box_of(context, head)
        if box is None:
            self.report({"ERROR"}, f"No crop box for {head.name}: press Add Crop Box first")
            return {"CANCELLED"}
        removed = tools.crop(context, head, box, self.keep_inside)
        self.report({"INFO"}, f"{head.name}: {removed} Gaussians deleted, {len(head.data.points)} left")
        return {"FINISHED"}


class FACESPLAT_OT_frame_head(_HeadOperator, Operator):
    """Look at the face: through the run's most face-forward camera, and a front view of the head"""

    bl_idname = "facesplat.frame_head"
    bl_label = "Frame the Head"

    def execute(self, context):
        cam = tools.frame_head(context, _active_head(context))
        self.report({"INFO"}, f"Camera: {cam.name}" if cam is not None else "Front view (the run has no cameras)")
        return {"FINISHED"}


class FACESPLAT_OT_step_camera(_HeadOperator, Operator):
    """Look through the run's previous or next registered camera"""

    bl_idname = "facesplat.step_camera"
    bl_label = "Step Camera"

    step: IntProperty(name="Step", default=1, description="-1: previous camera, 1: next")

    def execute(self, context):
        cam = tools.step_camera(context, _active_head(context), self.step)
        if cam is None:
            self.report({"ERROR"}, "This run has no cameras")
            return {"CANCELLED"}
        return {"FINISHED"}


def menu_import(self, context):
    self.layout.operator(FACESPLAT_OT_import_ply.bl_idname, text="3D Gaussian Splat (.ply)")


def menu_export(self, context):
    self.layout.operator(FACESPLAT_OT_export_ply.bl_idname, text="3D Gaussian Splat (.ply)")
    self.layout.operator(FACESPLAT_OT_export_html.bl_idname, text="FaceSplat viewer (.html)")


classes = (FACESPLAT_OT_run, FACESPLAT_OT_reisolate, FACESPLAT_OT_install_backend, FACESPLAT_OT_cancel,
           FACESPLAT_OT_import_ply, FACESPLAT_OT_export_ply, FACESPLAT_OT_export_html, FACESPLAT_OT_use_isolation, FACESPLAT_OT_batch_refresh,
           FACESPLAT_OT_batch_import, FACESPLAT_OT_add_crop_box, FACESPLAT_OT_crop, FACESPLAT_OT_frame_head,
           FACESPLAT_OT_step_camera)
