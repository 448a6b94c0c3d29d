"""Export an object's Gaussians as a standard 3DGS PLY (foreach_get -> core.transform -> core.ply) or
as the self-contained browser viewer (core.viewer_html), each with its provenance sidecar
(head.ply -> head.json, core.provenance) that records the object's transform."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .core import ply
from .core.provenance import export_record, exported_provenance, write_sidecar_json
from .core.transform import TransformError, bake_transform
from .core.viewer_html import write_viewer_html


class ExportError(Exception):
    """The object cannot be written as a 3DGS PLY. One line: what and what to do."""


def has_splat_attributes(ob) -> bool:
    """True for a point cloud or mesh that carries the 3DGS attributes (as the importer makes them)."""
    if ob is None or ob.type not in ("POINTCLOUD", "MESH"):
        return False
    attributes = ob.data.attributes
    return all(name in attributes for name in ("f_dc_0", "opacity", "scale_0", "rot_0"))


def _float_point_attribute(attributes, name: str, n: int) -> np.ndarray | None:
    attr = attributes.get(name)
    if attr is None or attr.data_type != "FLOAT" or attr.domain != "POINT":
        return None
    column = np.empty(n, dtype=np.float32)
    attr.data.foreach_get("value", column)
    return column


def object_splats(context, ob) -> ply.Splats:
    """The Gaussians of `ob` in its local space, as Blender evaluates it (modifiers included, the
    FaceSplat display left out)."""
    if ob is None or ob.type not in ("POINTCLOUD", "MESH"):
        raise ExportError(f"'{getattr(ob, 'name', None)}' is not a point cloud; select the imported Gaussians")
    from . import display  # bpy at import: exporter itself stays importable without Blender

    with display.display_off(ob):  # the display's instances are not Gaussians
        data = ob.evaluated_get(context.evaluated_depsgraph_get()).data
        attributes = data.attributes
        n = len(data.points) if ob.type == "POINTCLOUD" else len(data.vertices)
        means = np.empty(n * 3, dtype=np.float32)
        if n:  # an empty point cloud has no position attribute
            attributes["position"].data.foreach_get("vector", means)
        names = ply.property_names(3)[6:]  # every column a file can have; absent f_rest_* set the degree
        columns = {name: col for name in names
                   if (col := _float_point_attribute(attributes, name, n)) is not None}
    try:
        return ply.splats_from_columns(means.reshape(n, 3), columns)
    except ValueError as e:
        raise ExportError(f"'{ob.name}' is not a FaceSplat/3DGS point cloud ({e}); import a splat PLY first") from None


def export_splats(context, ob, path, apply_transform: bool = True, file_format: str = "ply",
                  program: str = "Blender") -> tuple[Path, int]:
    """Write `ob`'s Gaussians to `path` (atomically) as a 3DGS PLY or (file_format "html") the
    browser viewer, and its sidecar beside it. With `apply_transform` the object's world transform
    is baked in (positions, rotations, scales, SH). `program` names Blender and the add-on in the
    sidecar. Returns (path, count)."""
    splats = object_splats(context, ob)
    matrix = np.array(ob.matrix_world, dtype=np.float64)
    if apply_transform:
        try:
            splats = bake_transform(splats, matrix)
        except TransformError as e:
            raise ExportError(f"'{ob.name}': {e} (or export without applying the transform)") from None
    path = write_viewer_html(path, splats) if file_format == "html" else ply.write_splat_ply(path, splats)
    export = export_record(program, ob.name, matrix, apply_transform)
    write_sidecar_json(path, exported_provenance(path, splats.sh_degree, file_format, export))
    return Path(path), len(splats)
