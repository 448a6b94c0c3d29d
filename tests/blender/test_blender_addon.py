"""The extension zip from build.py in real Blender: install, enable, register, draw, unregister."""

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from blender_worker import ADDON_MODULE, REPO, addon, reset_scene

sys.path.insert(0, str(REPO / "backend"))
from facesplat.core.cameras import CameraFrame, write_cameras_json  # noqa: E402
from facesplat.core.ply import Splats, write_splat_ply  # noqa: E402

OPERATORS = ["run", "reisolate", "install_backend", "cancel", "import_ply", "export_ply", "use_isolation",
             "batch_refresh", "batch_import"]
PANELS = ["FACESPLAT_PT_main", "FACESPLAT_PT_capture", "FACESPLAT_PT_batch", "FACESPLAT_PT_isolate",
          "FACESPLAT_PT_export"]


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
        props = SimpleNamespace()  # what the draw code sets on the button's operator
        self.log.append(("operator", idname))
        self.log.append(("button", idname, text, icon, props))
        return props

    def progress(self, factor=0.0, type="BAR", text=""):
        assert 0.0 <= factor <= 1.0
        self.log.append(("progress", text))

    def __setattr__(self, name, value):
        if name in ("active", "enabled"):  # greyed out / disabled: what follows in the log is drawn so
            self.log.append((name, value))
        object.__setattr__(self, name, value)

    def template_list(self, listtype_name, list_id, dataptr, propname, active_dataptr, active_propname, **kw):
        """Draws each item with the UIList's own draw_item, logged as ("item", name, its log)."""
        import bpy

        assert propname in dataptr.bl_rna.properties and active_propname in active_dataptr.bl_rna.properties
        ui_list = getattr(bpy.types, listtype_name)
        for index, item in enumerate(getattr(dataptr, propname)):
            item_log = []
            ui_list.draw_item(SimpleNamespace(layout_type="DEFAULT"), bpy.context, RecordingLayout(item_log), dataptr,
                              item, 0, active_dataptr, active_propname, index)
            self.log.append(("item", item.name, item_log))


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


def w_kept_isolations(head_path):
    """The Head Isolation panel lists the workspace's kept isolations; its button puts one back."""
    import bpy

    def isolation_buttons():
        log = []
        bpy.types.FACESPLAT_PT_isolate.draw(SimpleNamespace(layout=RecordingLayout(log)), bpy.context)
        return [(text, icon, vars(props)) for kind, *rest in log if kind == "button"
                for idname, text, icon, props in [rest] if idname == "facesplat.use_isolation"]

    reset_scene()
    bpy.ops.facesplat.import_ply(filepath=str(head_path))
    head = bpy.context.active_object
    names = (head.name, head.data.name)
    listed = isolation_buttons()
    chosen = next(props["filepath"] for text, icon, props in listed if "0.60" in text)
    result = bpy.ops.facesplat.use_isolation(filepath=chosen)
    after = {"result": sorted(result), "names": (head.name, head.data.name), "points": len(head.data.points),
             "source": head.facesplat.source, "threshold": round(bpy.context.scene.facesplat.threshold, 4),
             "min_opacity": round(bpy.context.scene.facesplat.min_opacity, 4), "listed": isolation_buttons()}
    bad = next(props["filepath"] for text, icon, props in listed if "0.90" in text)
    try:
        bpy.ops.facesplat.use_isolation(filepath=bad)
        bad_message = None
    except RuntimeError as e:
        bad_message = str(e)
    after_bad = (len(head.data.points), head.facesplat.source)
    return names, listed, after, bad_message, after_bad


# ---- tests --------------------------------------------------------------------------------------

def test_zip_layout(extension_zip):
    names = zipfile.ZipFile(extension_zip).namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names
    assert {"core/ply.py", "core/cameras.py", "core/events.py", "core/transform.py"} <= set(names)
    assert {"backend_src/backend/pyproject.toml", "backend_src/backend/facesplat/cli.py", "backend_src/README.md"} <= set(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    manifest = tomllib.loads(zipfile.ZipFile(extension_zip).read("blender_manifest.toml").decode())
    assert manifest["id"] == "facesplat" and manifest["blender_version_min"] == "4.2.0"
    # Honest permissions: Install Backend runs pip, which downloads the backend.
    assert set(manifest["permissions"]) == {"files", "network"}
    assert "pip" in manifest["permissions"]["network"]


def blender_ext_script() -> Path:
    """Blender's own extension tool (the one `blender --command extension` runs), shipped inside bpy."""
    import importlib.util

    bpy_dir = Path(importlib.util.find_spec("bpy").submodule_search_locations[0])
    found = sorted(bpy_dir.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    assert found, f"no bl_pkg/cli/blender_ext.py under {bpy_dir}"
    return found[0]


def test_the_zip_passes_blenders_strict_validator(extension_zip):
    """What `blender --command extension validate` and the extensions platform check."""
    result = subprocess.run([sys.executable, str(blender_ext_script()), "validate", str(extension_zip)],
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Success" in output and "ERROR" not in output, output


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
    assert any("20 Gaussians" in entry[1] for entry in selected if entry[0] == "label")
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


def test_kept_isolations_are_offered_and_one_click_puts_one_back(blender, tmp_path):
    ws = tmp_path / "ws"
    write_cameras_json(ws / "cameras.json", [CameraFrame(0, "", 64, 48, 50.0, 50.0, 32.0, 24.0, np.eye(4))])
    write_splat_ply(ws / "head.ply", random_splats(30))
    kept = {"head_t0.30_o0.05.ply": 30, "head_t0.60_o0.05.ply": 12, "head_t0.90_o0.05.ply": 5}
    for name, n in kept.items():
        write_splat_ply(ws / "isolations" / name, random_splats(n))
    bad = ws / "isolations" / "head_t0.90_o0.05.ply"
    bad.write_bytes(bad.read_bytes()[:-40])  # truncated
    names, listed, after, bad_message, after_bad = blender.call(w_kept_isolations, ws / "head.ply")
    assert [text for text, _, _ in listed] == [f"Threshold {t} · Min Opacity 0.05" for t in ("0.30", "0.60", "0.90")]
    assert [props["filepath"] for _, _, props in listed] == [str(ws / "isolations" / name) for name in kept]
    assert after["result"] == ["FINISHED"] and after["names"] == names and after["points"] == 12
    assert after["source"] == str(ws / "isolations" / "head_t0.60_o0.05.ply")
    assert (after["threshold"], after["min_opacity"]) == (0.6, 0.05)  # the sliders show what is in the scene
    assert [icon for _, icon, _ in after["listed"]] == ["IMPORT", "CHECKMARK", "IMPORT"]
    # a bad kept file: a clear report, the head as it was
    assert bad_message and "head_t0.90_o0.05.ply" in bad_message and "Traceback" not in bad_message
    assert after_bad == (12, after["source"])


def random_splats(n, seed=0):
    rng = np.random.default_rng(seed + n)
    return Splats(rng.normal(0, 0.1, (n, 3)), rng.normal(size=(n, 3)), rng.normal(0, 0.3, (n, 3, 3)),
                  rng.normal(size=n), rng.normal(-5, 1, (n, 3)), rng.normal(size=(n, 4)))
