"""FaceSplat for Blender: run the FaceSplat backend from the sidebar, import the head Gaussians
and the cameras that saw them, re-isolate, export a standard 3DGS PLY.

Layout:
- bpy glue: properties (Scene/WindowManager/Object data), preferences, operators, panels,
  job_factories (what each backend button runs), importer / exporter (over core/);
- Blender-free: jobs (the backend job, the active job), runner (child processes),
  isolations (a workspace's kept isolations), batches (a batch folder's batch.json);
- core/ (numpy only, vendored from backend/facesplat/core by build.py).
"""

import atexit

import bpy

from . import jobs, operators, panels, preferences, properties

classes = (*properties.classes, *preferences.classes, *operators.classes, *panels.classes)


@bpy.app.handlers.persistent  # stays in load_pre across file loads
def stop_backend(*_args) -> None:
    """Stop the backend when Blender loads another file (and, via atexit, when it quits)."""
    jobs.stop_active()


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    properties.register_pointers()
    bpy.types.TOPBAR_MT_file_import.append(operators.menu_import)
    bpy.types.TOPBAR_MT_file_export.append(operators.menu_export)
    bpy.app.handlers.load_pre.append(stop_backend)
    atexit.register(jobs.stop_active)


def unregister():
    jobs.stop_active()
    atexit.unregister(jobs.stop_active)
    bpy.app.handlers.load_pre.remove(stop_backend)
    bpy.types.TOPBAR_MT_file_export.remove(operators.menu_export)
    bpy.types.TOPBAR_MT_file_import.remove(operators.menu_import)
    properties.unregister_pointers()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
