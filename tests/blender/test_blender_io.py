"""Import and export in real Blender (bpy 5.0.1): exact values, transforms, cameras, bad files.

Functions named w_* run inside the module's Blender worker (see blender_worker.py); the test
functions prepare files and check results here.
"""

import dataclasses
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from blender_worker import REPO, addon, reset_scene, scene_snapshot

sys.path.insert(0, str(REPO / "backend"))
from facesplat.core.cameras import CameraFrame, project_points, write_cameras_json  # noqa: E402
from facesplat.core.ply import Splats, property_names, read_splat_ply, write_splat_ply  # noqa: E402
from facesplat.core.transform import quaternion_to_matrix  # noqa: E402

plyfile = pytest.importorskip("plyfile")
LPS = REPO / "samples" / "lps_orbit160"  # the sample capture, shipped in the repository


def random_splats(n, degree, seed=0):
    rng = np.random.default_rng(seed)
    k = (degree + 1) ** 2 - 1
    return Splats(means=rng.normal(0, 0.1, size=(n, 3)), sh0=rng.normal(size=(n, 3)), shN=rng.normal(0, 0.3, size=(n, k, 3)),
                  opacities=rng.normal(size=n), scales=rng.normal(-5, 1, size=(n, 3)), quats=rng.normal(size=(n, 4)))


def write_with_plyfile(path, degree, n=500, seed=1):
    """A 3DGS file written by an independent writer, with arbitrary normals."""
    rng = np.random.default_rng(seed)
    names = property_names(degree)
    arr = np.zeros(n, dtype=[(p, "f4") for p in names])
    for p in names:
        arr[p] = rng.normal(size=n).astype(np.float32)
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")]).write(str(path))
    return arr


# ---- run inside Blender -------------------------------------------------------------------------

def w_import(path, **kwargs):
    """Import through File › Import; return the head's type, point attributes and material."""
    import bpy

    reset_scene()
    assert bpy.ops.facesplat.import_ply(filepath=str(path), **kwargs) == {"FINISHED"}
    ob = bpy.context.active_object
    n = len(ob.data.points)
    attrs = {}
    for attr in ob.data.attributes:
        if attr.name.startswith("."):
            continue
        if attr.data_type == "FLOAT":
            buf = np.empty(n, np.float32)
            attr.data.foreach_get("value", buf)
        else:
            width = {"FLOAT_VECTOR": 3, "FLOAT_COLOR": 4}[attr.data_type]
            buf = np.empty(n * width, np.float32)
            attr.data.foreach_get("color" if attr.data_type == "FLOAT_COLOR" else "vector", buf)
            buf = buf.reshape(n, width)
        attrs[attr.name] = buf
    return {"type": ob.type, "n": n, "attrs": attrs, "material": [m.name for m in ob.data.materials]}


def w_export(path_in, path_out, location=(0, 0, 0), rotation=(0, 0, 0), scale=(1, 1, 1), apply_transform=True):
    import bpy

    reset_scene()
    bpy.ops.facesplat.import_ply(filepath=str(path_in))
    ob = bpy.context.active_object
    ob.location, ob.rotation_euler, ob.scale = location, rotation, scale
    bpy.context.view_layer.update()
    try:
        bpy.ops.facesplat.export_ply(filepath=str(path_out), apply_transform=apply_transform)
    except RuntimeError as e:
        return str(e)
    return None


def w_bad_import(path):
    import bpy

    reset_scene()
    bpy.ops.mesh.primitive_cube_add()  # something of the user's that must survive
    before = scene_snapshot()
    try:
        bpy.ops.facesplat.import_ply(filepath=str(path))
        message = None
    except RuntimeError as e:
        message = str(e)
    return message, before, scene_snapshot()


def w_import_failing_halfway(path):
    """A failure while creating (here: on the second camera) removes everything made so far."""
    import bpy

    importer = addon("importer")
    reset_scene()
    bpy.ops.mesh.primitive_cube_add()
    before = scene_snapshot()
    original, calls = importer.new_camera, []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("simulated failure")
        return original(*args)

    importer.new_camera = flaky
    try:
        bpy.ops.facesplat.import_ply(filepath=str(path))
    except RuntimeError as e:
        message = str(e)
    finally:
        importer.new_camera = original
    return message, before, scene_snapshot()


def w_camera_pixels(ply_path, points):
    """Import a workspace and project `points` through every Blender camera the way Blender does."""
    import bpy
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    reset_scene()
    bpy.ops.facesplat.import_ply(filepath=str(ply_path), set_render_size=True)
    scene = bpy.context.scene
    w, h = scene.render.resolution_x, scene.render.resolution_y
    out = {}
    for cam in scene.objects:
        if cam.type != "CAMERA":
            continue
        ndc = np.array([tuple(world_to_camera_view(scene, cam, Vector(p))) for p in points])
        bg = cam.data.background_images
        out[cam.facesplat.frame_index] = {
            "uv": np.stack([ndc[:, 0] * w, (1 - ndc[:, 1]) * h], axis=1),
            "image": bg[0].image.filepath if len(bg) else None,
            "parent": cam.parent.name if cam.parent else None,
            "collection": cam.users_collection[0].name,
        }
    head = next(ob for ob in scene.objects if ob.facesplat.role == "HEAD")
    return {"cams": out, "head_parent": head.parent.name, "head_collection": head.users_collection[0].name,
            "render": (w, h, scene.render.pixel_aspect_x, scene.render.pixel_aspect_y)}


def w_move_run_and_export(ply_path, out_path, location, rotation):
    """Move the run's parent empty; the head's export follows it."""
    import bpy

    reset_scene()
    bpy.ops.facesplat.import_ply(filepath=str(ply_path))
    head = bpy.context.active_object
    head.parent.location, head.parent.rotation_euler = location, rotation
    bpy.context.view_layer.update()
    bpy.ops.facesplat.export_ply(filepath=str(out_path))


def w_replace_splats(ply_path, new_path):
    """Re-isolation's swap: same object, name, collection, parent, transform; new points."""
    import bpy

    importer = addon("importer")
    reset_scene()
    bpy.ops.facesplat.import_ply(filepath=str(ply_path))
    head = bpy.context.active_object
    head.location = (0.1, 0.2, 0.3)
    bpy.context.view_layer.update()
    before = (head.name, head.users_collection[0].name, head.parent.name, [list(r) for r in head.matrix_world])
    old_data, old_uid = head.data.name, head.data.session_uid
    importer.replace_splats(bpy.context, head, importer.ply.read_splat_ply(new_path), source=new_path)
    after = (head.name, head.users_collection[0].name, head.parent.name, [list(r) for r in head.matrix_world])
    return (before, after, len(head.data.points), [m.name for m in head.data.materials],
            any(pc.session_uid == old_uid for pc in bpy.data.pointclouds), len(bpy.data.pointclouds),
            head.facesplat.source, (old_data, head.data.name))


# ---- tests --------------------------------------------------------------------------------------

@pytest.mark.parametrize("degree", [0, 1, 3])
def test_import_keeps_the_file_values_exactly(blender, tmp_path, degree):
    path = tmp_path / f"sh{degree}.ply"
    arr = write_with_plyfile(path, degree)
    got = blender.call(w_import, path)
    assert got["type"] == "POINTCLOUD" and got["n"] == len(arr)
    attrs = got["attrs"]
    np.testing.assert_array_equal(attrs["position"], np.stack([arr["x"], arr["y"], arr["z"]], axis=1))
    for name in property_names(degree)[6:]:
        np.testing.assert_array_equal(attrs[name], arr[name], err_msg=name)
    assert sum(name.startswith("f_rest_") for name in attrs) == 3 * ((degree + 1) ** 2 - 1)
    # display attributes
    assert attrs["color"].shape == (len(arr), 4)
    alpha = 1 / (1 + np.exp(-arr["opacity"].astype(np.float64)))
    np.testing.assert_allclose(attrs["color"][:, 3], alpha, rtol=1e-5)
    radius = np.exp((arr["scale_0"].astype(np.float64) + arr["scale_1"] + arr["scale_2"]) / 3)
    np.testing.assert_allclose(attrs["radius"], radius, rtol=1e-5)
    assert got["material"] == ["FaceSplat Gaussians"]


@pytest.mark.parametrize("degree", [0, 3])
def test_export_of_an_untouched_object_reproduces_the_values(blender, tmp_path, degree):
    src = tmp_path / "in.ply"
    arr = write_with_plyfile(src, degree)
    assert blender.call(w_export, src, tmp_path / "out.ply") is None
    out = plyfile.PlyData.read(str(tmp_path / "out.ply"))["vertex"]
    assert [p.name for p in out.properties] == property_names(degree)  # Inria order
    for name in property_names(degree):
        expected = np.zeros(len(arr), np.float32) if name in ("nx", "ny", "nz") else arr[name]
        np.testing.assert_array_equal(out.data[name], expected, err_msg=name)
    assert not list(tmp_path.glob(".*.tmp"))


def euler_xyz(rx, ry, rz):
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx  # Blender's XYZ Euler: X first


def sh1_vectors(shN):
    """Degree-1 SH as one 3-vector per colour channel: a = (−sh3, −sh1, sh2)."""
    return np.stack([-shN[:, 2], -shN[:, 0], shN[:, 1]], axis=1)


def test_export_bakes_rotation_translation_and_scale(blender, tmp_path):
    src = random_splats(400, 3)
    write_splat_ply(tmp_path / "in.ply", src)
    rotation, location, s = (0.4, -1.1, 2.5), (0.3, -2.0, 1.5), 1.7
    assert blender.call(w_export, tmp_path / "in.ply", tmp_path / "out.ply", location, rotation, (s, s, s)) is None
    out = read_splat_ply(tmp_path / "out.ply")
    R = euler_xyz(*rotation)
    np.testing.assert_allclose(out.means, s * src.means @ R.T + location, atol=2e-6)
    np.testing.assert_allclose(quaternion_to_matrix(out.quats), R @ quaternion_to_matrix(src.quats), atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(out.quats, axis=1), np.linalg.norm(src.quats, axis=1), rtol=1e-5)
    np.testing.assert_allclose(out.scales, src.scales + np.log(s), atol=2e-6)
    np.testing.assert_allclose(sh1_vectors(out.shN), np.einsum("ij,njc->nic", R, sh1_vectors(src.shN)), atol=2e-6)
    np.testing.assert_array_equal(out.opacities, src.opacities)
    np.testing.assert_array_equal(out.sh0, src.sh0)


def test_export_refuses_a_non_uniform_scale(blender, tmp_path):
    write_splat_ply(tmp_path / "in.ply", random_splats(10, 1))
    message = blender.call(w_export, tmp_path / "in.ply", tmp_path / "out.ply", (0, 0, 0), (0, 0, 0), (1, 2, 1))
    assert "non-uniform scale" in message
    assert not (tmp_path / "out.ply").exists()
    # Without "Apply Transform" the local values are written unchanged.
    assert blender.call(w_export, tmp_path / "in.ply", tmp_path / "local.ply", (1, 0, 0), (0, 0, 0), (1, 2, 1),
                        False) is None
    np.testing.assert_array_equal(read_splat_ply(tmp_path / "local.ply").means, read_splat_ply(tmp_path / "in.ply").means)


def _set_value(path: Path, row: int, prop: str, value: float) -> None:
    """Overwrite one float of a binary 3DGS PLY in place (the header keeps its order)."""
    data = bytearray(path.read_bytes())
    start = data.index(b"end_header\n") + len(b"end_header\n")
    names = [ln.split()[-1] for ln in data[:start].decode().splitlines() if ln.startswith("property")]
    offset = start + 4 * (row * len(names) + names.index(prop))
    data[offset:offset + 4] = np.float32(value).tobytes()
    path.write_bytes(bytes(data))


BAD = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:-100]),
    "truncated_header": lambda p: p.write_bytes(p.read_bytes()[:p.read_bytes().index(b"property float opacity") + 13]),
    "nan_in_x": lambda p: _set_value(p, 7, "x", np.nan),
    "inf_in_scale": lambda p: _set_value(p, 3, "scale_1", np.inf),
    "absurd_count": lambda p: p.write_bytes(p.read_bytes().replace(b"element vertex 50", b"element vertex 5000000000000", 1)),
    "missing_properties": lambda p: p.write_bytes(p.read_bytes().replace(b"property float opacity", b"property float opacit_", 1)),
    "not_a_ply": lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(4000)),
    "text_garbage": lambda p: p.write_bytes(b"ply\n" + b"comment " + b"A" * 200_000 + b"\n"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_ply_gives_a_clear_report_and_leaves_the_scene_untouched(blender, tmp_path, case):
    path = tmp_path / f"{case}.ply"
    write_splat_ply(path, random_splats(50, 1))
    BAD[case](path)
    message, before, after = blender.call(w_bad_import, path)
    assert message and str(path) in message and "Traceback" not in message, message
    assert "\n" not in message.strip(), message
    if case == "truncated_header":  # not "unsupported vertex property 'property floa'"
        assert "truncated" in message.replace(str(path), ""), message
    assert after == before


@pytest.mark.parametrize("case", ["fx_not_a_number", "null_frame", "frames_not_a_list_of_objects"])
def test_cameras_json_with_wrong_types_gives_a_clear_report(blender, tmp_path, case):
    write_splat_ply(tmp_path / "head.ply", random_splats(50, 1))
    frame = CameraFrame(0, "", 64, 48, 50.0, 50.0, 32.0, 24.0, np.eye(4)).to_json()
    frames = {"fx_not_a_number": [{**frame, "fx": "abc"}], "null_frame": [frame, None],
              "frames_not_a_list_of_objects": [frame, 3]}[case]
    (tmp_path / "cameras.json").write_text(json.dumps({"convention": "opencv", "frames": frames}))
    message, before, after = blender.call(w_bad_import, tmp_path / "head.ply")
    assert message and "cameras.json" in message and "Traceback" not in message, message
    assert "\n" not in message.strip(), message
    assert after == before


def test_bad_cameras_json_leaves_the_scene_untouched(blender, tmp_path):
    write_splat_ply(tmp_path / "head.ply", random_splats(50, 1))
    (tmp_path / "cameras.json").write_text('{"convention": "opencv", "frames": [{"frame_index": 0}]}')
    message, before, after = blender.call(w_bad_import, tmp_path / "head.ply")
    assert "cameras.json" in message and after == before
    frame = CameraFrame(0, "frames/0.png", 0, 0, 0.0, 0.0, 0.0, 0.0, np.eye(4))
    write_cameras_json(tmp_path / "cameras.json", [frame])
    message, before, after = blender.call(w_bad_import, tmp_path / "head.ply")
    assert "width is 0" in message and after == before  # refused by core's read_cameras_json


def write_png(path: Path, width: int, height: int) -> None:
    """A plain frame image (RGB 90, 120, 160) for a camera's background."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), (160, 120, 90), np.uint8))  # BGR


def lps_frames(step=8) -> list[CameraFrame]:
    """The sample capture's ground-truth cameras, in the FaceSplat cameras.json schema."""
    doc = json.loads((LPS / "cameras.json").read_text())
    return [CameraFrame(frame_index=f["frame"], image=f"frames/{f['frame']:06d}.png", width=f["width"],
                        height=f["height"], fx=f["fx"], fy=f["fy"], cx=f["cx"], cy=f["cy"], world_to_camera=f["w2c"])
            for f in doc["frames"][::step]]


def make_workspace(ws: Path, frames: list[CameraFrame], n=200) -> Path:
    write_cameras_json(ws / "cameras.json", frames)
    for f in frames:
        if f.image:
            write_png(ws / f.image, 8, 8)
    return write_splat_ply(ws / "head.ply", random_splats(n, 1))


def check_camera_projection(got, frames, points):
    for f in frames:
        cam = got["cams"][f.frame_index]
        uv, depth = project_points(points, f, distort=False)
        assert (depth > 0).all()
        err = np.abs(cam["uv"] - uv).max()
        assert err < 0.5, f"frame {f.frame_index}: {err:.3f} px off"


@pytest.mark.skipif(not LPS.exists(), reason="sample capture not present")
def test_cameras_line_up_with_cameras_json(blender, tmp_path):
    frames = lps_frames()
    ply_path = make_workspace(tmp_path / "ws", frames)
    points = np.random.default_rng(0).uniform(-0.12, 0.12, size=(25, 3))  # around the head
    got = blender.call(w_camera_pixels, ply_path, points)
    assert sorted(got["cams"]) == [f.frame_index for f in frames]
    assert got["render"] == (frames[0].width, frames[0].height, 1.0, 1.0)
    check_camera_projection(got, frames, points)
    # one parent empty per run, the cameras in their own collection, each with its frame
    assert got["head_parent"] == "ws" and got["head_collection"] == "FaceSplat ws"
    for f in frames:
        cam = got["cams"][f.frame_index]
        assert cam["parent"] == "ws" and cam["collection"] == "ws cameras"
        assert Path(cam["image"]) == tmp_path / "ws" / f.image


@pytest.mark.skipif(not LPS.exists(), reason="sample capture not present")
def test_the_trained_cameras_are_imported_where_the_workspace_has_them(blender, tmp_path):
    """cameras_refined.json (the train stage's cameras, pose refinement applied) wins over SfM's
    cameras.json: the splat lines up with the cameras it was trained with."""
    frames = lps_frames()
    ply_path = make_workspace(tmp_path / "ws", frames)
    turn = np.eye(4)
    turn[:3, :3] = cv2.Rodrigues(np.array([0.0, 0.03, 0.0]))[0]  # 1.7 degrees: tens of pixels
    turn[:3, 3] = [0.004, 0.0, 0.0]
    refined = [dataclasses.replace(f, world_to_camera=turn @ f.world_to_camera) for f in frames]
    write_cameras_json(tmp_path / "ws" / "cameras_refined.json", refined)
    points = np.random.default_rng(0).uniform(-0.12, 0.12, size=(25, 3))
    got = blender.call(w_camera_pixels, ply_path, points)
    assert sorted(got["cams"]) == [f.frame_index for f in frames]
    check_camera_projection(got, refined, points)


@pytest.mark.parametrize("fy", [480.0, 540.0])
def test_off_centre_principal_point_and_non_square_pixels(blender, tmp_path, fy):
    rng = np.random.default_rng(3)
    frames = []
    for i, eye in enumerate([[0.6, 0.1, 0.05], [0.1, -0.6, 0.2], [-0.4, -0.4, -0.1]]):
        z = -np.asarray(eye) / np.linalg.norm(eye)
        x = np.cross(z, [0, 0, 1]); x /= np.linalg.norm(x)
        R = np.stack([x, np.cross(z, x), z])
        w2c = np.eye(4); w2c[:3, :3], w2c[:3, 3] = R, -R @ eye
        frames.append(CameraFrame(i, f"frames/{i:06d}.png", 640, 360, 510.0, fy, 301.5 + 10 * i, 197.25, w2c))
    ply_path = make_workspace(tmp_path / "ws", frames)
    points = rng.uniform(-0.1, 0.1, size=(25, 3))
    got = blender.call(w_camera_pixels, ply_path, points)
    check_camera_projection(got, frames, points)


@pytest.mark.skipif(not LPS.exists(), reason="sample capture not present")
def test_moving_the_run_moves_the_export(blender, tmp_path):
    frames = lps_frames(step=24)  # the run's parent comes with its cameras
    ply_path = make_workspace(tmp_path / "ws", frames)
    src = read_splat_ply(ply_path)
    blender.call(w_move_run_and_export, ply_path, tmp_path / "moved.ply", (1.0, 2.0, 3.0), (0.0, 0.0, 0.5))
    out = read_splat_ply(tmp_path / "moved.ply")
    np.testing.assert_allclose(out.means, src.means @ euler_xyz(0, 0, 0.5).T + [1, 2, 3], atol=2e-6)


def test_import_failing_halfway_removes_what_it_made(blender, tmp_path):
    frames = [CameraFrame(i, "", 64, 48, 50.0, 50.0, 32.0, 24.0, np.eye(4)) for i in range(3)]
    ply_path = make_workspace(tmp_path / "ws", frames)
    message, before, after = blender.call(w_import_failing_halfway, ply_path)
    assert "simulated failure" in message
    assert after == before


def test_replacing_the_splats_keeps_the_object(blender, tmp_path):
    frames = [CameraFrame(0, "", 64, 48, 50.0, 50.0, 32.0, 24.0, np.eye(4))]
    ply_path = make_workspace(tmp_path / "ws", frames, n=300)
    write_splat_ply(tmp_path / "fewer.ply", random_splats(120, 1, seed=9))
    before, after, n, materials, old_kept, n_clouds, source, data_names = blender.call(
        w_replace_splats, ply_path, tmp_path / "fewer.ply")
    assert before == after and n == 120 and data_names == ("ws head", "ws head")
    assert materials == ["FaceSplat Gaussians"] and not old_kept and n_clouds == 1
    assert source == str(tmp_path / "fewer.ply")


def w_render_point(ply_path, frame_index, point, radius, box):
    """Render, through the imported camera, a small glowing sphere at `point`; only the pixel box
    (x0, y0, x1, y1; top-left origin) is rendered (a render border) to keep Cycles quick."""
    import bpy

    reset_scene()
    bpy.ops.facesplat.import_ply(filepath=str(ply_path), set_render_size=True)
    scene = bpy.context.scene
    scene.camera = next(ob for ob in scene.objects if ob.type == "CAMERA" and ob.facesplat.frame_index == frame_index)
    for ob in scene.objects:
        ob.hide_render = ob.type != "CAMERA"
    bpy.ops.mesh.primitive_uv_sphere_add(radius=radius, location=point)
    mat = bpy.data.materials.new("glow")
    if mat.node_tree is None:
        mat.use_nodes = True
    nodes = mat.node_tree.nodes
    nodes.clear()
    emission, out = nodes.new("ShaderNodeEmission"), nodes.new("ShaderNodeOutputMaterial")
    mat.node_tree.links.new(emission.outputs[0], out.inputs[0])
    bpy.context.active_object.data.materials.append(mat)
    scene.world = scene.world or bpy.data.worlds.new("black")
    scene.world.color = (0, 0, 0)
    for node in (scene.world.node_tree.nodes if scene.world.node_tree else []):
        if node.type == "BACKGROUND":
            node.inputs["Strength"].default_value = 0.0
    render = scene.render
    render.engine, scene.cycles.samples, render.resolution_percentage = "CYCLES", 4, 100
    render.film_transparent = False
    w, h = render.resolution_x, render.resolution_y
    x0, y0, x1, y1 = box
    render.use_border, render.use_crop_to_border = True, False
    render.border_min_x, render.border_max_x = x0 / w, x1 / w
    render.border_min_y, render.border_max_y = 1 - y1 / h, 1 - y0 / h  # Blender's border starts bottom-left
    bpy.ops.render.render()
    result = bpy.data.images["Render Result"]
    path = str(Path(ply_path).parent / "render.png")
    result.save_render(path)
    image = bpy.data.images.load(path)
    pixels = np.array(image.pixels[:], dtype=np.float32).reshape(image.size[1], image.size[0], 4)
    return pixels[::-1, :, 0]  # top row first


def test_a_render_through_an_imported_camera_hits_the_predicted_pixel(blender, tmp_path):
    """Independent of Blender's own projection helpers: Cycles draws the point where cameras.json says."""
    eye = np.array([0.6, 0.1, 0.05])
    z = -eye / np.linalg.norm(eye)
    x = np.cross(z, [0, 0, 1]); x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    w2c = np.eye(4); w2c[:3, :3], w2c[:3, 3] = R, -R @ eye
    frame = CameraFrame(0, "", 640, 360, 400.0, 370.0, 281.2, 210.8, w2c)
    ply_path = make_workspace(tmp_path / "ws", [frame])
    point = np.array([0.03, -0.02, 0.04])
    uv, _ = project_points(point[None], frame, distort=False)
    u, v = uv[0]
    box = (int(u) - 12, int(v) - 12, int(u) + 12, int(v) + 12)
    img = blender.call(w_render_point, ply_path, 0, point, 0.002, box)
    weights = np.where(img > 0.05, img, 0.0)
    ys, xs = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    centroid = np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum() + 0.5  # pixel centres
    assert weights.sum() > 0, "the sphere is not in the rendered box"
    assert np.abs(centroid - [u, v]).max() < 0.5, (centroid, (u, v))


def test_an_empty_splat_file_imports_and_exports(blender, tmp_path):
    """Isolation can keep nothing; the file is still valid and the object round-trips."""
    write_splat_ply(tmp_path / "empty.ply", random_splats(5, 1).subset(np.zeros(5, bool)))
    got = blender.call(w_import, tmp_path / "empty.ply")
    assert got["type"] == "POINTCLOUD" and got["n"] == 0 and "f_rest_8" in got["attrs"]
    assert blender.call(w_export, tmp_path / "empty.ply", tmp_path / "out.ply", (1, 2, 3)) is None
    out = read_splat_ply(tmp_path / "out.ply")
    assert len(out) == 0 and out.sh_degree == 1


def w_import_twice(ply_path, delete_between):
    """Import, (delete what it made, as an artist would), import again; then re-isolate twice."""
    import bpy

    importer = addon("importer")
    reset_scene()

    def names():
        return {kind: sorted(x.name for x in getattr(bpy.data, kind))
                for kind in ("objects", "pointclouds", "cameras", "collections")}

    bpy.ops.facesplat.import_ply(filepath=str(ply_path))
    first = names()
    if delete_between:
        bpy.ops.object.select_all(action="SELECT")
        bpy.ops.object.delete()
        for collection in [c for c in bpy.data.collections if c.name.startswith("FaceSplat ")]:
            for child in collection.children_recursive:
                bpy.data.collections.remove(child)
            bpy.data.collections.remove(collection)
        orphans = [pc.name for pc in bpy.data.pointclouds if pc.users == 0]
    else:
        orphans = []
    bpy.ops.facesplat.import_ply(filepath=str(ply_path))
    second = names()
    head = bpy.context.active_object
    data_name = head.data.name
    for _ in range(2):
        importer.replace_splats_from_file(bpy.context, head, ply_path)
    return first, orphans, second, data_name, head.data.name, len(bpy.data.pointclouds)


def test_reimport_after_deleting_and_reisolating_keep_the_names(blender, tmp_path):
    frames = [CameraFrame(i, "", 64, 48, 50.0, 50.0, 32.0, 24.0, np.eye(4)) for i in range(2)]
    ply_path = make_workspace(tmp_path / "ws", frames)
    first, orphans, second, data_before, data_after, n_clouds = blender.call(w_import_twice, ply_path, True)
    assert orphans == ["ws head"]  # deleting the object left its data, which used to push the name to .001
    assert second == first and first["pointclouds"] == ["ws head"]
    assert data_before == data_after == "ws head" and n_clouds == 1  # re-isolation keeps the name too
    # Imported twice side by side, the second copy is a second run (Blender's usual .001).
    first, _, second, data_before, data_after, n_clouds = blender.call(w_import_twice, ply_path, False)
    assert second["objects"] == sorted(first["objects"] + [n + ".001" for n in first["objects"]])
    assert data_after == data_before == "ws head.001" and n_clouds == 2


def w_import_render_size(ply_path, options):
    import bpy

    reset_scene()
    render = bpy.context.scene.render
    render.resolution_x, render.resolution_y, render.pixel_aspect_x, render.pixel_aspect_y = 1920, 1080, 1.0, 1.0
    assert bpy.ops.facesplat.import_ply(filepath=str(ply_path), **options) == {"FINISHED"}
    return render.resolution_x, render.resolution_y, round(render.pixel_aspect_x, 4), round(render.pixel_aspect_y, 4)


def test_import_leaves_the_render_size_alone_unless_asked(blender, tmp_path):
    frames = [CameraFrame(0, "", 640, 360, 500.0, 400.0, 320.0, 180.0, np.eye(4))]
    ply_path = make_workspace(tmp_path / "ws", frames)
    assert blender.call(w_import_render_size, ply_path, {}) == (1920, 1080, 1.0, 1.0)
    w, h, ax, ay = blender.call(w_import_render_size, ply_path, {"set_render_size": True})
    assert (w, h) == (640, 360) and ax / ay == pytest.approx(400.0 / 500.0, rel=1e-3)


def w_solid_mode_colour(ply_path, colour_type):
    """Render the imported head with Workbench (Solid mode's engine) and return the centre colour."""
    import bpy

    reset_scene()
    bpy.ops.facesplat.import_ply(filepath=str(ply_path))
    head = bpy.context.active_object
    scene = bpy.context.scene
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    scene.collection.objects.link(cam)
    cam.location, cam.rotation_euler = (0, -3, 0), (np.pi / 2, 0, 0)
    scene.camera = cam
    render = scene.render
    render.engine, render.resolution_x, render.resolution_y, render.resolution_percentage = "BLENDER_WORKBENCH", 48, 48, 100
    render.use_border = render.film_transparent = False  # an earlier test's render border would crop it
    scene.display_settings.display_device = "sRGB"
    scene.view_settings.view_transform = "Standard"
    shading = scene.display.shading
    shading.light, shading.color_type = "FLAT", colour_type
    bpy.ops.render.render()
    path = str(Path(ply_path).parent / f"solid_{colour_type}.png")
    bpy.data.images["Render Result"].save_render(path)
    image = bpy.data.images.load(path)
    pixels = np.array(image.pixels[:], dtype=np.float32).reshape(48, 48, 4)
    material = head.data.materials[0]
    return (pixels[20:28, 20:28, :3].reshape(-1, 3).mean(axis=0), tuple(material.diffuse_color),
            tuple(head.color), head.data.attributes.active.name if head.data.attributes.active else None)


@pytest.mark.parametrize("colour_type", ["MATERIAL", "OBJECT"])
def test_solid_mode_shows_the_heads_colour(blender, tmp_path, colour_type):
    """Not Blender's default grey: the material's and the object's viewport colour are the head's."""
    n = 400
    rgb = np.tile([0.8, 0.3, 0.2], (n, 1))  # a skin-like orange-red, sRGB
    rng = np.random.default_rng(0)
    write_splat_ply(tmp_path / "red.ply", Splats(rng.normal(0, 0.15, (n, 3)), (rgb - 0.5) / 0.28209479, np.zeros((n, 0, 3)),
                                                 np.full(n, 6.0), np.full((n, 3), np.log(0.06)), np.tile([1.0, 0, 0, 0], (n, 1))))
    seen, material_colour, object_colour, active = blender.call(w_solid_mode_colour, tmp_path / "red.ply", colour_type)
    linear = ((rgb[0] + 0.055) / 1.055) ** 2.4
    np.testing.assert_allclose(material_colour[:3], linear, atol=0.01)
    np.testing.assert_allclose(object_colour[:3], linear, atol=0.01)
    assert active == "color"
    np.testing.assert_allclose(seen, rgb[0], atol=0.06)  # Flat lighting, Standard view: the sRGB colour back
