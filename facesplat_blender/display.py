"""How the imported head is shown: as points (the point cloud as it is) or as splats (each
Gaussian drawn as its ellipsoid, with its opacity falloff and DC colour), with an opacity
threshold that hides faint Gaussians. All of it lives in one Geometry Nodes modifier on the
head object, so switching is one property and nothing is baked into the data.

Splats: Geometry Nodes puts a low-poly ico sphere on every point, rotated by the quaternion
(rot_*) and scaled by exp(scale_*), so the sphere is the Gaussian's SIGMAS-sigma ellipsoid. Its
material works in the instance's own space, where the Gaussian is the unit normal
distribution: the view ray's closest approach r to the centre gives the Gaussian's peak
along that ray, so alpha = sigmoid(opacity) * exp(-r^2 / 2), which is what a 3DGS rasterizer
draws (the 2D projection of the 3D Gaussian, without its affine approximation). Only front
faces draw, so each Gaussian counts once. Per-Gaussian values reach the material as instancer
attributes. Transparency is Dithered (stochastic): with enough samples it converges to the
front-to-back blend in any order, which Blended cannot do (EEVEE sorts objects, not instances).
"""

from __future__ import annotations

import contextlib

import bpy

from .core import ply

MODIFIER_NAME = "FaceSplat Display"
GROUP_NAME = "FaceSplat Display"
SPLAT_MATERIAL_NAME = "FaceSplat Splats"
SET_MATERIAL_NODE = "FaceSplat Set Material"
RAW_COLOURS_NODE = "FaceSplat raw colours"
SIGMAS = 3.0  # the ellipsoid drawn reaches this many standard deviations (alpha falls to 1 %)
ICO_INRADIUS = 0.7947  # an icosahedron's inscribed / circumscribed radius: its faces lie that far in
# Inputs of the group (name, socket type, default, min, max); the panel sets them through the object.
INPUTS = (("Splats", "NodeSocketBool", False, None, None),
          ("Min Opacity", "NodeSocketFloat", 0.0, 0.0, 1.0))
DISPLAY_MODES = (("POINTS", "Points", "Each Gaussian as a disc of its radius (fast)"),
                 ("SPLATS", "Splats", "Each Gaussian as its ellipsoid with its opacity falloff (Material Preview, "
                                      "Rendered, EEVEE renders)"))


class NodeBuilder:
    """Nodes and links of one node tree, placed in a grid: node(), math() and link()."""

    def __init__(self, tree):
        self.nodes, self.links = tree.nodes, tree.links

    def node(self, kind: str, x: float, y: float, **settings):
        n = self.nodes.new(kind)
        n.location = (x, y)
        for key, value in settings.items():
            setattr(n, key, value)
        return n

    def link(self, a, b):
        self.links.new(a, b)

    def math(self, op: str, x: float, y: float, a=None, b=None, c=None, vector: bool = False):
        """A (Vector) Math node of `op` over sockets or constants; returns its result (a vector
        node's scalar results, dot product and length, come out of its Value socket)."""
        n = self.node("ShaderNodeVectorMath" if vector else "ShaderNodeMath", x, y, operation=op)
        for i, value in enumerate((a, b, c)):
            if hasattr(value, "bl_idname"):  # a socket
                self.links.new(value, n.inputs[i])
            elif value is not None:
                n.inputs[i].default_value = value
        return n.outputs["Value"] if vector and op in ("DOT_PRODUCT", "LENGTH", "DISTANCE") else n.outputs[0]


def _srgb_to_linear(b: NodeBuilder, c, x: float, y: float):
    """The sRGB decoding curve of one channel in [0, 1] (the exact one: 3DGS colours are sRGB,
    Blender shades in linear and encodes again with the Standard view transform)."""
    low = b.math("DIVIDE", x, y + 60, c, 12.92)
    high = b.math("POWER", x + 150, y - 60, b.math("MULTIPLY_ADD", x, y - 60, c, 1 / 1.055, 0.055 / 1.055), 2.4)
    is_low = b.math("LESS_THAN", x + 150, y + 60, c, 0.04045)
    # is_low * low + (1 - is_low) * high
    return b.math("ADD", x + 450, y, b.math("MULTIPLY", x + 300, y + 60, is_low, low),
                  b.math("MULTIPLY", x + 300, y - 60, b.math("SUBTRACT", x + 300, y - 180, 1.0, is_low), high))


def dc_colour_and_alpha(b: NodeBuilder, attribute_type: str, x: float = -1400, y: float = 400):
    """Shader sockets (sRGB colour, linear colour, sigmoid(opacity)) from the raw attributes f_dc_*
    and opacity, read from the geometry ('GEOMETRY') or from each instance's point ('INSTANCER')."""
    srgb, linear = b.node("ShaderNodeCombineXYZ", x + 1200, y + 200), b.node("ShaderNodeCombineXYZ", x + 1200, y)
    for i in range(3):
        f_dc = b.node("ShaderNodeAttribute", x, y - 300 * i, attribute_name=f"f_dc_{i}", attribute_type=attribute_type)
        c = b.math("MULTIPLY_ADD", x + 200, y - 300 * i, f_dc.outputs["Fac"], ply.SH_C0, 0.5)
        c = b.math("MINIMUM", x + 400, y - 300 * i, b.math("MAXIMUM", x + 300, y - 300 * i, c, 0.0), 1.0)
        b.link(c, srgb.inputs[i])
        b.link(_srgb_to_linear(b, c, x + 550, y - 300 * i), linear.inputs[i])
    opacity = b.node("ShaderNodeAttribute", x, y - 900, attribute_name="opacity", attribute_type=attribute_type)
    # sigmoid(opacity) = 0.5 + 0.5 tanh(opacity / 2)
    alpha = b.math("MULTIPLY_ADD", x + 600, y - 900,
                   b.math("TANH", x + 400, y - 900, b.math("MULTIPLY", x + 200, y - 900, opacity.outputs["Fac"], 0.5)),
                   0.5, 0.5)
    return srgb.outputs[0], linear.outputs[0], alpha


def _unlit_output(b: NodeBuilder, colour, alpha, x: float = 200, y: float = 0) -> None:
    """Emission of `colour` mixed with Transparent by `alpha`, into the material output."""
    emission = b.node("ShaderNodeEmission", x, y + 100)
    b.link(colour, emission.inputs["Color"])
    transparent = b.node("ShaderNodeBsdfTransparent", x, y - 100)
    mix = b.node("ShaderNodeMixShader", x + 200, y)
    b.link(alpha, mix.inputs["Fac"])
    b.link(transparent.outputs[0], mix.inputs[1])
    b.link(emission.outputs[0], mix.inputs[2])
    out = b.node("ShaderNodeOutputMaterial", x + 400, y)
    b.link(mix.outputs[0], out.inputs["Surface"])


def _new_material(name: str) -> bpy.types.Material:
    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:
        mat.use_nodes = True  # Blender < 5.0 starts without nodes
    mat.node_tree.nodes.clear()
    return mat


def splat_material() -> bpy.types.Material:
    """The splats' material (made once, shared): see the module's docstring."""
    mat = bpy.data.materials.get(SPLAT_MATERIAL_NAME)
    if mat is not None:
        return mat
    mat = _new_material(SPLAT_MATERIAL_NAME)
    mat.surface_render_method = "DITHERED"
    mat.use_backface_culling = True
    b = NodeBuilder(mat.node_tree)
    srgb, linear, opacity = dc_colour_and_alpha(b, "INSTANCER")
    # 3DGS blends sRGB values; EEVEE blends what the material emits. Emitting the sRGB values
    # under the Raw view transform blends as the rasterizer does (set_3dgs_colours); emitting
    # linear colours looks right under Standard but darkens semi-transparent edges.
    raw = b.node("ShaderNodeValue", 0, 700, name=RAW_COLOURS_NODE, label="3DGS colours (Raw view)")
    raw.outputs[0].default_value = 0.0
    colour = b.math("MULTIPLY_ADD", 0, 500, b.math("SUBTRACT", -200, 500, srgb, linear, vector=True),
                    raw.outputs[0], linear, vector=True)
    # In object space the ellipsoid is a sphere of SIGMAS and the Gaussian has unit variance.
    p = b.node("ShaderNodeTexCoord", -1400, -900).outputs["Object"]
    incoming = b.node("ShaderNodeNewGeometry", -1400, -1100)
    ray = b.node("ShaderNodeVectorTransform", -1200, -1100, vector_type="VECTOR", convert_from="WORLD",
                 convert_to="OBJECT")
    b.link(incoming.outputs["Incoming"], ray.inputs[0])
    d = b.math("NORMALIZE", -1000, -1100, ray.outputs[0], vector=True)
    along = b.math("DOT_PRODUCT", -800, -1000, p, d, vector=True)
    r2 = b.math("SUBTRACT", -600, -1000, b.math("DOT_PRODUCT", -800, -900, p, p, vector=True),
                b.math("MULTIPLY", -700, -1100, along, along))
    falloff = b.math("EXPONENT", -200, -1000, b.math("MULTIPLY", -400, -1000, r2, -0.5))
    front = b.math("SUBTRACT", -400, -1200, 1.0, incoming.outputs["Backfacing"])
    # 3DGS caps a Gaussian's alpha at 0.99
    alpha = b.math("MINIMUM", 0, -900, b.math("MULTIPLY", -200, -900, opacity, falloff), 0.99)
    _unlit_output(b, colour, b.math("MULTIPLY", 0, -1100, alpha, front))
    return mat


def _input_identifier(group, name: str) -> str:
    return next(item.identifier for item in group.interface.items_tree
                if item.item_type == "SOCKET" and item.in_out == "INPUT" and item.name == name)


def display_group() -> bpy.types.NodeTree:
    """The modifier's node group (made once, shared by every head): opacity threshold, then the
    points as they are or an ellipsoid per point."""
    group = bpy.data.node_groups.get(GROUP_NAME)
    if group is not None:
        # The material may have been deleted since (a purge, a script): point the group at it again.
        group.nodes[SET_MATERIAL_NODE].inputs["Material"].default_value = splat_material()
        return group
    group = bpy.data.node_groups.new(GROUP_NAME, "GeometryNodeTree")
    group.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    for name, socket_type, default, low, high in INPUTS:
        socket = group.interface.new_socket(name, in_out="INPUT", socket_type=socket_type)
        socket.default_value = default
        if low is not None:
            socket.min_value, socket.max_value = low, high
    group.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    b = NodeBuilder(group)
    inputs = b.node("NodeGroupInput", -1400, 0)
    outputs = b.node("NodeGroupOutput", 1000, 0)

    def attribute(name, x, y):
        return _named_float(b, name, x, y)

    # Hide Gaussians fainter than Min Opacity: sigmoid(opacity) < threshold.
    alpha = b.math("MULTIPLY_ADD", -1000, 300, b.math("TANH", -1100, 300, b.math(
        "MULTIPLY", -1200, 300, attribute("opacity", -1400, 300), 0.5)), 0.5, 0.5)
    faint = b.math("LESS_THAN", -900, 300, alpha, inputs.outputs["Min Opacity"])
    kept = b.node("GeometryNodeDeleteGeometry", -700, 100, domain="POINT")
    b.link(inputs.outputs["Geometry"], kept.inputs["Geometry"])
    b.link(faint, kept.inputs["Selection"])

    # One ellipsoid per Gaussian: ico sphere whose faces lie SIGMAS out, rotated and scaled.
    sphere = b.node("GeometryNodeMeshIcoSphere", -700, -150)
    sphere.inputs["Radius"].default_value = SIGMAS / ICO_INRADIUS
    sphere.inputs["Subdivisions"].default_value = 1
    scale = b.node("ShaderNodeCombineXYZ", -500, -500)
    for i in range(3):
        b.link(b.math("EXPONENT", -700, -450 - 120 * i, attribute(f"scale_{i}", -900, -450 - 120 * i)), scale.inputs[i])
    quat = [attribute(f"rot_{i}", -1100, -950 - 120 * i) for i in range(4)]
    norm = b.math("SQRT", -700, -1000, b.math("ADD", -800, -1000, b.math("ADD", -900, -950, b.math(
        "MULTIPLY", -1000, -950, quat[0], quat[0]), b.math("MULTIPLY", -1000, -1050, quat[1], quat[1])), b.math(
        "ADD", -900, -1100, b.math("MULTIPLY", -1000, -1150, quat[2], quat[2]),
        b.math("MULTIPLY", -1000, -1250, quat[3], quat[3]))))
    rotation = b.node("FunctionNodeQuaternionToRotation", -400, -950)
    for i in range(4):
        b.link(b.math("DIVIDE", -550, -950 - 100 * i, quat[i], b.math("MAXIMUM", -600, -1200, norm, 1e-12)),
               rotation.inputs[i])
    material = b.node("GeometryNodeSetMaterial", -500, -150, name=SET_MATERIAL_NODE)
    material.inputs["Material"].default_value = splat_material()
    b.link(sphere.outputs["Mesh"], material.inputs["Geometry"])
    instances = b.node("GeometryNodeInstanceOnPoints", -200, -150)
    b.link(kept.outputs["Geometry"], instances.inputs["Points"])
    b.link(material.outputs["Geometry"], instances.inputs["Instance"])
    b.link(rotation.outputs[0], instances.inputs["Rotation"])
    b.link(scale.outputs[0], instances.inputs["Scale"])

    switch = b.node("GeometryNodeSwitch", 600, 0, input_type="GEOMETRY")
    b.link(inputs.outputs["Splats"], switch.inputs["Switch"])
    b.link(kept.outputs["Geometry"], switch.inputs["False"])
    b.link(instances.outputs["Instances"], switch.inputs["True"])
    b.link(switch.outputs[0], outputs.inputs[0])
    return group


def _named_float(b: NodeBuilder, name: str, x: float, y: float):
    n = b.node("GeometryNodeInputNamedAttribute", x, y, data_type="FLOAT")
    n.inputs["Name"].default_value = name
    return n.outputs["Attribute"]


def display_modifier(ob, create: bool = True):
    """The head's display modifier (added, last in the stack, if `create` and missing)."""
    mod = ob.modifiers.get(MODIFIER_NAME)
    if mod is None and create:
        mod = ob.modifiers.new(MODIFIER_NAME, "NODES")
        mod.node_group = display_group()
    return mod


def set_display(ob, splats: bool | None = None, min_opacity: float | None = None) -> None:
    """Show `ob` as splats or points and/or set its opacity threshold (adds the modifier)."""
    mod = display_modifier(ob)
    if splats is not None:
        mod[_input_identifier(mod.node_group, "Splats")] = bool(splats)
    if min_opacity is not None:
        mod[_input_identifier(mod.node_group, "Min Opacity")] = float(min_opacity)
    ob.update_tag()  # a modifier input set from Python does not tag the object itself


@contextlib.contextmanager
def display_off(ob):
    """Within: `ob` evaluates without its display modifier (the Gaussians as they are stored
    and as other modifiers make them), e.g. for export."""
    mod = display_modifier(ob, create=False) if ob is not None and hasattr(ob, "modifiers") else None
    if mod is None or not mod.show_viewport:
        yield
        return
    mod.show_viewport = False
    try:
        yield
    finally:
        mod.show_viewport = True


def set_3dgs_colours(scene, on: bool) -> None:
    """Colours as a 3DGS viewer shows them (on: the splats emit their sRGB values and the scene's
    view transform is Raw, so blending matches the rasterizer) or as Blender colours (off: linear
    colours, Standard view transform)."""
    splat_material().node_tree.nodes[RAW_COLOURS_NODE].outputs[0].default_value = 1.0 if on else 0.0
    scene.view_settings.view_transform = "Raw" if on else "Standard"

