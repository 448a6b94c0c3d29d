"""Create Blender data from FaceSplat files: core parses, this module only creates.

Gaussians become a PointCloud whose point attributes are the file's raw 3DGS properties under
their PLY names (f_dc_0 ... f_rest_N ... opacity, scale_*, rot_*; float), so an untouched object
exports back to the same values. Two more attributes are for display (viewport, geometry nodes):
`color` (RGBA, the DC colour in linear RGB, alpha = sigmoid(opacity)) and `radius` (geometric mean
of the three scales; point clouds draw and render each point as a sphere of that radius).
Cameras from cameras.json become Blender cameras with the same pinhole and their frame as the
background image. Everything of one run hangs under one empty.
"""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from .core import cameras as cams
from .core import ply

MATERIAL_NAME = "FaceSplat Gaussians"


class _Created:
    """The datablocks an import makes, so a failure halfway removes them all again, and the
    names they were meant to have."""

    def __init__(self):
        self.ids = []
        self.names = []
        self.images_before = {image.name for image in bpy.data.images}

    def add(self, datablock, name: str | None = None):
        self.ids.append(datablock)
        self.names.append(name or datablock.name)
        return datablock

    def claim_names(self) -> None:
        """Give each datablock its intended name where only an orphan holds it: deleting an
        imported object leaves its data behind (until the file is saved), and without this
        every re-import would be called `head.001`, `head.002`, ..."""
        for datablock, name in zip(self.ids, self.names):
            claim_name(datablock, name)

    def remove_all(self):
        # Images are loaded with check_existing: remove only those this import loaded.
        self.ids += [image for image in bpy.data.images if image.name not in self.images_before]
        for datablock in reversed(self.ids):
            try:
                _ID_COLLECTIONS[type(datablock)]().remove(datablock)
            except ReferenceError:
                pass  # already removed
        self.ids.clear()


_ID_COLLECTIONS = {
    bpy.types.Object: lambda: bpy.data.objects, bpy.types.Camera: lambda: bpy.data.cameras,
    bpy.types.PointCloud: lambda: bpy.data.pointclouds, bpy.types.Collection: lambda: bpy.data.collections,
    bpy.types.Image: lambda: bpy.data.images, bpy.types.Material: lambda: bpy.data.materials,
}


def claim_name(datablock, name: str) -> None:
    """Rename `datablock` to `name` if that name is free or held by an orphan (no users, no fake
    user), which is then removed. A name in use stays with its user."""
    if datablock.name == name:
        return
    collection = _ID_COLLECTIONS[type(datablock)]()
    holder = collection.get(name)
    if holder is not None:
        if holder.users > 0 or holder.use_fake_user:
            return
        collection.remove(holder)
    datablock.name = name


def display_values(splats: ply.Splats) -> tuple[np.ndarray, np.ndarray]:
    """(rgba [N, 4] linear, radius [N]) for the viewport and renders."""
    srgb = ply.sh0_to_rgb(splats.sh0)
    # 3DGS colours are sRGB-encoded; Blender colour attributes are scene-linear.
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    alpha = 0.5 + 0.5 * np.tanh(0.5 * splats.opacities.astype(np.float64))  # sigmoid, no overflow
    rgba = np.concatenate([linear, alpha[:, None]], axis=1).astype(np.float32)
    radius = np.exp(splats.scales.astype(np.float64).mean(axis=1)).astype(np.float32)
    return rgba, radius


def new_pointcloud(context, splats: ply.Splats, name: str) -> bpy.types.PointCloud:
    """A PointCloud datablock holding `splats` (no object, no user).

    Blender 4.2-5.0 cannot add points to a PointCloud from Python, and 4.2 cannot convert a mesh
    to one. So the points go into a Mesh, a temporary scene evaluates it through a Geometry Nodes
    "Mesh to Points" (which carries every attribute along), and the evaluated point cloud is
    copied out. The user's scene is never touched; nothing temporary survives.
    """
    if len(splats) == 0:  # nothing to evaluate (an empty mesh has no attributes at all)
        pointcloud = bpy.data.pointclouds.new(name)
        for key in [*ply.attribute_columns(splats), "radius"]:
            pointcloud.attributes.new(key, "FLOAT", "POINT")
        pointcloud.attributes.active = pointcloud.attributes.new("color", "FLOAT_COLOR", "POINT")
        return pointcloud
    rgba, radius = display_values(splats)
    mesh = bpy.data.meshes.new(name)
    scene = bpy.data.scenes.new(f".{name} (FaceSplat import)")
    group = _mesh_to_points_group()
    try:
        mesh.vertices.add(len(splats))
        mesh.attributes["position"].data.foreach_set("vector", splats.means.ravel())
        for key, column in ply.attribute_columns(splats).items():
            mesh.attributes.new(key, "FLOAT", "POINT").data.foreach_set("value", column)
        mesh.attributes.new("color", "FLOAT_COLOR", "POINT").data.foreach_set("color", rgba.ravel())
        carrier = bpy.data.objects.new(name, mesh)
        scene.collection.objects.link(carrier)
        carrier.modifiers.new("to points", "NODES").node_group = group
        with context.temp_override(scene=scene, view_layer=scene.view_layers[0]):
            depsgraph = context.evaluated_depsgraph_get()
        # The point cloud comes out of the modifier as an instance of the carrier object.
        pointcloud = next((inst.object.data.copy() for inst in depsgraph.object_instances
                           if inst.is_instance and inst.object.type == "POINTCLOUD"
                           and inst.parent.original == carrier), None)
    finally:
        for ob in list(scene.objects):
            bpy.data.objects.remove(ob)
        bpy.data.scenes.remove(scene)
        bpy.data.meshes.remove(mesh)
        bpy.data.node_groups.remove(group)
    if pointcloud is None:
        raise RuntimeError("Blender did not turn the points into a point cloud")
    pointcloud.name = name
    # Mesh to Points writes its own radius; ours is the Gaussians' size.
    pointcloud.attributes["radius"].data.foreach_set("value", radius)
    pointcloud.attributes.active = pointcloud.attributes["color"]  # the one to look at in the Attributes list
    return pointcloud


def _mesh_to_points_group() -> bpy.types.NodeTree:
    group = bpy.data.node_groups.new(".FaceSplat mesh to points", "GeometryNodeTree")
    group.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    group.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    inputs, outputs = group.nodes.new("NodeGroupInput"), group.nodes.new("NodeGroupOutput")
    to_points = group.nodes.new("GeometryNodeMeshToPoints")
    group.links.new(inputs.outputs[0], to_points.inputs["Mesh"])
    group.links.new(to_points.outputs[0], outputs.inputs[0])
    return group


def mean_colour(rgba: np.ndarray) -> tuple[float, float, float, float]:
    """The opacity-weighted mean linear colour of the Gaussians (grey if there are none)."""
    if len(rgba) == 0 or rgba[:, 3].sum() <= 0:
        return (0.8, 0.8, 0.8, 1.0)
    rgb = (rgba[:, :3] * rgba[:, 3:]).sum(axis=0) / rgba[:, 3].sum()
    return (*(float(c) for c in rgb), 1.0)


def splat_material(viewport_colour=(0.8, 0.8, 0.8, 1.0)) -> bpy.types.Material:
    """Unlit, shared by all imports: the 3DGS DC colour and opacity, activated in nodes from the
    raw attributes (f_dc_*, opacity), so EEVEE, Cycles and Material Preview agree.

    Not from the `color` attribute: Cycles reads the name "color" as its standard vertex-colour
    attribute, which point clouds do not fill (checked on 5.0.1), so a render would come out black.
    Solid mode cannot show per-point colours of a point cloud (Workbench draws point clouds in
    their material's or object's colour, even with Attribute colouring), so the material's viewport
    colour, set when it is made, is the mean colour of that first import, and each head's object
    colour is its own mean colour.
    """
    mat = bpy.data.materials.get(MATERIAL_NAME)
    if mat is not None:
        return mat
    mat = bpy.data.materials.new(MATERIAL_NAME)
    mat.diffuse_color = viewport_colour
    if mat.node_tree is None:
        mat.use_nodes = True  # Blender < 5.0 starts without nodes
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()

    def node(kind, x, y, **settings):
        n = nodes.new(kind)
        n.location = (x, y)
        for key, value in settings.items():
            setattr(n, key, value)
        return n

    def math(op, x, y, a=None, b=None, c=None, vector=False):
        n = node("ShaderNodeVectorMath" if vector else "ShaderNodeMath", x, y, operation=op)
        for i, value in enumerate((a, b, c)):
            if hasattr(value, "bl_idname"):  # a socket
                links.new(value, n.inputs[i])
            elif value is not None:
                n.inputs[i].default_value = value
        return n.outputs[0]

    # colour = sRGB-decode(clamp(0.5 + C0 * f_dc, 0, 1)); Gamma 2.2 stands in for the sRGB curve.
    dc = node("ShaderNodeCombineXYZ", -800, 200)
    for i in range(3):
        attr = node("ShaderNodeAttribute", -1000, 300 - 150 * i, attribute_name=f"f_dc_{i}")
        links.new(attr.outputs["Fac"], dc.inputs[i])
    rgb = math("MULTIPLY_ADD", -600, 200, dc.outputs[0], (ply.SH_C0,) * 3, (0.5,) * 3, vector=True)
    rgb = math("MINIMUM", -400, 200, math("MAXIMUM", -400, 350, rgb, (0.0,) * 3, vector=True), (1.0,) * 3, vector=True)
    gamma = node("ShaderNodeGamma", -200, 200)
    links.new(rgb, gamma.inputs["Color"])
    gamma.inputs["Gamma"].default_value = 2.2
    # alpha = sigmoid(opacity) = 0.5 + 0.5 tanh(opacity / 2)
    opacity = node("ShaderNodeAttribute", -1000, -200, attribute_name="opacity")
    alpha = math("MULTIPLY_ADD", -400, -200, math("TANH", -600, -200, math("MULTIPLY", -800, -200,
                 opacity.outputs["Fac"], 0.5)), 0.5, 0.5)

    emission = node("ShaderNodeEmission", 0, 200)
    links.new(gamma.outputs[0], emission.inputs["Color"])
    transparent = node("ShaderNodeBsdfTransparent", 0, 0)
    mix = node("ShaderNodeMixShader", 200, 100)
    links.new(alpha, mix.inputs["Fac"])
    links.new(transparent.outputs[0], mix.inputs[1])
    links.new(emission.outputs[0], mix.inputs[2])
    out = node("ShaderNodeOutputMaterial", 400, 100)
    links.new(mix.outputs[0], out.inputs["Surface"])
    return mat


def _link_pointcloud_data(pointcloud: bpy.types.PointCloud, viewport_colour) -> None:
    if not pointcloud.materials:
        pointcloud.materials.append(splat_material(viewport_colour))


def replace_splats(context, ob: bpy.types.Object, splats: ply.Splats, source: Path | None = None) -> None:
    """Swap the Gaussians of `ob` in place: object and data names, collections, parent,
    transform and materials stay."""
    old = ob.data
    name = old.name
    new = new_pointcloud(context, splats, name)
    colour = mean_colour(display_values(splats)[0])
    for mat in old.materials:
        new.materials.append(mat)
    _link_pointcloud_data(new, colour)
    ob.data = new
    ob.color = colour
    if old.users == 0:
        bpy.data.pointclouds.remove(old)
        new.name = name  # it was taken by the old data until now
    if source is not None:
        ob.facesplat.source = str(source)


def replace_splats_from_file(context, ob: bpy.types.Object, path) -> int:
    """Read a splat PLY and swap it into `ob` (see replace_splats); returns the count.
    Raises ply.PlyFormatError (a ValueError) before anything changes if the file is bad."""
    splats = ply.read_splat_ply(path)
    replace_splats(context, ob, splats, source=Path(path))
    return len(splats)


def _camera_scale(frames: list[cams.CameraFrame]) -> float:
    """A length for display sizes and clipping: median camera distance from their centroid."""
    centres = np.array([f.center for f in frames])
    d = float(np.median(np.linalg.norm(centres - centres.mean(axis=0), axis=1))) if len(frames) > 1 else 0.0
    return d if d > 1e-9 else 1.0


def new_camera(frame: cams.CameraFrame, name: str, image_root: Path | None, scale: float) -> bpy.types.Object:
    """A Blender camera that sees what the frame's pinhole saw (distortion is ignored)."""
    k = cams.blender_camera_intrinsics(frame.fx, frame.fy, frame.cx, frame.cy, frame.width, frame.height)
    data = bpy.data.cameras.new(name)
    data.sensor_fit, data.sensor_width, data.lens = k["sensor_fit"], k["sensor_width"], k["lens"]
    data.shift_x, data.shift_y = k["shift_x"], k["shift_y"]
    data.display_size = 0.15 * scale
    data.clip_start, data.clip_end = 0.01 * scale, 100.0 * scale
    image_path = (image_root / frame.image) if image_root is not None and frame.image else None
    if image_path is not None and image_path.is_file():
        bg = data.background_images.new()
        bg.image = bpy.data.images.load(str(image_path), check_existing=True)
        bg.frame_method = "STRETCH"  # the frame fills the camera's frame, pixel for pixel
        bg.alpha = 0.8
        data.show_background_images = True
    ob = bpy.data.objects.new(name, data)
    # Matrix(rows): assigning nested lists directly would be read column-major.
    ob.matrix_basis = Matrix(cams.opencv_w2c_to_blender_c2w(frame.world_to_camera).tolist())
    ob.facesplat.role, ob.facesplat.frame_index = "CAMERA", frame.frame_index
    return ob


def match_render_size(scene, frame: cams.CameraFrame) -> None:
    """Render (and camera-view) aspect of the frames, so looking through a camera lines up."""
    k = cams.blender_camera_intrinsics(frame.fx, frame.fy, frame.cx, frame.cy, frame.width, frame.height)
    scene.render.resolution_x, scene.render.resolution_y = frame.width, frame.height
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = k["pixel_aspect_x"], k["pixel_aspect_y"]


def _check_frames(frames: list[cams.CameraFrame], path) -> None:
    for f in frames:
        usable = (f.width > 0 and f.height > 0 and f.fx > 0 and f.fy > 0
                  and np.all(np.isfinite([f.fx, f.fy, f.cx, f.cy])) and np.all(np.isfinite(f.world_to_camera))
                  and abs(np.linalg.det(f.world_to_camera[:3, :3])) > 1e-9)
        if not usable:
            raise ValueError(f"{path}: frame {f.frame_index} has an unusable camera (size, focal length or pose)")


def import_splats(context, ply_path, cameras_json=None, name: str | None = None,
                  workspace=None, set_render_size: bool = False) -> bpy.types.Object:
    """Import a 3DGS PLY (and optionally the run's cameras). Returns the head object.
    With `set_render_size` the scene's render size becomes the first frame's (see match_render_size).

    Everything is read and checked before the first datablock is made, and a failure while
    creating removes what was made, so an error leaves the scene as it was.
    Raises ValueError (core's PlyFormatError, cameras.json errors) with a one-line message.
    """
    ply_path = Path(ply_path)
    splats = ply.read_splat_ply(ply_path)
    frames = cams.read_cameras_json(cameras_json) if cameras_json else []
    _check_frames(frames, cameras_json)
    image_root = Path(workspace) if workspace else (Path(cameras_json).parent if cameras_json else None)
    name = name or ply_path.stem
    created = _Created()
    try:
        parent_collection = context.collection or context.scene.collection
        had_material = MATERIAL_NAME in bpy.data.materials
        colour = mean_colour(display_values(splats)[0])
        head_data = created.add(new_pointcloud(context, splats, f"{name} head"), f"{name} head")
        _link_pointcloud_data(head_data, colour)
        if not had_material:
            created.add(bpy.data.materials[MATERIAL_NAME])
        head_name = f"{name} head" if frames else name
        head = created.add(bpy.data.objects.new(head_name, head_data), head_name)
        head.color = colour  # Solid mode, Object colouring
        head.facesplat.role, head.facesplat.source = "HEAD", str(ply_path)
        head.facesplat.workspace = str(workspace or "")
        if not frames:
            parent_collection.objects.link(head)
            created.claim_names()
            _select_only(context, head)
            return head

        run = created.add(bpy.data.collections.new(f"FaceSplat {name}"), f"FaceSplat {name}")
        parent_collection.children.link(run)
        scale = _camera_scale(frames)
        root = created.add(bpy.data.objects.new(name, None), name)
        root.empty_display_type, root.empty_display_size = "PLAIN_AXES", 0.3 * scale
        root.facesplat.role, root.facesplat.workspace = "ROOT", str(workspace or image_root)
        run.objects.link(root)
        run.objects.link(head)
        head.parent = root
        cam_collection = created.add(bpy.data.collections.new(f"{name} cameras"), f"{name} cameras")
        run.children.link(cam_collection)
        for frame in frames:
            cam_name = f"{name} cam {frame.frame_index:04d}"
            cam = created.add(new_camera(frame, cam_name, image_root, scale), cam_name)
            created.add(cam.data, cam_name)
            cam_collection.objects.link(cam)
            cam.parent = root
            cam.facesplat.workspace = root.facesplat.workspace
        if set_render_size:
            match_render_size(context.scene, frames[0])
        created.claim_names()
        _select_only(context, head)
        return head
    except BaseException:
        created.remove_all()
        raise


def _select_only(context, ob) -> None:
    for other in context.view_layer.objects:
        if other is not None:  # a base whose object was just removed, before the layer resyncs
            other.select_set(False)
    context.view_layer.objects.active = ob
    ob.select_set(True)


def run_objects(ob) -> tuple[bpy.types.Object | None, bpy.types.Object | None]:
    """(root, head) of the run `ob` belongs to (the head, its parent, or one of its cameras)."""
    if ob is None:
        return None, None
    root = ob if ob.facesplat.role == "ROOT" else ob.parent
    if root is not None and root.facesplat.role == "ROOT":
        heads = [c for c in root.children if c.facesplat.role == "HEAD"]
        return root, (heads[0] if heads else None)
    return None, (ob if ob.facesplat.role == "HEAD" else None)
