"""Add-on preferences: which Python runs the backend, and installing it into its own environment."""

import sys
from pathlib import Path

import bpy
from bpy.props import EnumProperty, StringProperty
from bpy.types import AddonPreferences

from . import jobs, runner
from .properties import DEFAULT_DEVICE, DEVICES

ENV_FOLDER = "backend_env"


def get(context=None) -> "FACESPLAT_AP_preferences":
    return (context or bpy.context).preferences.addons[__package__].preferences


def user_folder(create: bool = False) -> Path | None:
    """The extension's user folder (outside the add-on, kept across updates); None when the
    add-on was not installed as an extension."""
    try:
        return Path(bpy.utils.extension_path_user(__package__, create=create))
    except (ValueError, AttributeError):
        return None


def env_dir() -> Path | None:
    folder = user_folder()
    return folder / ENV_FOLDER if folder else None


def install_log() -> Path | None:
    folder = user_folder()
    return folder / "install.log" if folder else None


def bundled_backend() -> Path:
    """backend_src/backend inside the installed extension (see build.py)."""
    return Path(__file__).resolve().parent / "backend_src" / "backend"


def backend_python(context=None) -> Path | None:
    """The interpreter that runs `python -m facesplat`: the preference if set, else the
    environment made by Install Backend, else None."""
    chosen = get(context).python.strip()
    if chosen:
        path = Path(bpy.path.abspath(chosen))
        return path if path.is_file() else None
    env = env_dir()
    if env and runner.venv_python(env).is_file():
        return runner.venv_python(env)
    return None


class FACESPLAT_AP_preferences(AddonPreferences):
    bl_idname = __package__

    python: StringProperty(
        name="Backend Python", subtype="FILE_PATH",
        description="Python interpreter with the facesplat backend installed. Empty: the environment "
                    "created by Install Backend")
    device: EnumProperty(name="Default Device", items=DEVICES, default=DEFAULT_DEVICE,
                         description="Compute device for runs whose panel says Default")
    wheels: StringProperty(
        name="Offline Wheels", subtype="DIR_PATH",
        description="Optional folder of wheels (torch, pycolmap, ...). When set, Install Backend uses only "
                    "these files and never goes online")

    def draw(self, context):
        layout = self.layout
        python = backend_python(context)
        col = layout.column()
        col.prop(self, "python")
        if python:
            col.label(text=f"Backend: {python}", icon="CHECKMARK")
        else:
            col.label(text="No backend yet: press Install Backend (or set Backend Python)", icon="ERROR")
        col.prop(self, "device")

        box = layout.box()
        box.label(text="Install Backend", icon="PACKAGE")
        box.label(text=f"Creates {env_dir() or '(extension user folder)'} with {Path(sys.executable).name} "
                       "and pip-installs the bundled backend (torch, pycolmap, OpenCV: a few GB).")
        box.prop(self, "wheels")
        job = jobs.active()
        if job is not None and job.kind == "install":
            row = box.row()
            row.progress(factor=job.fraction(), text=job.status_text())
            row.operator("facesplat.cancel", text="", icon="CANCEL")
        else:
            box.operator("facesplat.install_backend", icon="IMPORT")
        lines = runner.tail_lines(install_log(), 8) if install_log() else []
        if lines:  # pip's output, as it comes
            out = box.column(align=True)
            out.scale_y = 0.7
            for line in lines:
                out.label(text=line[:160])


classes = (FACESPLAT_AP_preferences,)
