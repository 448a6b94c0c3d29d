"""A picture of a finished workspace from some of its own cameras: each column is one view, the
frame on top, then scene.ply (every trained Gaussian) and head.ply (the isolated head) rendered
from that camera on black. For captures with no ground truth (e.g. the stone-head photos).

    python benchmarks/picture_views.py --workspace WS --output docs/picture.png [--views 3] [--width 360]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

from facesplat.core.cameras import read_cameras_json, trained_cameras_path  # noqa: E402
from facesplat.core.ply import read_splat_ply  # noqa: E402
from facesplat.gaussians import activated, params_from_splats  # noqa: E402
from facesplat.render import rasterize  # noqa: E402
from facesplat.views import load_view  # noqa: E402


@torch.no_grad()
def render(splats, view) -> np.ndarray:
    s = activated(params_from_splats(splats))
    image, _, _ = rasterize(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], view.viewmat, view.K,
                            view.width, view.height, sh_degree=splats.sh_degree, backgrounds=torch.zeros(3))
    return image.clamp(0, 1).numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--views", type=int, default=3)
    ap.add_argument("--width", type=int, default=360, help="width of each column in pixels")
    args = ap.parse_args()

    cameras = read_cameras_json(trained_cameras_path(args.workspace))  # the cameras the splat was trained with
    scene, head = read_splat_ply(args.workspace / "scene.ply"), read_splat_ply(args.workspace / "head.ply")
    picks = np.linspace(0, len(cameras) - 1, min(args.views, len(cameras))).round().astype(int)
    columns = []
    for k in picks:
        view = load_view(args.workspace, cameras[k], "cpu")
        column = np.concatenate([view.image.numpy(), render(scene, view), render(head, view)], axis=0)
        height = round(column.shape[0] * args.width / column.shape[1])
        columns.append(cv2.resize(column, (args.width, height), interpolation=cv2.INTER_AREA))
    height = max(c.shape[0] for c in columns)
    columns = [np.pad(c, ((0, height - c.shape[0]), (0, 4), (0, 0))) for c in columns]
    sheet = (np.concatenate(columns, axis=1) * 255).astype(np.uint8)
    cv2.imwrite(str(args.output), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(f"{len(picks)} views of {args.workspace}: frame (top), scene.ply (middle), head.ply (bottom): {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
