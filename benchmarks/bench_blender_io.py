"""Blender import/export speed: 300 000 Gaussians + 40 cameras through the installed extension.

    .venv/bin/python benchmarks/bench_blender_io.py [--gaussians 300000] [--cameras 40] [--repeat 3]

Builds the zip with build.py, installs it into a throwaway Blender profile (bpy from PyPI,
headless), writes a synthetic workspace (head.ply, cameras.json, frame PNGs), then times the
File › Import and File › Export operators end to end (file parsing included). Target: ≤ 2 s each.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "backend")]


def write_png(path: Path, width: int, height: int) -> None:
    """A plain frame image (RGB 90, 120, 160) for a camera's background."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), (160, 120, 90), np.uint8))  # BGR


def make_workspace(ws: Path, n: int, degree: int, n_cameras: int) -> Path:
    from facesplat.core.cameras import CameraFrame, write_cameras_json
    from facesplat.core.ply import Splats, write_splat_ply

    rng = np.random.default_rng(0)
    k = (degree + 1) ** 2 - 1
    write_splat_ply(ws / "head.ply", Splats(rng.normal(0, 0.1, (n, 3)), rng.normal(size=(n, 3)),
                                            rng.normal(0, 0.2, (n, k, 3)), rng.normal(size=n),
                                            rng.normal(-5, 1, (n, 3)), rng.normal(size=(n, 4))))
    frames = []
    for i in range(n_cameras):  # an orbit at 0.6 looking at the origin
        a = 2 * np.pi * i / n_cameras
        eye = np.array([0.6 * np.cos(a), 0.6 * np.sin(a), 0.05])
        z = -eye / np.linalg.norm(eye)
        x = np.cross(z, [0, 0, 1])
        x /= np.linalg.norm(x)
        R = np.stack([x, np.cross(z, x), z])
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = R, -R @ eye
        image = f"frames/{i:06d}.png"
        write_png(ws / image, 96, 54)
        frames.append(CameraFrame(i, image, 960, 540, 660.0, 660.0, 480.0, 270.0, w2c))
    write_cameras_json(ws / "cameras.json", frames)
    return ws / "head.ply"


def clear_scene() -> None:
    import bpy

    for kind in ("objects", "pointclouds", "meshes", "cameras", "images", "collections", "materials"):
        collection = getattr(bpy.data, kind)
        for datablock in list(collection):
            collection.remove(datablock)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gaussians", type=int, default=300_000)
    parser.add_argument("--cameras", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--degrees", type=int, nargs="+", default=[1, 3], help="SH degrees to time")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="facesplat-bench-"))
    os.environ["HOME"] = str(tmp / "home")  # a throwaway Blender profile
    import build

    zip_path = build.build_zip(tmp / "dist")
    import bpy

    bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default", enable_on_install=True)
    print(f"bpy {bpy.app.version_string}, Python {platform.python_version()}, numpy {np.__version__}, "
          f"{os.cpu_count()} cores; {args.gaussians} Gaussians, {args.cameras} cameras; best of {args.repeat}")

    for degree in args.degrees:
        ply_path = make_workspace(tmp / f"ws_sh{degree}", args.gaussians, degree, args.cameras)
        times = {"import": [], "export (identity)": [], "export (rotated, scaled)": []}

        def timed(what, fn):
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[what].append((time.perf_counter() - wall, time.process_time() - cpu))

        for _ in range(args.repeat):
            clear_scene()
            timed("import", lambda: bpy.ops.facesplat.import_ply(filepath=str(ply_path)))
            head = bpy.context.active_object
            assert len(head.data.points) == args.gaussians
            assert sum(ob.type == "CAMERA" for ob in bpy.context.scene.objects) == args.cameras
            timed("export (identity)", lambda: bpy.ops.facesplat.export_ply(filepath=str(tmp / "out.ply")))
            head.rotation_euler, head.location, head.scale = (0.3, 0.5, -1.2), (1, 2, 3), (1.5, 1.5, 1.5)
            bpy.context.view_layer.update()
            timed("export (rotated, scaled)", lambda: bpy.ops.facesplat.export_ply(filepath=str(tmp / "out.ply")))
        size_mb = ply_path.stat().st_size / 1e6
        for what, values in times.items():
            wall, cpu = min(values)
            print(f"SH degree {degree} ({size_mb:.0f} MB): {what:<26} {wall:.2f} s wall, {cpu:.2f} s CPU "
                  f"(wall of each run: {', '.join(f'{v[0]:.2f}' for v in values)})")
    print(f"load average during the run: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
