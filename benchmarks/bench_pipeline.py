"""Benchmark the whole pipeline on a rendered capture with ground truth (not a test).

    python benchmarks/bench_pipeline.py [--capture samples/lps_orbit160]
        [--height 270] [--num-frames 40] [--num-iters 800] [--device auto] [--workspace DIR]

Prints per-stage wall time, peak memory, frames registered, Gaussians kept, and, on held-out
frames (video frames that were not sampled for training, seen through the capture's true
cameras aligned to our world; see `held_out_metrics`), the PSNR of head.ply inside the true head
silhouette and the fog: rendered alpha where the truth has no bust.
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
sys.path.insert(0, str(REPO / "benchmarks"))

from facesplat.core.cameras import read_cameras_json, world_to_camera_after_similarity  # noqa: E402
from facesplat.core.ply import read_splat_ply  # noqa: E402
from facesplat.gaussians import activated, params_from_splats  # noqa: E402
from facesplat.render import rasterize  # noqa: E402
from facesplat.views import undistort  # noqa: E402

from capture_truth import true_cameras, true_head_mask  # noqa: E402


def umeyama(src: np.ndarray, dst: np.ndarray):
    """Similarity (s, R, t) minimising |s R src + t - dst|^2."""
    ms, md = src.mean(0), dst.mean(0)
    U, S, Vt = np.linalg.svd((dst - md).T @ (src - ms) / len(src))
    D = np.eye(3)
    D[2, 2] = np.sign(np.linalg.det(U @ Vt))
    R = U @ D @ Vt
    s = (S * np.diag(D)).sum() / (src - ms).var(0).sum()
    return s, R, md - s * R @ ms


FOG_DISTANCE = 0.02


def held_out_metrics(ws: Path, capture: Path, video: Path, splats, scene=None) -> dict:
    """Quality of head.ply on video frames that were not used for training.

    Each held-out frame is seen through its true camera, mapped into our world by a similarity
    fitted on the registered cameras' centres, then corrected by the pose residual (ours vs mapped
    truth) interpolated from its two nearest registered frames; rendered with our own intrinsics
    and compared with the frame undistorted by our lens model. Returns the mean PSNR inside the
    true head mask (cut at the neck), the fog (rendered alpha away from the true bust, in units of
    the head's area), how many frames, and the camera-centre fit error.
    """
    ours = sorted(read_cameras_json(ws / "cameras.json"), key=lambda c: c.frame_index)
    gt = true_cameras(capture)
    ours_c = np.array([c.center for c in ours])
    gt_c = np.array([np.linalg.inv(np.array(gt[c.frame_index]["w2c"]))[:3, 3] for c in ours])
    s, R, t = umeyama(gt_c, ours_c)  # ground-truth world -> our world
    fit_error = float(np.linalg.norm(s * gt_c @ R.T + t - ours_c, axis=1).mean())

    def mapped_w2c(index: int) -> np.ndarray:
        return world_to_camera_after_similarity(np.array(gt[index]["w2c"]), s, R, t)

    residuals = {c.frame_index: c.world_to_camera @ np.linalg.inv(mapped_w2c(c.frame_index)) for c in ours}
    registered = np.array(sorted(residuals))
    used = set(residuals) | {f["frame_index"] for f in json.loads((ws / "frames.json").read_text())}
    camera = ours[0]  # one shared camera
    K = torch.tensor(camera.K, dtype=torch.float32)
    models = [(activated(params_from_splats(m)), m.sh_degree) for m in ([scene] if scene else []) + [splats]]
    psnrs, fogs, pictures = [], [], []
    cap = cv2.VideoCapture(str(video))
    index = -1
    while True:
        ok, frame = cap.read()
        index += 1
        if not ok:
            break
        if index in used or index not in gt:
            continue
        after = min(np.searchsorted(registered, index), len(registered) - 1)
        before = max(after - 1, 0)
        a, b = registered[before], registered[after]
        w = 0.0 if a == b else float(np.clip((index - a) / (b - a), 0, 1))
        rotvec = (1 - w) * cv2.Rodrigues(residuals[a][:3, :3])[0] + w * cv2.Rodrigues(residuals[b][:3, :3])[0]
        residual = np.eye(4)
        residual[:3, :3] = cv2.Rodrigues(rotvec)[0]
        residual[:3, 3] = (1 - w) * residuals[a][:3, 3] + w * residuals[b][:3, 3]
        w2c = residual @ mapped_w2c(index)
        with torch.no_grad():
            renders = [rasterize(act["means"], act["quats"], act["scales"], act["opacities"], act["colors"],
                                 torch.tensor(w2c, dtype=torch.float32), K, camera.width, camera.height,
                                 sh_degree=sh_degree, backgrounds=torch.zeros(3))[:2] for act, sh_degree in models]
        render, alpha = renders[-1]
        size = (camera.width, camera.height)
        image = cv2.cvtColor(cv2.resize(frame, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        image = undistort(image, camera).astype(np.float32) / 255
        head, bust = (undistort(cv2.resize(m.astype(np.float32), size, interpolation=cv2.INTER_AREA), camera)[..., None]
                      for m in true_head_mask(capture, index))
        mse = (head * (render.clamp(0, 1).numpy() - image) ** 2).sum() / (3 * head.sum())
        psnrs.append(10 * math.log10(1 / max(mse, 1e-10)))
        # Fog: alpha farther than FOG_DISTANCE of the frame height from the true bust (nearer is the
        # edge's softness, and the pose mapping's pixel of error).
        reach = 2 * round(FOG_DISTANCE * camera.height) + 1
        near_bust = cv2.dilate(bust, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (reach, reach)))[..., None]
        fogs.append(float((alpha.numpy() * (1 - near_bust)).sum() / head.sum()))
        pictures.append(np.concatenate([image] + [r.clamp(0, 1).numpy() for r, _ in renders], axis=0))
    picks = np.linspace(0, len(pictures) - 1, min(4, len(pictures))).round().astype(int)
    sheet = np.concatenate([pictures[k] for k in picks], axis=1) if pictures else None
    return {"psnr": float(np.mean(psnrs)) if psnrs else float("nan"), "fog": float(np.mean(fogs)) if fogs else float("nan"),
            "frames": len(psnrs), "fit_error": fit_error, "sheet": sheet}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capture", type=Path, default=REPO / "samples" / "lps_orbit160")
    ap.add_argument("--height", type=int, default=270)
    ap.add_argument("--num-frames", type=int, default=40)
    ap.add_argument("--num-iters", type=int, default=800)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workspace", type=Path, default=REPO / "runs" / "bench")
    ap.add_argument("--ellipse-masks", action="store_true", help="pass --ellipse-masks to facesplat run")
    ap.add_argument("--picture", type=Path, help="write held-out frames above renders of scene.ply and head.ply to this PNG")
    args = ap.parse_args()
    video = args.capture / "video.mp4"
    out = args.workspace / "head.ply"
    started = time.time()
    cmd = [sys.executable, "-m", "facesplat", "run", "--video", str(video), "--output", str(out),
           "--workspace", str(args.workspace / "ws"), "--num-frames", str(args.num_frames),
           "--height", str(args.height), "--num-iters", str(args.num_iters), "--device", args.device]
    if args.ellipse_masks:
        cmd.append("--ellipse-masks")
    result = subprocess.run(cmd, env={"PYTHONPATH": str(REPO / "backend"), **__import__("os").environ})
    wall = time.time() - started
    if result.returncode != 0:
        print(f"pipeline failed with exit code {result.returncode}")
        return result.returncode
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    ws = args.workspace / "ws"
    report = json.loads((ws / "report.json").read_text())
    held = held_out_metrics(ws, args.capture, video, read_splat_ply(out),
                            read_splat_ply(ws / "scene.ply") if args.picture else None)
    print(f"\ncapture {args.capture.name}: {args.num_frames} frames at {args.height} px, {args.num_iters} steps, "
          f"device {args.device}, renderer {report.get('renderer')}")
    for stage, seconds in report["stage_seconds"].items():
        print(f"  {stage:8s} {seconds:8.1f} s")
    print(f"  total    {wall:8.1f} s (wall, process start included)")
    print(f"peak memory (RSS)         {peak_mb:.0f} MB")
    print(f"frames registered         {report['frames_registered']} / {report['frames_sampled']} "
          f"(with a face: {report['frames_with_face']})")
    print(f"mean reprojection error   {report['mean_reprojection_error_px']:.3f} px")
    print(f"camera centres vs truth   {held['fit_error'] * 1000:.1f} mm mean after similarity fit")
    print(f"Gaussians                 {report['gaussians_before_isolation']} trained, "
          f"{report['gaussians_after_isolation']} kept")
    print(f"PSNR in mask, train views {report['psnr_in_mask_db']:.2f} dB")
    print(f"PSNR in true head, held out {held['psnr']:.2f} dB over {held['frames']} frames")
    print(f"fog off the true head     {held['fog']:.3f} (rendered alpha > {FOG_DISTANCE:.0%} of the frame height off the true bust / head area)")
    if args.picture and held["sheet"] is not None:
        cv2.imwrite(str(args.picture), cv2.cvtColor((held["sheet"] * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
        print(f"held-out frames (top), scene.ply (middle), head.ply (bottom): {args.picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
