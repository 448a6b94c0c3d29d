"""Sidebar panels (3D Viewport › Sidebar › FaceSplat): draw code only."""

from pathlib import Path

import bpy
from bpy.types import Panel, UIList

from . import exporter, importer, isolations, preferences, tools


class _FaceSplatPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "FaceSplat"


def _draw_job(layout, job) -> None:
    """Stage, percentage, bar, the backend's message, and Cancel."""
    box = layout.box()
    box.label(text=job.title, icon="SORTTIME")
    box.progress(factor=job.progress, type="BAR", text=job.stage)
    if job.message:
        box.label(text=job.message)
    box.operator("facesplat.cancel", icon="CANCEL")


class FACESPLAT_PT_main(_FaceSplatPanel, Panel):
    bl_label = "FaceSplat"

    def draw(self, context):
        layout = self.layout
        if preferences.backend_python(context) is None:
            col = layout.column()
            col.label(text="Backend not installed", icon="ERROR")
            col.operator("preferences.addon_show", text="Install Backend…", icon="PREFERENCES").module = __package__
        job = context.window_manager.facesplat_job
        if job.running:
            _draw_job(layout, job)


class FACESPLAT_PT_capture(_FaceSplatPanel, Panel):
    bl_parent_id = "FACESPLAT_PT_main"
    bl_label = "Capture"

    def draw(self, context):
        s = context.scene.facesplat
        layout = self.layout
        layout.use_property_split, layout.use_property_decorate = True, False
        layout.row().prop(s, "input_type", expand=True)
        layout.prop(s, "video" if s.input_type == "VIDEO" else "images", text="Path")
        layout.prop(s, "workspace")
        if not s.workspace.strip():
            where = "next to the .blend" if bpy.data.filepath else "in the temporary folder"
            layout.label(text=f"Default: facesplat/<input name> {where}", icon="INFO")
        layout.prop(s, "preset")
        col = layout.column(align=True)
        col.prop(s, "num_frames")
        col.prop(s, "height")
        col.prop(s, "num_iters")
        layout.prop(s, "silhouette_masks")
        layout.prop(s, "seed")
        layout.prop(s, "device")
        row = layout.row()
        row.scale_y = 1.5
        row.enabled = not context.window_manager.facesplat_job.running
        row.operator("facesplat.run", icon="PLAY")


STATUS_ICONS = {"done": "CHECKMARK", "failed": "ERROR", "interrupted": "PAUSE", "pending": "SORTTIME"}


class FACESPLAT_UL_batch_captures(UIList):
    """A batch's captures: name and status, then figures (greyed, with the cause, if not importable)."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0, flt_flag=0):
        row = layout.row(align=True)
        row.active = item.importable
        row.label(text=item.name, icon=STATUS_ICONS.get(item.status, "QUESTION"))
        row.label(text=item.figures if item.importable else (item.cause or item.status))


class FACESPLAT_PT_batch(_FaceSplatPanel, Panel):
    bl_parent_id = "FACESPLAT_PT_main"
    bl_label = "Batch"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        s = context.scene.facesplat
        layout = self.layout
        row = layout.row(align=True)
        row.prop(s, "batch_dir", text="")
        row.operator("facesplat.batch_refresh", text="", icon="FILE_REFRESH")
        if s.batch_error:
            layout.label(text=s.batch_error, icon="ERROR")
            return
        if not s.batch_captures:
            layout.label(text="Choose the --output-dir of a batch" if not s.batch_dir.strip() else "No captures",
                         icon="INFO")
            return
        layout.template_list("FACESPLAT_UL_batch_captures", "", s, "batch_captures", s, "batch_index", rows=4)
        chosen = s.batch_captures[s.batch_index] if s.batch_index < len(s.batch_captures) else None
        if chosen is not None and not chosen.importable:
            layout.label(text=chosen.cause or chosen.status, icon=STATUS_ICONS.get(chosen.status, "QUESTION"))
        row = layout.row()
        row.enabled = chosen is not None and chosen.importable
        row.operator("facesplat.batch_import", icon="IMPORT")


class FACESPLAT_PT_isolate(_FaceSplatPanel, Panel):
    bl_parent_id = "FACESPLAT_PT_main"
    bl_label = "Head Isolation"

    def draw(self, context):
        s = context.scene.facesplat
        layout = self.layout
        layout.use_property_split, layout.use_property_decorate = True, False
        layout.prop(s, "threshold", slider=True)
        layout.prop(s, "min_opacity", slider=True)
        root, head = importer.run_objects(context.active_object)
        if head is not None:
            layout.label(text=f"{head.name}: {len(head.data.points)} Gaussians", icon="POINTCLOUD_DATA")
            if head.facesplat.workspace:
                layout.label(text=f"Workspace: {Path(head.facesplat.workspace).name}", icon="FILE_FOLDER")
        else:
            layout.label(text="Select an imported FaceSplat run", icon="INFO")
        layout.operator("facesplat.reisolate", icon="FILE_REFRESH")
        kept = isolations.kept_isolations(head.facesplat.workspace) if head is not None else []
        if kept:  # every isolation the workspace kept: one click puts it back
            col = layout.column(align=True)
            col.label(text="Kept isolations", icon="FILE_FOLDER")
            source = Path(head.facesplat.source) if head.facesplat.source else None
            for isolation in kept:
                current = source == isolation.path
                op = col.operator("facesplat.use_isolation", text=isolation.label, depress=current,
                                  icon="CHECKMARK" if current else "IMPORT")
                op.filepath = str(isolation.path)


class FACESPLAT_PT_display(_FaceSplatPanel, Panel):
    bl_parent_id = "FACESPLAT_PT_main"
    bl_label = "Display & Tools"

    def draw(self, context):
        layout = self.layout
        head = tools.active_head(context)
        if head is None:
            layout.label(text="Select an imported FaceSplat head", icon="INFO")
            return
        layout.row().prop(head.facesplat, "display", expand=True)
        layout.prop(head.facesplat, "display_min_opacity", slider=True)
        layout.prop(context.scene.facesplat, "splat_3dgs_colours")
        row = layout.row(align=True)
        row.operator("facesplat.add_crop_box", icon="CUBE")
        row.operator("facesplat.crop", icon="X").keep_inside = True
        layout.operator("facesplat.frame_head", icon="USER")
        cams = tools.run_cameras(head)
        if cams:
            row = layout.row(align=True)
            row.operator("facesplat.step_camera", text="", icon="TRIA_LEFT").step = -1
            cam = context.scene.camera
            row.label(text=f"{cams.index(cam) + 1} / {len(cams)}: {cam.name}" if cam in cams
                      else f"{len(cams)} cameras")
            row.operator("facesplat.step_camera", text="", icon="TRIA_RIGHT").step = 1
            if cam in cams and cam.data.background_images:
                row = layout.row(align=True)
                row.prop(cam.data, "show_background_images", text="Frame")
                row.prop(cam.data.background_images[0], "alpha", slider=True)


class FACESPLAT_PT_export(_FaceSplatPanel, Panel):
    bl_parent_id = "FACESPLAT_PT_main"
    bl_label = "Export"

    def draw(self, context):
        layout = self.layout
        ob = context.active_object
        if exporter.has_splat_attributes(ob):
            layout.label(text=f"{ob.name}: transform is baked in", icon="OBJECT_DATA")
        else:
            layout.label(text="Select a Gaussian point cloud", icon="INFO")
        layout.operator("facesplat.export_ply", text="Export PLY…", icon="EXPORT")


classes = (FACESPLAT_UL_batch_captures, FACESPLAT_PT_main, FACESPLAT_PT_capture, FACESPLAT_PT_batch,
           FACESPLAT_PT_isolate, FACESPLAT_PT_display, FACESPLAT_PT_export)
