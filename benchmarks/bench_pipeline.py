"""Benchmark the whole pipeline on a rendered capture with ground truth (not a test).

    python benchmarks/bench_pipeline.py [--capture samples/lps_orbit160]
        [--preset preview] [--height 270] [--num-frames 40] [--num-iters 800] [--device auto] [--workspace DIR]
    python benchmarks/bench_pipeline.py --preset standard --height 540 --num-iters 3000   # the defaults
    python benchmarks/bench_pipeline.py --base REV [--runs defaults,preview] [--share-prefix] [--device cpu]

Prints per-stage wall time, peak memory, frames registered, Gaussians kept, and, on held-out
frames (video frames that were not sampled for training, seen through the capture's true
cameras aligned to our world; see `held_out_metrics`), the PSNR of head.ply inside the true head
silhouette and the fog: rendered alpha where the truth has no bust.

With `--base REV` it runs each of `--runs` (defaults: 540 px, 3000 steps, the Blender panel's;
preview: 270 px, 800 steps) twice, with the code of git revision REV (exported by `git archive`)
and with this checkout's, one after the other, and prints them side by side with the ratios of
wall and CPU time (the machine is shared: ratios mean more than times). Both versions' numba
kernels are compiled before either is timed, and both are scored by this checkout's held-out
metrics. `--share-prefix` runs frames, faces, sfm and masks once, with the
base's code, and copies that workspace for this checkout's run, so that only train and isolate
run again (their markers hash the train config, which differs) and both train on the same SfM.
That holds only where both versions hash frames..masks alike: against a revision before
`FramesConfig.sfm_height` (c5f9fb9 and older) this checkout re-runs every stage.
"""

from __future__ import annotations

import argparse
import json
import math
import os
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

from facesplat.core.cameras import read_cameras_json, trained_cameras_path, world_to_camera_after_similarity  # noqa: E402
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
    # The cameras the splat was trained with (refined by training where it refines them).
    ours = sorted(read_cameras_json(trained_cameras_path(ws)), key=lambda c: c.frame_index)
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


RUNS = {"defaults": (540, 3000, "standard"), "preview": (270, 800, "preview")}  # height, steps, preset


def run_pipeline(backend: Path, capture: Path, root: Path, height: int, num_frames: int, num_iters: int,
                 device: str, extra: list[str] = ()) -> dict:
    """One `facesplat run` with the package in `backend`, workspace root / "ws"; times and figures."""
    video = capture / "video.mp4"
    out = root / "head.ply"
    cmd = [sys.executable, "-m", "facesplat", "run", "--video", str(video), "--output", str(out),
           "--workspace", str(root / "ws"), "--num-frames", str(num_frames), "--height", str(height),
           "--num-iters", str(num_iters), "--device", device, *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    result = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(backend)})
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"pipeline failed with exit code {result.returncode}: {' '.join(cmd)}")
    report = json.loads((root / "ws" / "report.json").read_text())
    return {"wall": wall, "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "peak_mb": after.ru_maxrss / 1024, "report": report, "ws": root / "ws", "out": out}


WARM_UP = """
import torch
from facesplat.render import rasterize
torch.manual_seed(0)
n = 200
for sh_degree in (0, 1):
    params = [torch.rand(n, 3) + torch.tensor([0.0, 0.0, 2.0]), torch.randn(n, 4), 0.05 * torch.rand(n, 3),
              torch.rand(n), torch.rand(n, 4, 3)]
    for p in params:
        p.requires_grad_()
    K = torch.tensor([[60.0, 0, 32], [0, 60.0, 32], [0, 0, 1]])
    render, alpha, _ = rasterize(*params, torch.eye(4), K, 64, 64, sh_degree=sh_degree,
                                 backgrounds=torch.rand(3), tile_mask=torch.ones(4, 4, dtype=torch.bool))
    (render.sum() + alpha.sum()).backward()
"""


def warm_kernels(backend: Path) -> None:
    """Compile (and cache) the version's numba kernels before it is timed: a fresh checkout or
    `git archive` export compiles them in its first training otherwise (tens of seconds)."""
    subprocess.run([sys.executable, "-c", WARM_UP], env={**os.environ, "PYTHONPATH": str(backend)},
                   check=True)


def compare(args) -> int:
    """Each of args.runs with the base revision's code and with this checkout's, side by side."""
    import shutil
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.base, "backend"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        versions = [(f"base {args.base}", Path(tmp) / "backend"), ("this", REPO / "backend")]
        for _, backend in versions:
            warm_kernels(backend)
        for name in args.runs.split(","):
            height, iters, preset = RUNS[name]
            results = []
            for k, (label, backend) in enumerate(versions):
                root = args.workspace / f"{name}_{'base' if k == 0 else 'this'}"
                if root.exists():
                    shutil.rmtree(root)
                if k == 1 and args.share_prefix:
                    shutil.copytree(results[0]["ws"], root / "ws")
                print(f"\n=== {name} ({height} px, {iters} steps), {label} ===", flush=True)
                res = run_pipeline(backend, args.capture, root, height, args.num_frames, iters, args.device,
                                   ["--preset", preset])
                held = held_out_metrics(res["ws"], args.capture, args.capture / "video.mp4", read_splat_ply(res["out"]))
                res.update(psnr=held["psnr"], fog=held["fog"], frames=held["frames"])
                results.append(res)
            rows.append((name, height, iters, results))
    load = os.getloadavg()
    print(f"\ncapture {args.capture.name}, {args.num_frames} frames, device {args.device}; "
          f"load average now {load[0]:.1f} / {load[2]:.1f} (1 / 15 min) on {os.cpu_count()} cores"
          + ("; frames..masks run once (base) and shared" if args.share_prefix else ""))
    stages = ("frames", "faces", "sfm", "masks", "train", "isolate")
    for name, height, iters, (base, this) in rows:
        print(f"\n{name}: {height} px, {iters} steps        {'base ' + args.base:>22} {'this':>22}   base/this")
        for stage in stages:
            a, b = base["report"]["stage_seconds"].get(stage), this["report"]["stage_seconds"].get(stage)
            if a is None or b is None:
                continue
            print(f"  {stage:30s} {a:20.1f} s {b:20.1f} s   {a / max(b, 1e-9):8.2f}")
        ta = sum(base["report"]["stage_seconds"].get(s, 0.0) for s in stages)
        tb = sum(this["report"]["stage_seconds"].get(s, 0.0) for s in stages)
        print(f"  {'stages, total':30s} {ta:20.1f} s {tb:20.1f} s   {ta / max(tb, 1e-9):8.2f}")
        print(f"  {'this process: wall':30s} {base['wall']:20.1f} s {this['wall']:20.1f} s   "
              f"{base['wall'] / this['wall']:8.2f}")
        print(f"  {'this process: CPU':30s} {base['cpu']:20.1f} s {this['cpu']:20.1f} s   "
              f"{base['cpu'] / max(this['cpu'], 1e-9):8.2f}")
        print(f"  {'Gaussians trained / kept':30s} {base['report']['gaussians_before_isolation']:>12} / "
              f"{base['report']['gaussians_after_isolation']:<7} {this['report']['gaussians_before_isolation']:>12} / "
              f"{this['report']['gaussians_after_isolation']:<7}")
        print(f"  {'held-out PSNR, true head':30s} {base['psnr']:17.2f} dB {this['psnr']:17.2f} dB   "
              f"({base['frames']} frames)")
        print(f"  {'fog off the true head':30s} {base['fog']:20.3f} {this['fog']:22.3f}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capture", type=Path, default=REPO / "samples" / "lps_orbit160")
    ap.add_argument("--height", type=int, default=270, help="(the preview's; 540 with --preset standard)")
    ap.add_argument("--num-frames", type=int, default=40)
    ap.add_argument("--num-iters", type=int, default=800)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workspace", type=Path, default=REPO / "runs" / "bench")
    ap.add_argument("--ellipse-masks", action="store_true", help="pass --ellipse-masks to facesplat run")
    ap.add_argument("--preset", default="preview",
                    help="passed to facesplat run; --height, --num-iters, --num-frames still win (standard: the defaults)")
    ap.add_argument("--picture", type=Path, help="write held-out frames above renders of scene.ply and head.ply to this PNG")
    ap.add_argument("--base", help="compare with this git revision's code (side by side; see the docstring)")
    ap.add_argument("--runs", default="defaults,preview", help="with --base: which of " + ", ".join(RUNS))
    ap.add_argument("--share-prefix", action="store_true",
                    help="with --base: run frames..masks once and train both versions on that workspace")
    args = ap.parse_args()
    if args.base:
        return compare(args)
    video = args.capture / "video.mp4"
    out = args.workspace / "head.ply"
    res = run_pipeline(REPO / "backend", args.capture, args.workspace, args.height, args.num_frames,
                       args.num_iters, args.device, (["--ellipse-masks"] if args.ellipse_masks else [])
                       + ["--preset", args.preset])
    wall, peak_mb, report, ws = res["wall"], res["peak_mb"], res["report"], res["ws"]
    held = held_out_metrics(ws, args.capture, video, read_splat_ply(out),
                            read_splat_ply(ws / "scene.ply") if args.picture else None)
    print(f"\ncapture {args.capture.name}: preset {args.preset}, {args.num_frames} frames at {args.height} px, "
          f"{args.num_iters} steps, device {args.device}, renderer {report.get('renderer')}")
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
