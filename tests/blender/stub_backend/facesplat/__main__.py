"""`python -m facesplat run|isolate ...` as the real CLI takes it; writes events.jsonl, frames/,
cameras.json (the sample capture's true cameras), scene.ply and head.ply, slowly enough to cancel."""

import argparse
import importlib.util
import json
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[4]
LPS = REPO.parent / "shared" / "data" / "captures" / "lps_orbit160"  # the sample capture


def _core(name):
    spec = importlib.util.spec_from_file_location(f"stub_core_{name}", REPO / "backend/facesplat/core" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


ply, cams, events_mod = _core("ply"), _core("cameras"), _core("events")


def write_png(path, width, height):
    raw = b"".join(b"\x00" + bytes([90, 120, 160]) * width for _ in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def splats(n, seed=0):
    rng = np.random.default_rng(seed)
    return ply.Splats(rng.normal(0, 0.08, (n, 3)), rng.normal(size=(n, 3)), rng.normal(0, 0.2, (n, 3, 3)),
                      rng.normal(2, 1, n), rng.normal(-5, 0.5, (n, 3)), rng.normal(size=(n, 4)))


def run(args, events):
    ws = args.workspace
    if args.video.read_bytes()[4:8] != b"ftyp":
        events.emit("error", 0.0, f"cannot read {args.video} as a video; give an .mp4 or .mov file")
        print(f"facesplat: error: cannot read {args.video} as a video; give an .mp4 or .mov file", file=sys.stderr)
        return 2
    doc = json.loads((LPS / "cameras.json").read_text())["frames"][:: max(1, 72 // args.num_frames)]
    frames = []
    for i, f in enumerate(doc):
        events.emit("frames", (i + 1) / len(doc), f"frame {i + 1} of {len(doc)}")
        image = f"frames/{f['frame']:06d}.png"
        write_png(ws / image, 16, 9)
        frames.append(cams.CameraFrame(f["frame"], image, f["width"], f["height"], f["fx"], f["fy"], f["cx"], f["cy"], f["w2c"]))
        time.sleep(0.1)
    cams.write_cameras_json(ws / "cameras.json", frames)
    for step in range(args.num_iters):
        events.emit("train", (step + 1) / args.num_iters, f"step {step + 1} of {args.num_iters}")
        time.sleep(0.02)
    ply.write_splat_ply(ws / "scene.ply", splats(2000))
    ply.write_splat_ply(args.output, splats(int(2000 * (1 - args.threshold))))
    events.emit("done", 1.0, f"wrote {args.output}", output=str(args.output))
    return 0


def isolate(args, events):
    events.emit("isolate", 0.5, "checking views")
    ply.write_splat_ply(args.output, splats(int(2000 * (1 - args.threshold))))
    events.emit("done", 1.0, f"wrote {args.output}", output=str(args.output))
    return 0


def main():
    parser = argparse.ArgumentParser(prog="facesplat")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--video", type=Path, required=True)
    for name, kind in (("--num-frames", int), ("--height", int), ("--num-iters", int)):
        r.add_argument(name, type=kind, required=True)
    r.add_argument("--device", required=True)
    i = sub.add_parser("isolate")
    for p in (r, i):
        p.add_argument("--workspace", type=Path, required=True)
        p.add_argument("--output", type=Path, required=True)
        p.add_argument("--threshold", type=float, default=0.3)
        p.add_argument("--min-opacity", type=float, default=0.05)
    args = parser.parse_args()
    args.workspace.mkdir(parents=True, exist_ok=True)
    events = events_mod.EventWriter(args.workspace / "events.jsonl")
    return (run if args.command == "run" else isolate)(args, events)


sys.exit(main())
