"""FaceSplat for Blender: run the FaceSplat backend from the sidebar, import the head Gaussians
and the cameras that saw them, re-isolate, export a standard 3DGS PLY.

Layout: properties (Scene/WindowManager/Object data), preferences, operators, panels (bpy glue);
runner (Blender-free child-process control); importer / exporter (bpy glue over core/);
core/ (numpy only, vendored from backend/facesplat/core by build.py).
"""

import atexit

import bpy

from . import operators, panels, preferences, properties

classes = (*properties.classes, *preferences.classes, *operators.classes, *panels.classes)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    properties.register_pointers()
    bpy.types.TOPBAR_MT_file_import.append(operators.menu_import)
    bpy.types.TOPBAR_MT_file_export.append(operators.menu_export)
    bpy.app.handlers.load_pre.append(operators.stop_active_job)
    atexit.register(operators.stop_active_job)


def unregister():
    operators.stop_active_job()
    atexit.unregister(operators.stop_active_job)
    bpy.app.handlers.load_pre.remove(operators.stop_active_job)
    bpy.types.TOPBAR_MT_file_export.remove(operators.menu_export)
    bpy.types.TOPBAR_MT_file_import.remove(operators.menu_import)
    properties.unregister_pointers()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
