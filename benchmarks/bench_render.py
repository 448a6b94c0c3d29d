"""Speed of the CPU rasterizer backends ("cpu", "torch") on a head-sized scene.

20k Gaussians of ~4 mm spread over a head-sized ellipsoid shell, seen from 0.6 m at 480x270
(fx = 330). Prints the number of tile intersections, then forward and backward times per backend:
median wall time of a few runs after a warm-up (which also loads or compiles the numba kernels),
and this process's CPU time (all threads), which machine load inflates less.

    PYTHONPATH=backend .venv/bin/python benchmarks/bench_render.py [--n 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numba
import torch

from facesplat.render import rasterize
from facesplat.render.projection import prepare


def head_scene(n: int, seed: int = 0) -> dict:
    """Random Gaussians on an ellipsoid shell (16 x 22 x 20 cm) 0.6 m in front of the camera."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    radii = torch.tensor([0.08, 0.11, 0.10]) * (1.0 + 0.03 * torch.randn(n, 1, generator=g))
    return {
        "means": dirs * radii + torch.tensor([0.0, 0.0, 0.6]),
        "quats": torch.randn(n, 4, generator=g),
        "scales": 0.004 * torch.exp(0.3 * torch.randn(n, 3, generator=g)),
        "opacities": torch.rand(n, generator=g) * 0.9 + 0.05,
        "colors": torch.rand(n, 3, generator=g),
        "viewmat": torch.eye(4),
        "K": torch.tensor([[330.0, 0.0, 240.0], [0.0, 330.0, 135.0], [0.0, 0.0, 1.0]]),
        "width": 480,
        "height": 270,
    }


def time_backend(scene: dict, backend: str, repeats: int) -> dict[str, float]:
    """Median wall and CPU (all threads of this process) seconds of forward and backward."""
    runs = []
    for _ in range(repeats + 1):  # the first run warms up
        params = {k: scene[k].clone().requires_grad_() for k in ("means", "quats", "scales", "opacities", "colors")}
        w0, c0 = time.perf_counter(), time.process_time()
        render, alpha, _ = rasterize(**params, **{k: scene[k] for k in ("viewmat", "K", "width", "height")}, backend=backend)
        w1, c1 = time.perf_counter(), time.process_time()
        (render.square().sum() + alpha.sum()).backward()
        w2, c2 = time.perf_counter(), time.process_time()
        runs.append({"forward": w1 - w0, "forward_cpu": c1 - c0, "backward": w2 - w1, "backward_cpu": c2 - c1})
    return {key: statistics.median(run[key] for run in runs[1:]) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    scene = head_scene(args.n)
    times = []
    with torch.no_grad():
        for _ in range(args.repeats + 1):
            t0 = time.perf_counter()
            p = prepare(*(scene[k] for k in ("means", "quats", "scales", "opacities", "colors", "viewmat", "K")),
                        scene["width"], scene["height"], None)  # fmt: skip
            times.append(time.perf_counter() - t0)
    t_prepare = statistics.median(times[1:])
    visible = int((p.radii > 0).all(-1).sum())
    print(f"{args.n} Gaussians, {visible} visible, {p.gauss_ids.numel()} tile intersections, "
          f"{scene['width']}x{scene['height']}; torch {torch.__version__} threads {torch.get_num_threads()}, "
          f"numba {numba.__version__} threads {numba.get_num_threads()}")  # fmt: skip
    print(f"projection + SH + binning alone (no grad): {t_prepare:.3f} s; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
    for backend in ("cpu", "torch"):
        t = time_backend(scene, backend, args.repeats)
        print(f"{backend:>5}: forward {t['forward']:.3f} s ({t['forward_cpu']:.3f} s CPU), "
              f"backward {t['backward']:.3f} s ({t['backward_cpu']:.3f} s CPU), median of {args.repeats}")  # fmt: skip


if __name__ == "__main__":
    main()
