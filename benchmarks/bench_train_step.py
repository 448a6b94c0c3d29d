"""Seconds per training step on a trained scene, for two versions of the code, interleaved (not a test).

    python benchmarks/bench_train_step.py --workspace WS [--scene WS/scene.ply] [--base REV]
        [--steps 40] [--rounds 3] [--downscale 1] [--set bg_tile_share=1.0 ...]

Runs `train.train` from the scene (from the sparse points if there is none) for `--steps` steps at
one resolution, in a fresh process per version, `--rounds` times, alternating the versions: the machine
is shared, so only ratios taken side by side mean something. Prints per round and version the
wall and CPU seconds (this process's threads) per step. Versions: this checkout's backend and
`--base` (a git revision, exported with `git archive`). Growth is capped at the scene's size so
both versions render the same number of Gaussians. `--set key=value` overrides TrainConfig fields
of this checkout's run only (a field the base does not know is dropped for it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import dataclasses, json, sys, time
import numpy as np, torch
import facesplat.train as T
from facesplat.config import TrainConfig
from facesplat.core.cameras import read_cameras_json
from facesplat.core.ply import read_splat_ply
from facesplat.gaussians import params_from_splats
from facesplat.stage import StageContext
from facesplat.views import load_views
from pathlib import Path
args = json.loads(sys.argv[1])
ws = Path(args["workspace"])
views = load_views(ws, read_cameras_json(ws / "cameras.json"), torch.device("cpu"))
if Path(args["scene"]).exists():
    scene = read_splat_ply(args["scene"])
    T.init_splats = lambda *a, **k: torch.nn.ParameterDict(  # start from the trained scene
        {name: torch.nn.Parameter(v) for name, v in params_from_splats(scene).items()})
    cap = len(scene)
else:
    cap = 100_000  # from the sparse points
known = {f.name for f in dataclasses.fields(TrainConfig)}
overrides = {k: v for k, v in args["overrides"].items() if k in known}
cfg = TrainConfig(num_iters=args["steps"], coarse_fraction=1.0 if args["downscale"] == 2 else 0.0,
                  sh_start_fraction=0.0, max_gaussians=cap, **overrides)
with np.load(ws / "points.npz") as p:
    xyz, rgb = p["xyz"], p["rgb"]
T.train(views[:2], xyz, rgb, TrainConfig(num_iters=2, coarse_fraction=0.0, max_gaussians=cap,
        **{k: v for k, v in overrides.items() if k != "num_iters"}), StageContext(device=torch.device("cpu")))  # warm-up
w0, c0 = time.perf_counter(), time.process_time()
result = T.train(views, xyz, rgb, cfg, StageContext(device=torch.device("cpu")))
w1, c1 = time.perf_counter(), time.process_time()
print(json.dumps({"wall": (w1 - w0) / cfg.num_iters, "cpu": (c1 - c0) / cfg.num_iters,
                  "gaussians": result.summary["gaussians_trained"], "loss": result.summary["final_loss"],
                  "torch_threads": torch.get_num_threads()}))
"""


def export(rev: str, dest: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "backend"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "backend"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--scene", type=Path)
    ap.add_argument("--base", default="HEAD", help="git revision to compare with ('' for none)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--downscale", type=int, default=1, choices=(1, 2))
    ap.add_argument("--set", action="append", default=[], help="key=value TrainConfig override (this checkout)")
    args = ap.parse_args()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    job = {"workspace": str(args.workspace), "scene": str(args.scene or args.workspace / "scene.ply"),
           "steps": args.steps, "downscale": args.downscale}
    with tempfile.TemporaryDirectory() as tmp:
        versions = {"this": (REPO / "backend", overrides)}
        if args.base:
            versions[f"base {args.base}"] = (export(args.base, Path(tmp)), {})
        print(f"{args.steps} steps at 1/{args.downscale} resolution, load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} cores; overrides (this): {overrides or 'none'}")
        results = {name: [] for name in versions}
        for r in range(args.rounds):
            for name, (backend, over) in versions.items():
                out = subprocess.run([sys.executable, "-c", CHILD, json.dumps({**job, "overrides": over})],
                                     env={**os.environ, "PYTHONPATH": str(backend)}, capture_output=True, text=True)
                if out.returncode:
                    print(out.stderr[-3000:])
                    return out.returncode
                res = json.loads(out.stdout.strip().splitlines()[-1])
                results[name].append(res)
                print(f"round {r + 1} {name:>16}: {res['wall']:.3f} s/step wall, {res['cpu']:.3f} s/step CPU, "
                      f"{res['gaussians']} Gaussians, loss {res['loss']:.4f}", flush=True)
        if args.base:
            (a, b) = results.values()
            for key in ("wall", "cpu"):
                ratios = [y[key] / x[key] for x, y in zip(a, b)]
                print(f"base / this, {key}: " + ", ".join(f"{q:.2f}" for q in ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
