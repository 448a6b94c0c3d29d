"""Artist tools on an imported head: crop box, frame the head, step through the cameras.

Crops change the head's data (the Gaussians outside, or inside, the box are gone, so export
writes the rest); the display settings only hide (display.py).
"""

from __future__ import annotations

import numpy as np
import bpy
from mathutils import Quaternion, Vector

from . import exporter, importer


def _world_means(ob) -> np.ndarray:
    """[N, 3] world positions of `ob`'s stored points."""
    n = len(ob.data.points)
    local = np.empty(n * 3, np.float32)
    if n:
        ob.data.attributes["position"].data.foreach_get("vector", local)
    m = np.array(ob.matrix_world, dtype=np.float64)
    return local.reshape(n, 3) @ m[:3, :3].T + m[:3, 3]


def active_head(context):
    """The head the tools work on: of the active object's run (head, empty, camera) or the head
    the active crop box was made for."""
    ob = context.active_object
    if ob is not None and ob.facesplat.role == "CROP":
        return next((h for h in context.scene.objects if h.facesplat.role == "HEAD"
                     and crop_box_name(h) == ob.name), None)
    return importer.run_objects(ob)[1]


def crop_box_name(head) -> str:
    return f"{head.name} crop box"


def add_crop_box(context, head) -> bpy.types.Object:
    """An empty drawn as a cube around the head's Gaussians (move, rotate, scale it, then Crop)."""
    means = _world_means(head)
    low, high = (means.min(axis=0), means.max(axis=0)) if len(means) else (np.zeros(3) - 0.1, np.zeros(3) + 0.1)
    box = bpy.data.objects.new(crop_box_name(head), None)
    box.empty_display_type, box.empty_display_size = "CUBE", 1.0
    box.location = Vector(((low + high) / 2).tolist())
    box.scale = Vector(np.maximum((high - low) / 2 * 1.05, 1e-4).tolist())  # a little margin: all inside
    box.facesplat.role = "CROP"
    for collection in head.users_collection:
        collection.objects.link(box)
    return box


def crop_box_of(context, head):
    """The crop box to use for `head`: a selected one, else the one named after the head."""
    chosen = [ob for ob in context.selected_objects if ob.facesplat.role == "CROP"]
    return chosen[0] if chosen else bpy.data.objects.get(crop_box_name(head))


def inside_box(head, box) -> np.ndarray:
    """[N] bool: which of the head's Gaussians lie inside the crop box (the empty's drawn cube)."""
    to_box = np.array(box.matrix_world.inverted_safe(), dtype=np.float64)
    local = _world_means(head) @ to_box[:3, :3].T + to_box[:3, 3]
    return np.all(np.abs(local) <= box.empty_display_size, axis=1)


def crop(context, head, box, keep_inside: bool = True) -> int:
    """Delete the Gaussians outside (keep_inside) or inside the box; returns how many went."""
    keep = inside_box(head, box)
    if not keep_inside:
        keep = ~keep
    removed = int((~keep).sum())
    if removed:
        splats = exporter.object_splats(context, head)  # as stored (the display is left out)
        importer.replace_splats(context, head, splats.subset(keep))
    return removed


def run_cameras(head) -> list:
    """The registered cameras of the head's run, in frame order."""
    root, _ = importer.run_objects(head)
    if root is None:
        return []
    return sorted((c for c in root.children if c.facesplat.role == "CAMERA" and c.type == "CAMERA"),
                  key=lambda c: (c.facesplat.frame_index, c.name))


def face_forward_camera(head):
    """The run's camera that looks most straight at the face (FaceSplat's world: +Z up, the face
    towards -Y, so that camera looks along +Y of the head's frame); None without cameras."""
    to_head = head.matrix_world.to_3x3().inverted_safe()
    best, best_dot = None, -2.0
    for cam in run_cameras(head):
        forward = (to_head @ (cam.matrix_world.to_3x3() @ Vector((0.0, 0.0, -1.0)))).normalized()
        if forward.y > best_dot:
            best, best_dot = cam, forward.y
    return best


def _view3d_regions(context):
    screen = getattr(context, "screen", None)
    for area in (screen.areas if screen else ()):
        if area.type == "VIEW_3D":
            yield area, area.spaces.active.region_3d


def look_through(context, cam) -> None:
    """Make `cam` the scene camera and look through it in every 3D view."""
    context.scene.camera = cam
    for area, r3d in _view3d_regions(context):
        r3d.view_perspective = "CAMERA"
        area.tag_redraw()


def frame_head(context, head):
    """Look at the face: through the face-forward camera if the run has cameras, else (and in
    any case for the views' pivot) a front view centred on the Gaussians. Returns the camera."""
    means = _world_means(head)
    centre = means.mean(axis=0) if len(means) else np.array(head.matrix_world.translation)
    radius = float(np.percentile(np.linalg.norm(means - centre, axis=1), 98)) if len(means) else 1.0
    # Front view (Numpad 1) looks along +Y, at the face; it rotates with the head's frame.
    front = head.matrix_world.to_quaternion() @ Quaternion((1.0, 0.0, 0.0), np.pi / 2)
    for area, r3d in _view3d_regions(context):
        r3d.view_location = Vector(centre.tolist())
        r3d.view_rotation = front
        r3d.view_distance = max(3.0 * radius, 1e-3)
        r3d.view_perspective = "PERSP"
        area.tag_redraw()
    cam = face_forward_camera(head)
    if cam is not None:
        look_through(context, cam)
    return cam


def step_camera(context, head, step: int):
    """The scene camera becomes the run's previous (-1) or next (+1) camera, looked through.
    Returns it, or None if the run has no cameras."""
    cams = run_cameras(head)
    if not cams:
        return None
    current = context.scene.camera
    i = cams.index(current) if current in cams else (-1 if step > 0 else 0)
    cam = cams[(i + step) % len(cams)]
    look_through(context, cam)
    return cam

