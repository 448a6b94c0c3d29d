"""Sidebar panels (3D Viewport › Sidebar › FaceSplat): draw code only."""

from pathlib import Path

import bpy
from bpy.types import Panel

from . import exporter, importer, isolations, preferences


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


classes = (FACESPLAT_PT_main, FACESPLAT_PT_capture, FACESPLAT_PT_isolate, FACESPLAT_PT_export)
