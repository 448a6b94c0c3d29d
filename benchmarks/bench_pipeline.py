"""Benchmark the whole pipeline on a rendered capture with ground truth (not a test).

    python benchmarks/bench_pipeline.py [--capture ../shared/data/captures/lps_orbit160]
        [--height 270] [--num-frames 40] [--num-iters 800] [--device auto] [--workspace DIR]

Prints per-stage wall time, peak memory, frames registered, Gaussians kept, and the head-mask
PSNR of head.ply on held-out frames: video frames that were not sampled for training, seen
through the capture's true cameras (aligned to our world by a similarity fitted on the
registered cameras' centres) and compared inside the capture's true masks.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))

from facesplat.core.cameras import read_cameras_json  # noqa: E402
from facesplat.core.ply import read_splat_ply  # noqa: E402
from facesplat.gaussians import activated, params_from_splats  # noqa: E402
from facesplat.render import rasterize  # noqa: E402


def umeyama(src: np.ndarray, dst: np.ndarray):
    """Similarity (s, R, t) minimising |s R src + t - dst|^2."""
    ms, md = src.mean(0), dst.mean(0)
    U, S, Vt = np.linalg.svd((dst - md).T @ (src - ms) / len(src))
    D = np.eye(3)
    D[2, 2] = np.sign(np.linalg.det(U @ Vt))
    R = U @ D @ Vt
    s = (S * np.diag(D)).sum() / (src - ms).var(0).sum()
    return s, R, md - s * R @ ms


def held_out_psnr(ws: Path, capture: Path, video: Path, splats) -> tuple[float, int, float]:
    """Mean PSNR inside the true masks over frames not used for training; also the camera fit error."""
    ours = read_cameras_json(ws / "cameras.json")
    gt_doc = json.loads((capture / "cameras.json").read_text())
    gt = {f["frame"]: f for f in gt_doc["frames"]}
    ours_c = np.array([c.center for c in ours])
    gt_c = np.array([np.linalg.inv(np.array(gt[c.frame_index]["w2c"]))[:3, 3] for c in ours])
    s, R, t = umeyama(gt_c, ours_c)  # ground-truth world -> our world
    fit_error = float(np.linalg.norm(s * gt_c @ R.T + t - ours_c, axis=1).mean())
    used = {c.frame_index for c in ours}
    sampled = {f["frame_index"] for f in json.loads((ws / "frames.json").read_text())}
    width, height = ours[0].width, ours[0].height
    cap = cv2.VideoCapture(str(video))
    p = params_from_splats(splats)
    act = activated(p)
    values, index = [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if index not in sampled and index not in used and index in gt:
            g = gt[index]
            k = width / g["width"]
            # x_gt = (R^T (x_ours - t)) / s, so w2c_ours = w2c_gt . that map, with camera coords scaled by s.
            w2c_gt = np.array(g["w2c"])
            Rg, tg = w2c_gt[:3, :3], w2c_gt[:3, 3]
            w2c = np.eye(4)
            w2c[:3, :3] = Rg @ R.T
            w2c[:3, 3] = s * tg - Rg @ R.T @ t
            K = np.array([[g["fx"] * k, 0, g["cx"] * k], [0, g["fy"] * k, g["cy"] * k], [0, 0, 1]])
            with torch.no_grad():
                render, _, _ = rasterize(act["means"], act["quats"], act["scales"], act["opacities"], act["colors"],
                                         torch.tensor(w2c, dtype=torch.float32), torch.tensor(K, dtype=torch.float32),
                                         width, height, sh_degree=splats.sh_degree, backgrounds=torch.zeros(3))
            image = cv2.cvtColor(cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
            mask = cv2.imread(str(capture / "masks" / f"{index:04d}.png"), cv2.IMREAD_GRAYSCALE)
            mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)[..., None] / 255
            err = mask * (render.clamp(0, 1).numpy() - image.astype(np.float32) / 255) ** 2
            mse = err.sum() / (3 * mask.sum())
            values.append(10 * math.log10(1 / max(mse, 1e-10)))
        index += 1
    return (float(np.mean(values)) if values else float("nan")), len(values), fit_error


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capture", type=Path, default=REPO.parent / "shared/data/captures/lps_orbit160")
    ap.add_argument("--height", type=int, default=270)
    ap.add_argument("--num-frames", type=int, default=40)
    ap.add_argument("--num-iters", type=int, default=800)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workspace", type=Path, default=REPO / "runs" / "bench")
    args = ap.parse_args()
    video = args.capture / "video.mp4"
    out = args.workspace / "head.ply"
    started = time.time()
    cmd = [sys.executable, "-m", "facesplat", "run", "--video", str(video), "--output", str(out),
           "--workspace", str(args.workspace / "ws"), "--num-frames", str(args.num_frames),
           "--height", str(args.height), "--num-iters", str(args.num_iters), "--device", args.device]
    result = subprocess.run(cmd, env={"PYTHONPATH": str(REPO / "backend"), **__import__("os").environ})
    wall = time.time() - started
    if result.returncode != 0:
        print(f"pipeline failed with exit code {result.returncode}")
        return result.returncode
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    ws = args.workspace / "ws"
    report = json.loads((ws / "report.json").read_text())
    psnr, n_held, fit = held_out_psnr(ws, args.capture, video, read_splat_ply(out))
    print(f"\ncapture {args.capture.name}: {args.num_frames} frames at {args.height} px, {args.num_iters} steps, "
          f"device {args.device}, renderer {report.get('renderer')}")
    for stage, seconds in report["stage_seconds"].items():
        print(f"  {stage:8s} {seconds:8.1f} s")
    print(f"  total    {wall:8.1f} s (wall, process start included)")
    print(f"peak memory (RSS)         {peak_mb:.0f} MB")
    print(f"frames registered         {report['frames_registered']} / {report['frames_sampled']} "
          f"(with a face: {report['frames_with_face']})")
    print(f"mean reprojection error   {report['mean_reprojection_error_px']:.3f} px")
    print(f"camera centres vs truth   {fit * 1000:.1f} mm mean after similarity fit")
    print(f"Gaussians                 {report['gaussians_before_isolation']} trained, "
          f"{report['gaussians_after_isolation']} kept")
    print(f"PSNR in mask, train views {report['psnr_in_mask_db']:.2f} dB")
    print(f"PSNR in true mask, held out {psnr:.2f} dB over {n_held} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
