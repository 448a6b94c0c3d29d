"""The extension zip from build.py in real Blender: install, enable, register, draw, unregister."""

import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from blender_worker import ADDON_MODULE, REPO, addon, reset_scene

sys.path.insert(0, str(REPO / "backend"))
from facesplat.core.cameras import CameraFrame, write_cameras_json  # noqa: E402
from facesplat.core.ply import Splats, write_splat_ply  # noqa: E402

OPERATORS = ["run", "reisolate", "install_backend", "cancel", "import_ply", "export_ply"]
PANELS = ["FACESPLAT_PT_main", "FACESPLAT_PT_capture", "FACESPLAT_PT_isolate", "FACESPLAT_PT_export"]


# ---- run inside Blender -------------------------------------------------------------------------

def w_registered():
    import bpy

    package = addon()
    return {
        "enabled": ADDON_MODULE in bpy.context.preferences.addons,
        "operators": [op for op in OPERATORS if hasattr(bpy.types, f"FACESPLAT_OT_{op}")],
        "panels": [p for p in PANELS if hasattr(bpy.types, p)],
        "properties": [hasattr(bpy.types.Scene, "facesplat"), hasattr(bpy.types.WindowManager, "facesplat_job"),
                       hasattr(bpy.types.Object, "facesplat")],
        "menus": [package.operators.menu_import in bpy.types.TOPBAR_MT_file_import._dyn_ui_initialize(),
                  package.operators.menu_export in bpy.types.TOPBAR_MT_file_export._dyn_ui_initialize()],
        "preferences": type(bpy.context.preferences.addons[ADDON_MODULE].preferences).__name__,
        "files": sorted(p.relative_to(Path(package.__file__).parent).as_posix()
                        for p in Path(package.__file__).parent.rglob("*") if p.is_file() and "__pycache__" not in p.parts),
        "heavy_modules": sorted(m for m in ("torch", "pycolmap", "cv2", "numba", "sklearn") if m in sys.modules),
    }


def w_disable_and_enable():
    import bpy

    bpy.ops.preferences.addon_disable(module=ADDON_MODULE)
    gone = {
        "enabled": ADDON_MODULE in bpy.context.preferences.addons,
        "classes": [name for name in [f"FACESPLAT_OT_{op}" for op in OPERATORS] + PANELS if hasattr(bpy.types, name)],
        "properties": [hasattr(bpy.types.Scene, "facesplat"), hasattr(bpy.types.WindowManager, "facesplat_job"),
                       hasattr(bpy.types.Object, "facesplat")],
        "handlers": [h.__name__ for h in bpy.app.handlers.load_pre if "facesplat" in getattr(h, "__module__", "")],
    }
    bpy.ops.preferences.addon_enable(module=ADDON_MODULE)
    return gone, w_registered()


class RecordingLayout:
    """Stands in for UILayout: checks every property, operator and icon a draw() names."""

    icons = None

    def __init__(self, log):
        import bpy

        self.log = log
        if RecordingLayout.icons is None:
            RecordingLayout.icons = {e.identifier for e in
                                     bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items}

    def _icon(self, icon):
        assert icon in self.icons, f"unknown icon {icon}"

    def row(self, **kw):
        return RecordingLayout(self.log)

    column = box = split = row

    def prop(self, data, name, **kw):
        assert name in data.bl_rna.properties, f"{type(data).__name__} has no property {name}"
        self.log.append(("prop", name))

    def label(self, text="", icon="NONE", **kw):
        self._icon(icon)
        self.log.append(("label", text))

    def operator(self, idname, text=None, icon="NONE", **kw):
        import bpy

        self._icon(icon)
        module, name = idname.split(".")
        getattr(getattr(bpy.ops, module), name).get_rna_type()  # raises if the operator does not exist
        self.log.append(("operator", idname))
        return SimpleNamespace()

    def progress(self, factor=0.0, type="BAR", text=""):
        assert 0.0 <= factor <= 1.0
        self.log.append(("progress", text))


class WithLayout:
    """`obj` with a recording layout (an AddonPreferences' own layout is read-only)."""

    def __init__(self, obj, layout):
        self._obj, self.layout = obj, layout

    def __getattr__(self, name):
        return getattr(self._obj, name)


def w_draw_panels(ply_path):
    """Draw every panel (and the preferences) idle, with a run's head selected, and mid-run."""
    import bpy

    def draw_all():
        log = []
        for name in PANELS:
            getattr(bpy.types, name).draw(SimpleNamespace(layout=RecordingLayout(log)), bpy.context)
        prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
        type(prefs).draw(WithLayout(prefs, RecordingLayout(log)), bpy.context)
        return log

    reset_scene()
    idle = draw_all()
    bpy.ops.facesplat.import_ply(filepath=str(ply_path))
    selected = draw_all()
    job = bpy.context.window_manager.facesplat_job
    job.running, job.title, job.stage, job.progress, job.message = True, "Run", "train (4/5) 42%", 0.42, "step 12/30"
    try:
        running = draw_all()
    finally:
        job.running = False
    polls = {op: getattr(bpy.ops.facesplat, op).poll() for op in OPERATORS}
    return idle, selected, running, polls


# ---- tests --------------------------------------------------------------------------------------

def test_zip_layout(extension_zip):
    names = zipfile.ZipFile(extension_zip).namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names
    assert {"core/ply.py", "core/cameras.py", "core/events.py", "core/transform.py"} <= set(names)
    assert {"backend_src/backend/pyproject.toml", "backend_src/backend/facesplat/cli.py", "backend_src/README.md"} <= set(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    manifest = zipfile.ZipFile(extension_zip).read("blender_manifest.toml").decode()
    assert 'id = "facesplat"' in manifest and 'blender_version_min = "4.2.0"' in manifest
    assert "network" not in manifest.split("[permissions]")[1]


def test_installs_enables_and_registers(blender):
    state = blender.call(w_registered)
    assert state["enabled"]
    assert state["operators"] == OPERATORS and state["panels"] == PANELS
    assert all(state["properties"]) and all(state["menus"])
    assert state["preferences"] == "FACESPLAT_AP_preferences"
    assert "core/transform.py" in state["files"] and "backend_src/backend/pyproject.toml" in state["files"]
    assert state["heavy_modules"] == [], "the add-on must not load the backend's libraries into Blender"


def test_panels_draw_in_every_state(blender, tmp_path):
    frames = [CameraFrame(0, "", 64, 48, 50.0, 50.0, 32.0, 24.0, np.eye(4))]
    write_cameras_json(tmp_path / "cameras.json", frames)
    n = 20
    write_splat_ply(tmp_path / "head.ply", Splats(np.zeros((n, 3)), np.zeros((n, 3)), np.zeros((n, 3, 3)),
                                                  np.zeros(n), np.zeros((n, 3)), np.tile([1.0, 0, 0, 0], (n, 1))))
    idle, selected, running, polls = blender.call(w_draw_panels, tmp_path / "head.ply")
    assert ("operator", "facesplat.run") in idle and ("prop", "video") in idle
    assert ("label", "Select an imported FaceSplat run") in idle
    assert ("label", "Backend not installed") in idle  # no backend in a fresh profile
    assert any("20 Gaussians" in text for _, text in selected)
    assert ("progress", "train (4/5) 42%") in running and ("operator", "facesplat.cancel") in running
    assert ("label", "step 12/30") in running
    assert polls["import_ply"] and polls["run"] and polls["export_ply"] and polls["reisolate"]
    assert not polls["cancel"]


def test_disables_cleanly_and_enables_again(blender):
    gone, again = blender.call(w_disable_and_enable)
    assert gone == {"enabled": False, "classes": [], "properties": [False, False, False], "handlers": []}
    assert again["enabled"] and again["operators"] == OPERATORS and all(again["menus"])


def w_install_backend(wheels):
    """Install Backend, offline, from a wheel folder that lacks what the backend needs."""
    import bpy

    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    prefs.wheels = str(wheels)
    try:
        bpy.ops.facesplat.install_backend()
        message = None
    except RuntimeError as e:
        message = str(e)
    preferences = addon("preferences")
    env = preferences.env_dir()
    return {"message": message, "env": str(env), "python": addon("runner").venv_python(env).is_file(),
            "log": preferences.install_log().read_text(errors="replace") if preferences.install_log().exists() else "",
            "running": bpy.context.window_manager.facesplat_job.running}


def test_install_backend_creates_the_environment_and_reports_pips_cause(blender, tmp_path):
    """The whole Install Backend chain, offline: the venv appears in the extension's user folder,
    and pip's failure (no wheels here) comes back as a one-line report, not a hang."""
    out = blender.call(w_install_backend, tmp_path, timeout=300)
    assert out["python"], f"no environment at {out['env']}: {out['message']}\n{out['log'][-2000:]}"
    assert Path(out["env"]).name == "backend_env" and "extensions" in Path(out["env"]).parts
    # pip's cause, not its closing note
    assert "No matching distribution" in out["message"] and "\n" not in out["message"].strip(), out["message"]
    assert not out["running"]
