"""File › Export in real Blender (bpy 5.0.1): the provenance sidecar beside every export, with the
object's transform, and the self-contained HTML viewer ("FaceSplat viewer (.html)")."""

import hashlib
import json
import math
import sys
import zipfile

import jsonschema
import numpy as np

from blender_worker import REPO, addon, reset_scene

sys.path.insert(0, str(REPO / "backend"))
from facesplat.core.formats import read_splats  # noqa: E402
from facesplat.core.ply import read_splat_ply  # noqa: E402
from facesplat.core.provenance import sidecar_path  # noqa: E402

HEAD = REPO / "tests" / "data" / "head_small.ply"
SCHEMA = json.loads((REPO / "docs" / "provenance.schema.json").read_text())


def w_export_ply_and_html(path_in, out_ply, out_html, location, rotation):
    import bpy

    reset_scene()
    bpy.ops.facesplat.import_ply(filepath=str(path_in))
    ob = bpy.context.active_object
    ob.location, ob.rotation_euler = location, rotation
    bpy.context.view_layer.update()
    assert bpy.ops.facesplat.export_ply(filepath=str(out_ply)) == {"FINISHED"}
    assert bpy.ops.facesplat.export_html(filepath=str(out_html)) == {"FINISHED"}
    menu = [f.__name__ for f in bpy.types.TOPBAR_MT_file_export._dyn_ui_initialize()]
    return [list(row) for row in ob.matrix_world], menu, "torch" in sys.modules


def test_zip_ships_the_viewer_script(extension_zip):
    names = zipfile.ZipFile(extension_zip).namelist()
    assert {"core/viewer_html.py", "core/provenance.py", "core/web/viewer.min.js", "core/web/LICENSES.txt"} <= set(names)


def test_export_writes_sidecars_with_the_transform_and_a_viewer(blender, tmp_path):
    out_ply, out_html = tmp_path / "moved.ply", tmp_path / "moved.html"
    matrix, menu, torch_loaded = blender.call(w_export_ply_and_html, HEAD, out_ply, out_html,
                                              (0.1, -0.2, 0.3), (0, 0, math.pi / 2))
    assert "menu_export" in menu and not torch_loaded
    for output, file_format in ((out_ply, "3DGS PLY"), (out_html, "HTML viewer")):
        assert sidecar_path(output).name == {"moved.ply": "moved.json", "moved.html": "moved.html.json"}[output.name]
        sidecar = json.loads(sidecar_path(output).read_text())
        jsonschema.validate(sidecar, SCHEMA)
        assert file_format in sidecar["file"]["format"]
        assert sidecar["file"]["sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()
        assert sidecar["file"]["size"] == output.stat().st_size and sidecar["file"]["sh_degree"] == 1
        assert sidecar["export"]["program"].startswith("Blender 5.0") and "FaceSplat add-on" in sidecar["export"]["program"]
        transform = sidecar["export"]["transform"]
        assert transform["applied"] is True
        np.testing.assert_allclose(transform["matrix_world"], matrix, atol=1e-7)
        np.testing.assert_allclose(np.array(transform["matrix_world"])[:3, 3], [0.1, -0.2, 0.3], atol=1e-7)
    # The page holds the same moved Gaussians as the PLY (within SPZ's quantization).
    moved, page = read_splat_ply(out_ply), read_splats(out_html)
    assert len(page) == len(moved) == len(read_splat_ply(HEAD))
    assert np.abs(page.means - moved.means).max() < 1e-3
    assert np.abs(moved.means - read_splat_ply(HEAD).means).max() > 0.05  # the transform was applied


def test_export_without_a_transform_records_none(blender, tmp_path):
    blender.call(w_export_ply_and_html, HEAD, tmp_path / "a.ply", tmp_path / "a.html", (0, 0, 0), (0, 0, 0))
    sidecar = json.loads((tmp_path / "a.json").read_text())
    jsonschema.validate(sidecar, SCHEMA)
    assert "transform" not in sidecar["export"]
    assert read_splat_ply(tmp_path / "a.ply").means.tobytes() == read_splat_ply(HEAD).means.tobytes()
