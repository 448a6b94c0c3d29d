"""Import boundaries: core is numpy-only, runner is Blender-free, the add-on never loads the backend's
libraries (torch above all) into Blender's process."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pycolmap", "cv2", "gsplat", "numba", "sklearn", "scipy", "tqdm")
BLENDER = ("bpy", "mathutils", "bpy_extras", "gpu")

# Makes the listed top-level packages unimportable, as if they were not installed.
BLOCKER = """
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, Blocker())
"""


def run_isolated(blocked, body: str) -> subprocess.CompletedProcess:
    code = f"BLOCKED = {tuple(blocked)!r}\n" + BLOCKER + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def _sync_core():
    subprocess.run([sys.executable, "-c", "import build; build.sync_core()"], cwd=REPO, check=True)


def test_core_imports_without_torch_or_blender():
    result = run_isolated(HEAVY + BLENDER, f"""
        sys.path.insert(0, {str(REPO / 'backend')!r})
        from facesplat.core import cameras, events, formats, ply, transform, viewer_html
        import facesplat.core as core
        loaded = sorted(m.split(".")[0] for m in sys.modules)
        assert not set(loaded) & set(BLOCKED), loaded
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_runner_is_blender_free():
    _sync_core()
    result = run_isolated(HEAVY + BLENDER, f"""
        import types
        package = types.ModuleType("facesplat_blender")
        package.__path__ = [{str(REPO / 'facesplat_blender')!r}]
        sys.modules["facesplat_blender"] = package  # without __init__, which registers with Blender
        import facesplat_blender.runner
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((REPO / "facesplat_blender").glob("*.py")), ids=lambda p: p.name)
def test_addon_sources_import_nothing_heavy(path):
    """Every import, even one inside a function: the add-on reaches the backend only as a process."""
    assert not _imports(path) & set(HEAVY + ("facesplat",)), _imports(path)


def test_addon_registers_with_torch_blocked():
    pytest.importorskip("bpy")
    _sync_core()
    result = run_isolated(HEAVY, f"""
        sys.path.insert(0, {str(REPO)!r})
        import bpy
        import facesplat_blender
        facesplat_blender.register()
        facesplat_blender.unregister()
        heavy = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        assert not heavy, heavy
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
