"""The Blender add-on's splat display against the backend's rasterizer, and its EEVEE render time.

    EGL_PLATFORM=surfaceless .venv/bin/python benchmarks/blender_splat.py \
        [--picture docs/blender_splat.png] [--sizes 5000 50000 300000] [--samples 64] [--size 200]

With --picture: imports tests/data/head_small.ply and a face-forward camera (written as
cameras.json) through the installed extension, renders it in splat mode with EEVEE (headless),
renders the same camera with the backend's rasterizer (outside Blender), prints the PSNR inside
the head and writes the two side by side. With --sizes: the EEVEE render time of one frame of
that many synthetic Gaussians (a head-sized ball). EGL_PLATFORM=surfaceless lets EEVEE render
on a machine without a display (Mesa's llvmpipe on the CPU).

The helpers (face_camera, backend_render, psnr_inside, w_render) are shared with
tests/blender/test_blender_splat.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HEAD_SMALL = REPO / "tests" / "data" / "head_small.ply"


def face_camera(width: int, height: int, distance: float = 0.5, focal: float = 1.6, index: int = 0):
    """A pinhole in front of the face (FaceSplat's world: +Z up, the face towards -Y), looking
    along +Y at the origin; `focal` in image widths."""
    return look_at_camera((0.0, -distance, 0.0), width, height, focal, index)


def look_at_camera(eye, width: int, height: int, focal: float = 1.6, index: int = 0):
    """A pinhole at `eye` looking at the origin, +Z up."""
    from facesplat.core.cameras import CameraFrame

    eye = np.asarray(eye, dtype=np.float64)
    z = -eye / np.linalg.norm(eye)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])  # rows: camera x (right), y (down), z (forward) in world
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, -R @ eye
    return CameraFrame(index, "", width, height, focal * width, focal * width, width / 2, height / 2, w2c)


def backend_render(splats, frame) -> tuple[np.ndarray, np.ndarray]:
    """(rgb [H, W, 3] in [0, 1], alpha [H, W]): the backend's rasterizer, SH degree 0, black
    background (the Blender splat display draws the DC colour only)."""
    import torch

    from facesplat.render import rasterize

    def t(a):
        return torch.tensor(np.asarray(a, dtype=np.float32))

    K = t([[frame.fx, 0, frame.cx], [0, frame.fy, frame.cy], [0, 0, 1]])
    with torch.no_grad():
        rgb, alpha, _ = rasterize(t(splats.means), t(splats.quats), t(np.exp(splats.scales)),
                                  torch.sigmoid(t(splats.opacities)), t(splats.sh0)[:, None, :],
                                  t(frame.world_to_camera), K, frame.width, frame.height, sh_degree=0,
                                  backgrounds=torch.zeros(3))
    return rgb.clamp(0, 1).numpy(), alpha[..., 0].numpy()


def psnr_inside(a: np.ndarray, b: np.ndarray, alpha: np.ndarray, threshold: float = 0.5) -> float:
    """PSNR (dB, peak 1) between two [H, W, 3] images over the pixels where alpha > threshold."""
    inside = alpha > threshold
    mse = float(((a - b) ** 2)[inside].mean())
    return 10 * np.log10(1.0 / max(mse, 1e-12))


def read_png(path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return image[..., :3][..., ::-1].astype(np.float64) / (65535.0 if image.dtype == np.uint16 else 255.0)


# ---- inside Blender (the add-on installed and enabled) --------------------------------------------

def w_render(workspace: str, output: str, samples: int, three_dgs_colours: bool = True) -> dict:
    """Import <workspace>/head.ply and its cameras.json, show it as splats, render the first
    camera with EEVEE into `output` (PNG). Returns timings and what the scene held."""
    import bpy

    for ob in list(bpy.data.objects):  # the startup cube, earlier imports
        bpy.data.objects.remove(ob)
    wall = time.perf_counter()
    assert bpy.ops.facesplat.import_ply(filepath=str(Path(workspace) / "head.ply"),
                                        set_render_size=True) == {"FINISHED"}
    import_s = time.perf_counter() - wall
    head = bpy.context.active_object
    head.facesplat.display = "SPLATS"
    scene = bpy.context.scene
    scene.facesplat.splat_3dgs_colours = three_dgs_colours
    assert bpy.ops.facesplat.frame_head() == {"FINISHED"}
    engines = {item.identifier for item in scene.render.bl_rna.properties["engine"].enum_items}
    scene.render.engine = "BLENDER_EEVEE_NEXT" if "BLENDER_EEVEE_NEXT" in engines else "BLENDER_EEVEE"
    scene.eevee.taa_render_samples = samples
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = False
    if scene.world is None:
        scene.world = bpy.data.worlds.new("World")
    scene.world.color = (0.0, 0.0, 0.0)
    if scene.world.node_tree is not None:
        for node in scene.world.node_tree.nodes:
            if node.bl_idname == "ShaderNodeBackground":
                node.inputs["Color"].default_value = (0.0, 0.0, 0.0, 1.0)
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = str(output)
    depsgraph = bpy.context.evaluated_depsgraph_get()
    instances = sum(1 for inst in depsgraph.object_instances if inst.is_instance)
    wall = time.perf_counter()
    bpy.ops.render.render(write_still=True)
    return {"import_s": import_s, "render_s": time.perf_counter() - wall, "instances": instances,
            "camera": scene.camera.name, "view_transform": scene.view_settings.view_transform,
            "blender": bpy.app.version_string}


# ---- the script ------------------------------------------------------------------------------------

def write_workspace(folder: Path, splats, frame) -> Path:
    from facesplat.core.cameras import write_cameras_json
    from facesplat.core.ply import write_splat_ply

    folder.mkdir(parents=True, exist_ok=True)
    write_splat_ply(folder / "head.ply", splats)
    write_cameras_json(folder / "cameras.json", [frame])
    return folder


def synthetic_head(n: int, seed: int = 0):
    """n Gaussians in a head-sized ellipsoid shell, sized so that they cover it about as densely
    as a trained head does."""
    from facesplat.core.ply import Splats

    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    means = direction * np.array([0.08, 0.1, 0.12]) * rng.uniform(0.85, 1.0, size=(n, 1))
    size = 0.09 / np.sqrt(n)  # about n discs of this radius cover the shell
    scales = np.log(size * rng.uniform(0.5, 1.5, size=(n, 3)))
    return Splats(means, rng.normal(0, 0.8, (n, 3)), np.zeros((n, 0, 3)), rng.normal(1, 1, n), scales,
                  rng.normal(size=(n, 4)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--picture", type=Path, help="write backend | Blender for head_small.ply here")
    parser.add_argument("--sizes", type=int, nargs="*", default=[], help="render-time benchmark sizes")
    parser.add_argument("--samples", type=int, default=64, help="EEVEE render samples")
    parser.add_argument("--size", type=int, default=200, help="render width and height in pixels")
    args = parser.parse_args()
    sys.path[:0] = [str(REPO), str(REPO / "backend"), str(REPO / "tests" / "blender")]
    os.environ.setdefault("EGL_PLATFORM", "surfaceless")
    from blender_worker import BlenderWorker, build_extension

    from facesplat.core.ply import read_splat_ply

    tmp = Path(tempfile.mkdtemp(prefix="facesplat-splat-"))
    worker = BlenderWorker(tmp / "home", build_extension(tmp / "dist"), {"EGL_PLATFORM": "surfaceless"})
    try:
        if args.picture:
            import cv2

            splats, frame = read_splat_ply(HEAD_SMALL), face_camera(args.size, args.size)
            ws = write_workspace(tmp / "head", splats, frame)
            for three_dgs in (True, False):
                out = tmp / f"blender_{three_dgs}.png"
                info = worker.call(w_render, str(ws), str(out), args.samples, three_dgs)
                reference, alpha = backend_render(splats, frame)
                blender = read_png(out)
                print(f"{len(splats)} Gaussians, {args.size} px, {args.samples} samples, view transform "
                      f"{info['view_transform']}: PSNR inside the head {psnr_inside(reference, blender, alpha):.2f} dB, "
                      f"whole image {psnr_inside(reference, blender, np.ones_like(alpha), 0):.2f} dB "
                      f"(render {info['render_s']:.1f} s, Blender {info['blender']})")
                if three_dgs:
                    side = np.concatenate([reference, blender, np.clip(np.abs(reference - blender) * 4, 0, 1)], axis=1)
                    args.picture.parent.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(args.picture), (side[..., ::-1] * 255 + 0.5).astype(np.uint8))
                    print(f"wrote {args.picture} (backend | Blender EEVEE | 4 x difference)")
        for n in args.sizes:
            ws = write_workspace(tmp / f"n{n}", synthetic_head(n), face_camera(args.size, args.size))
            info = worker.call(w_render, str(ws), str(tmp / f"n{n}.png"), args.samples, True)
            print(f"{n:>7} Gaussians: import {info['import_s']:.2f} s, EEVEE render of one {args.size} px frame "
                  f"({args.samples} samples) {info['render_s']:.1f} s wall")
    finally:
        worker.close()
    print(f"load average: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
