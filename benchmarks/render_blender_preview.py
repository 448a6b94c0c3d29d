"""Render an imported FaceSplat run (head Gaussians + the cameras that saw them) with Cycles, headless.

    .venv/bin/python benchmarks/render_blender_preview.py --workspace runs/lps_orbit160/workspace \
        --output docs/blender_import.png

The run is imported through the installed extension exactly as File › Import does (head.ply and
cameras.json of the workspace). Blender cameras do not show up in renders, so for the picture each
one is drawn as a thin frustum with its frame on the far plane. Without --workspace, a stand-in
workspace is made from the sample capture: Gaussians sampled on the reference head mesh
(shaded skin colour, cut at the neck), its true cameras and its video frames. Say so in captions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "backend")]
CAPTURE = REPO / "samples" / "lps_orbit160"


# ---- stand-in workspace from the sample capture's mesh (no backend needed) ---------------------

def read_ascii_mesh(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [V, 3] and triangles [F, 3] of an ASCII PLY with x y z and triangle faces."""
    lines = path.read_text().splitlines()
    end = lines.index("end_header")
    counts = {w[1]: int(w[2]) for w in (ln.split() for ln in lines[:end]) if w[0] == "element"}
    v0 = end + 1
    verts = np.array([ln.split()[:3] for ln in lines[v0:v0 + counts["vertex"]]], dtype=np.float64)
    faces = np.array([ln.split()[1:4] for ln in lines[v0 + counts["vertex"]:v0 + counts["vertex"] + counts["face"]]],
                     dtype=np.int64)
    return verts, faces


def stand_in_workspace(ws: Path, n: int = 80_000, camera_step: int = 6) -> Path:
    import cv2

    from facesplat.core.cameras import CameraFrame, write_cameras_json
    from facesplat.core.ply import Splats, rgb_to_sh0, write_splat_ply

    verts, faces = read_ascii_mesh(CAPTURE / "head_mesh.ply")
    scene = json.loads((CAPTURE / "scene.json").read_text())
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    cross = np.cross(b - a, c - a)
    area = 0.5 * np.linalg.norm(cross, axis=1)
    rng = np.random.default_rng(0)
    tri = rng.choice(len(faces), size=n, p=area / area.sum())  # area-weighted surface samples
    r1, r2 = np.sqrt(rng.random(n))[:, None], rng.random(n)[:, None]
    points = (1 - r1) * a[tri] + r1 * (1 - r2) * b[tri] + r1 * r2 * c[tri]
    normals = cross[tri] / np.linalg.norm(cross[tri], axis=1, keepdims=True)
    normals *= np.sign(np.sum(normals * (points - verts.mean(axis=0)), axis=1, keepdims=True))  # outward
    keep = points[:, 2] > scene["neck_cut_z"]
    points, normals = points[keep], normals[keep]
    light = np.array([-0.4, -0.8, 0.45]) / np.linalg.norm([-0.4, -0.8, 0.45])
    shade = 0.3 + 0.7 * np.clip(normals @ light, 0, 1)[:, None]
    rgb = np.array([0.80, 0.60, 0.50]) * shade
    sigma = 1.2 * np.sqrt(area.sum() / n)  # a little more than the sample spacing: no holes
    m = len(points)
    write_splat_ply(ws / "head.ply", Splats(
        means=points, sh0=rgb_to_sh0(rgb), shN=np.zeros((m, 3, 3)), opacities=np.full(m, 4.0),
        scales=np.full((m, 3), np.log(sigma)), quats=np.tile([1.0, 0, 0, 0], (m, 1))))

    frames, video = [], cv2.VideoCapture(str(CAPTURE / "video.mp4"))
    doc = json.loads((CAPTURE / "cameras.json").read_text())["frames"][::camera_step]
    wanted = {f["frame"] for f in doc}
    index = 0
    while wanted:
        ok, image = video.read()
        if not ok:
            break
        if index in wanted:
            (ws / "frames").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(ws / "frames" / f"{index:06d}.png"), image)
            wanted.discard(index)
        index += 1
    for f in doc:
        frames.append(CameraFrame(f["frame"], f"frames/{f['frame']:06d}.png", f["width"], f["height"],
                                  f["fx"], f["fy"], f["cx"], f["cy"], f["w2c"]))
    write_cameras_json(ws / "cameras.json", frames, note="stand-in: Gaussians sampled on the reference mesh")
    return ws


# ---- Blender side ------------------------------------------------------------------------------

def frustum_props(cam, scene, depth: float, line_width: float, opacity: float = 1.0):
    """Renderable stand-ins for one Blender camera: frustum edges (a bevelled curve) and its
    background image on a quad at `depth`, both parented to the camera."""
    import bpy

    corners = [np.array(v) for v in cam.data.view_frame(scene=scene)]  # camera-local, on one plane
    corners = [v * (depth / -v[2]) for v in corners]
    curve = bpy.data.curves.new(f"{cam.name} frustum", "CURVE")
    curve.dimensions, curve.bevel_depth = "3D", line_width
    for path in ([corners[0], corners[1], corners[2], corners[3], corners[0]],
                 *[[np.zeros(3), v] for v in corners]):
        spline = curve.splines.new("POLY")
        spline.points.add(len(path) - 1)
        spline.points.foreach_set("co", np.hstack([np.array(path), np.ones((len(path), 1))]).ravel())
    lines = bpy.data.objects.new(curve.name, curve)
    lines.data.materials.append(emission_material("frustum", (0.95, 0.75, 0.2)))

    mesh = bpy.data.meshes.new(f"{cam.name} frame")
    mesh.from_pydata([tuple(v) for v in corners], [], [(0, 1, 2, 3)])
    uv = mesh.uv_layers.new()
    # view_frame's order is top-right, bottom-right, bottom-left, top-left
    uv.data.foreach_set("uv", np.array([[1, 1], [1, 0], [0, 0], [0, 1]], np.float32).ravel())
    plane = bpy.data.objects.new(mesh.name, mesh)
    if cam.data.background_images:
        plane.data.materials.append(image_material(cam.data.background_images[0].image, opacity))
    for ob in (lines, plane):
        scene.collection.objects.link(ob)
        ob.parent = cam
    return lines, plane


def emission_material(name, colour, image=None, opacity=1.0):
    import bpy

    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:
        mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    emission, out = nodes.new("ShaderNodeEmission"), nodes.new("ShaderNodeOutputMaterial")
    emission.inputs["Color"].default_value = (*colour, 1.0)
    if image is not None:
        tex = nodes.new("ShaderNodeTexImage")
        tex.image = image
        links.new(tex.outputs["Color"], emission.inputs["Color"])
    shader = emission.outputs[0]
    if opacity < 1.0:
        mix, clear = nodes.new("ShaderNodeMixShader"), nodes.new("ShaderNodeBsdfTransparent")
        mix.inputs["Fac"].default_value = opacity
        links.new(clear.outputs[0], mix.inputs[1])
        links.new(shader, mix.inputs[2])
        shader = mix.outputs[0]
    links.new(shader, out.inputs["Surface"])
    return mat


def image_material(image, opacity):
    return emission_material(f"frame {image.name}", (1, 1, 1), image=image, opacity=opacity)


def look_at(position, target, up):
    from mathutils import Matrix

    z = np.asarray(position, float) - target  # Blender cameras look down -Z
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, position
    return Matrix(m.tolist())


def render(workspace: Path, output: Path, width: int, height: int, samples: int) -> None:
    os.environ["HOME"] = tempfile.mkdtemp(prefix="facesplat-render-home-")  # a throwaway Blender profile
    import build

    zip_path = build.build_zip(Path(tempfile.mkdtemp(prefix="facesplat-render-dist-")))
    import bpy

    bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default", enable_on_install=True)
    for ob in list(bpy.data.objects):
        bpy.data.objects.remove(ob)
    bpy.ops.facesplat.import_ply(filepath=str(workspace / "head.ply"))  # File › Import, with cameras.json
    scene = bpy.context.scene
    head = bpy.context.active_object
    cams = [ob for ob in scene.objects if ob.type == "CAMERA"]

    positions = np.empty(len(head.data.points) * 3, np.float32)
    head.data.attributes["position"].data.foreach_get("vector", positions)
    target = np.median(positions.reshape(-1, 3), axis=0)
    centres = np.array([np.array(c.matrix_world.translation) for c in cams])
    ups = np.array([np.array(c.matrix_world.col[1][:3]) for c in cams])  # Blender camera +Y
    up = ups.mean(axis=0) / np.linalg.norm(ups.mean(axis=0))
    radius = float(np.median(np.linalg.norm(centres - target, axis=1)))
    for cam in cams:
        frustum_props(cam, scene, depth=0.22 * radius, line_width=0.0015 * radius, opacity=0.92)

    # Look from behind and above the capture cameras, so the face, the frames and the orbit all show.
    towards = centres.mean(axis=0) - target
    towards = towards - up * (towards @ up)
    towards /= np.linalg.norm(towards)
    side = np.cross(up, towards)
    eye = target + radius * (2.1 * towards + 1.0 * up + 0.45 * side)
    view = bpy.data.objects.new("preview camera", bpy.data.cameras.new("preview camera"))
    scene.collection.objects.link(view)
    view.matrix_world = look_at(eye, target + 0.45 * (centres.mean(axis=0) - target), up)
    view.data.lens = 35
    view.data.clip_start, view.data.clip_end = 0.01 * radius, 100 * radius
    scene.camera = view

    scene.world = scene.world or bpy.data.worlds.new("world")
    scene.world.color = (0.02, 0.02, 0.025)
    if scene.world.node_tree:
        for node in scene.world.node_tree.nodes:
            if node.type == "BACKGROUND":
                node.inputs["Color"].default_value = (0.02, 0.02, 0.025, 1)
    r = scene.render
    r.engine, r.resolution_x, r.resolution_y, r.resolution_percentage = "CYCLES", width, height, 100
    r.pixel_aspect_x = r.pixel_aspect_y = 1.0  # the import set the frames' aspect; the preview has its own
    scene.cycles.samples, scene.cycles.device = samples, "CPU"
    scene.view_settings.view_transform = "Standard"  # splat colours are display colours already
    r.image_settings.file_format = "PNG"
    r.filepath = str(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bpy.ops.render.render(write_still=True)
    print(f"rendered {output} ({width}x{height}, {samples} samples, {len(head.data.points)} Gaussians, "
          f"{len(cams)} cameras) in {time.perf_counter() - started:.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path,
                        help="a FaceSplat workspace (head.ply, cameras.json, frames/); default: a stand-in "
                             "made from the sample capture's mesh")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "blender_import.png")
    parser.add_argument("--width", type=int, default=960)
    parser.add_argument("--height", type=int, default=540)
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()
    workspace = args.workspace or stand_in_workspace(Path(tempfile.mkdtemp(prefix="facesplat-standin-")))
    render(workspace.resolve(), args.output.resolve(), args.width, args.height, args.samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
