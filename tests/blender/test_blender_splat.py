"""The splat display and the artist tools in real Blender (bpy 5.0.1): an EEVEE render of the
imported head against the backend's rasterizer from the same camera, the display modes and the
opacity threshold, crop box and export, frame the head, the camera strip.

Functions named w_* run inside the module's Blender worker (see blender_worker.py). EEVEE renders
headless through Mesa (llvmpipe) with EGL_PLATFORM=surfaceless.
"""

import sys

import numpy as np
import pytest

from blender_worker import REPO, BlenderWorker, addon, reset_scene

sys.path[:0] = [str(REPO / "backend"), str(REPO / "benchmarks")]
from blender_splat import (HEAD_SMALL, backend_render, face_camera, look_at_camera, psnr_inside,  # noqa: E402
                           read_png, w_render, write_workspace)
from facesplat.core.cameras import write_cameras_json  # noqa: E402
from facesplat.core.ply import Splats, read_splat_ply, write_splat_ply  # noqa: E402

# Measured 2026-12-02 (bpy 5.0.1, EEVEE through llvmpipe, 160 px, 32 samples): see docs/blender.md.
PSNR_FLOOR_DB = 27.0


@pytest.fixture(scope="module")
def blender(extension_zip, tmp_path_factory):
    worker = BlenderWorker(tmp_path_factory.mktemp("blender_home"), extension_zip, {"EGL_PLATFORM": "surfaceless"})
    yield worker
    worker.close()


def random_splats(n, seed=0):
    rng = np.random.default_rng(seed)
    return Splats(means=rng.uniform(-1, 1, size=(n, 3)), sh0=rng.normal(size=(n, 3)), shN=np.zeros((n, 0, 3)),
                  opacities=rng.normal(0, 2, size=n), scales=rng.normal(-4, 0.5, size=(n, 3)),
                  quats=rng.normal(size=(n, 4)))


# ---- run inside Blender -------------------------------------------------------------------------

def _evaluated(head):
    """(points in the evaluated point cloud, [instance 3x3 matrices]) of the head."""
    import bpy

    depsgraph = bpy.context.evaluated_depsgraph_get()
    evaluated = head.evaluated_get(depsgraph)
    points = len(evaluated.data.points) if evaluated.data is not None else 0
    matrices = [np.array(inst.matrix_world)[:3, :3] for inst in depsgraph.object_instances
                if inst.is_instance and inst.parent is not None and inst.parent.original == head]
    return points, matrices


def w_display_modes(path, out_path, threshold):
    import bpy

    reset_scene()
    bpy.ops.facesplat.import_ply(filepath=str(path))
    head = bpy.context.active_object
    seen = {"points": _evaluated(head)}
    head.facesplat.display = "SPLATS"
    points, matrices = _evaluated(head)
    seen["splats"] = (points, [np.linalg.norm(m, axis=0) for m in matrices])
    head.facesplat.display_min_opacity = threshold
    seen["splats_thresholded"] = len(_evaluated(head)[1])
    head.facesplat.display = "POINTS"
    seen["points_thresholded"] = _evaluated(head)[0]
    bpy.ops.facesplat.export_ply(filepath=str(out_path), apply_transform=False)
    seen["material"] = addon("display").SPLAT_MATERIAL_NAME in bpy.data.materials
    return seen


def w_crop(path, out_path, head_location, box_location, box_scale, keep_inside):
    import bpy

    reset_scene()
    bpy.ops.facesplat.import_ply(filepath=str(path))
    head = bpy.context.active_object
    head.location = head_location
    head.facesplat.display = "SPLATS"  # cropping works on the stored Gaussians, whatever the display
    bpy.context.view_layer.update()
    assert bpy.ops.facesplat.add_crop_box() == {"FINISHED"}
    box = bpy.context.active_object
    bpy.ops.facesplat.crop(keep_inside=True)  # the new box holds every Gaussian: nothing goes
    untouched = len(head.data.points)
    box.location, box.rotation_euler, box.scale = box_location, (0, 0, 0), box_scale
    bpy.context.view_layer.update()
    assert bpy.ops.facesplat.crop(keep_inside=keep_inside) == {"FINISHED"}
    head_name = head.name
    bpy.ops.object.select_all(action="DESELECT")
    bpy.context.view_layer.objects.active = head
    bpy.ops.facesplat.export_ply(filepath=str(out_path), apply_transform=False)
    return untouched, len(head.data.points), box.facesplat.role, head_name


def w_cameras(path):
    import bpy

    reset_scene()
    bpy.ops.facesplat.import_ply(filepath=str(path))
    scene = bpy.context.scene
    assert bpy.ops.facesplat.frame_head() == {"FINISHED"}
    framed = scene.camera.facesplat.frame_index
    steps = []
    for step in (1, 1, 1, -1, -1):
        assert bpy.ops.facesplat.step_camera(step=step) == {"FINISHED"}
        steps.append(scene.camera.facesplat.frame_index)
    return framed, steps


# ---- tests --------------------------------------------------------------------------------------

def test_splat_render_matches_the_backend_rasterizer(blender, tmp_path):
    """The imported head in splat mode, rendered by EEVEE through a camera imported from
    cameras.json, against the backend's rasterizer from the same camera."""
    pytest.importorskip("torch")  # the backend's rasterizer (scripts/test_blender_versions.sh has no torch)
    splats, frame = read_splat_ply(HEAD_SMALL), face_camera(160, 160)
    ws = write_workspace(tmp_path / "ws", splats, frame)
    info = blender.call(w_render, str(ws), str(tmp_path / "blender.png"), 32, True, timeout=900)
    assert info["instances"] == len(splats) and info["view_transform"] == "Raw"
    reference, alpha = backend_render(splats, frame)
    rendered = read_png(tmp_path / "blender.png")
    assert (alpha > 0.5).sum() > 2000  # the head fills a good part of the frame
    measured = psnr_inside(reference, rendered, alpha)
    print(f"PSNR inside the head: {measured:.2f} dB (render {info['render_s']:.1f} s)")
    assert measured >= PSNR_FLOOR_DB
    # The same render with the head moved off-centre is far off: the measure can fail.
    shifted = np.roll(rendered, 12, axis=1)
    assert psnr_inside(reference, shifted, alpha) < PSNR_FLOOR_DB - 5


def test_display_modes_and_opacity_threshold(blender, tmp_path):
    splats = random_splats(300)
    write_splat_ply(tmp_path / "in.ply", splats)
    seen = blender.call(w_display_modes, tmp_path / "in.ply", tmp_path / "out.ply", 0.6)
    assert seen["points"] == (300, [])  # points mode: the point cloud as it is
    points, axes = seen["splats"]
    assert points == 0 and len(axes) == 300  # splats: one ellipsoid instance per Gaussian, no points
    # Each instance is rotated and scaled by its Gaussian's exp(scale): the sorted axis lengths match.
    expected = np.sort(np.sort(np.exp(splats.scales), axis=1), axis=0)
    np.testing.assert_allclose(np.sort(np.sort(np.array(axes), axis=1), axis=0), expected, rtol=1e-4)
    visible = int((1 / (1 + np.exp(-splats.opacities)) >= 0.6).sum())
    assert 0 < visible < 300
    assert seen["splats_thresholded"] == visible and seen["points_thresholded"] == visible
    assert len(read_splat_ply(tmp_path / "out.ply")) == 300  # hiding is display only: export keeps all
    assert seen["material"]


@pytest.mark.parametrize("keep_inside", [True, False])
def test_crop_box_deletes_gaussians_and_export_leaves_them_out(blender, tmp_path, keep_inside):
    splats = random_splats(400, seed=3)
    write_splat_ply(tmp_path / "in.ply", splats)
    # The head is moved +0.2 in x; the box covers world x in [0, 1] (all y, z).
    untouched, left, role, _ = blender.call(w_crop, tmp_path / "in.ply", tmp_path / "out.ply", (0.2, 0, 0),
                                            (0.5, 0, 0), (0.5, 5, 5), keep_inside)
    world_x = splats.means[:, 0] + 0.2
    inside = (world_x >= 0) & (world_x <= 1)
    keep = inside if keep_inside else ~inside
    assert untouched == 400 and role == "CROP"
    assert left == keep.sum() and 0 < left < 400
    out = read_splat_ply(tmp_path / "out.ply")
    assert len(out) == keep.sum()
    order_out, order_in = np.lexsort(out.means.T), np.lexsort(splats.means[keep].T)
    np.testing.assert_allclose(out.means[order_out], splats.means[keep][order_in], atol=1e-6)
    np.testing.assert_allclose(out.opacities[order_out], splats.opacities[keep][order_in], atol=1e-6)


def test_frame_head_and_camera_strip(blender, tmp_path):
    write_splat_ply(tmp_path / "head.ply", random_splats(50))
    # Frame order 0: from the side (+X), 1: behind (+Y), 2: in front of the face (-Y, a little up).
    eyes = [(0.5, 0, 0), (0, 0.5, 0), (0.05, -0.5, 0.1)]
    write_cameras_json(tmp_path / "cameras.json", [look_at_camera(e, 64, 48, index=i) for i, e in enumerate(eyes)])
    framed, steps = blender.call(w_cameras, tmp_path / "head.ply")
    assert framed == 2
    assert steps == [0, 1, 2, 1, 0]  # next wraps around to the first; previous goes back
