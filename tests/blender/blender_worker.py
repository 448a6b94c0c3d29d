"""Helpers for the Blender tests: one bpy process per test module, and the add-on without Blender.

bpy is one Blender per process, with global state, and it reads the user profile from HOME. So
each test module gets a fresh worker process (HOME in a temporary folder, the extension zip
from build.py installed and enabled), and tests send it top-level functions to run there.
"""

from __future__ import annotations

import importlib
import importlib.util
import multiprocessing
import os
import sys
import types
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ADDON_MODULE = "bl_ext.user_default.facesplat"


def _build_module():
    """The repository's build.py, imported."""
    name = "facesplat_build_script"  # not "build": that is also PyPA's package name
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "build.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def build_extension(output_dir: Path) -> Path:
    return _build_module().build_zip(Path(output_dir))


def import_addon_module(name: str):
    """A Blender-free module of the add-on (runner) from the checkout, without running the
    package's __init__ (which imports bpy). facesplat_blender/core is refreshed first."""
    _build_module().sync_core()
    if "facesplat_blender" not in sys.modules:
        package = types.ModuleType("facesplat_blender")
        package.__path__ = [str(REPO / "facesplat_blender")]
        sys.modules["facesplat_blender"] = package
    return importlib.import_module(f"facesplat_blender.{name}")


def _start_blender(home: str, zip_path: str, env: dict) -> None:
    os.environ.update(env)
    os.environ["HOME"] = home  # before bpy reads the user profile
    import bpy

    result = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                      enable_on_install=True)
    assert result == {"FINISHED"}, result


class BlenderWorker:
    """A process with bpy and the installed extension; `call(fn, *args)` runs fn there."""

    def __init__(self, home: Path, zip_path: Path, env: dict | None = None):
        home.mkdir(parents=True, exist_ok=True)
        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_start_blender, initargs=(str(home), str(zip_path), env or {}))

    def call(self, fn, *args, timeout: float = 600):
        return self.pool.submit(fn, *args).result(timeout=timeout)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# --- used inside the worker -------------------------------------------------------------------

def addon(name: str | None = None):
    """The installed add-on package, or one of its modules."""
    return sys.modules[ADDON_MODULE if name is None else f"{ADDON_MODULE}.{name}"]


def scene_snapshot() -> dict:
    """Everything an import or a run could add or change, by name."""
    import bpy

    kinds = ("objects", "meshes", "pointclouds", "cameras", "materials", "collections", "images")
    snap = {kind: sorted(x.name for x in getattr(bpy.data, kind)) for kind in kinds}
    render = bpy.context.scene.render
    snap["render"] = (render.resolution_x, render.resolution_y, render.pixel_aspect_x, render.pixel_aspect_y)
    return snap


def reset_scene() -> None:
    import bpy

    for kind in ("objects", "meshes", "pointclouds", "cameras", "materials", "collections", "images"):
        collection = getattr(bpy.data, kind)
        for datablock in list(collection):
            collection.remove(datablock)
    bpy.context.view_layer.update()


def process_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc (Linux)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members
