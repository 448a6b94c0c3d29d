"""The pipeline: the stages in order over one workspace, skipping the finished ones.

Each stage's marker holds a hash of its configuration chained with the previous stage's hash, so
a changed parameter re-runs its stage and everything after it. Running a stage first removes the
markers of it and every later stage, so an interrupted run never trusts stale results.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from . import frames as frames_stage
from . import masks as masks_stage
from .config import Config, config_hash
from .core.events import EventWriter
from .errors import Cancelled, DeviceError, FaceSplatError, InputError
from .workspace import Workspace, atomic_write_bytes, check_writable


def source_identity(source: Path) -> dict:
    """What the frames stage depends on: the input's path, size and modification time."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source} does not exist; check the path")
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file())
        return {"path": str(source.resolve()), "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]}
    st = source.stat()
    return {"path": str(source.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns}


class _Stages:
    """Runs stage functions with markers, timing and the report."""

    def __init__(self, ws: Workspace, events: EventWriter):
        self.ws, self.events, self.hash = ws, events, ""

    def run(self, stage: str, cfg, fn, load):
        """Run `fn()` unless the stage's marker matches; either way return the stage's result."""
        self.hash = config_hash(self.hash, stage, cfg)
        if self.ws.is_done(stage, self.hash):
            self.events.emit(stage, 1.0, f"{stage}: already done, reusing the workspace")
            return load()
        self.ws.invalidate_from(stage)
        started = time.time()
        result = fn()
        seconds = round(time.time() - started, 2)
        report = self.ws.read_report()
        self.ws.update_report(stage_seconds={**report.get("stage_seconds", {}), stage: seconds})
        self.ws.mark_done(stage, self.hash, seconds=seconds)
        return result


def _read_json(path: Path):
    return json.loads(path.read_text())


def run(source: Path, is_images: bool, output: Path, ws: Workspace, cfg: Config,
        events: EventWriter, device_name: str | None = None) -> dict:
    """Video (or image folder) -> head.ply at `output`. Returns the report."""
    import torch  # heavy imports stay out of `facesplat --help`

    from .core.cameras import read_cameras_json
    from .device import renderer_for, resolve_device
    from .isolate import isolate_head
    from .sfm import load_points, reconstruct
    from .train import train
    from .views import load_views

    check_writable(output)  # before the long work, not after it
    identity = source_identity(source)
    device = resolve_device(device_name or cfg.device)
    renderer = renderer_for(device)
    stages = _Stages(ws, events)
    try:
        def do_frames():
            if is_images:
                return frames_stage.load_image_folder(Path(source), ws, cfg.frames, events)
            return frames_stage.extract_video_frames(Path(source), ws, cfg.frames, events)

        frames = stages.run("frames", {"source": identity, "cfg": cfg.frames}, do_frames,
                            lambda: _read_json(ws.frames_json))
        masks = stages.run("masks", cfg.masks,
                           lambda: masks_stage.compute_masks(frames, ws, cfg.masks, events),
                           lambda: _read_json(ws.masks_json))

        def do_sfm():
            summary = reconstruct(frames, masks, ws, cfg.sfm, events)
            ws.update_report(frames_sampled=len(frames),
                             frames_with_face=sum(m["source"] != "interpolated" for m in masks), **summary)

        stages.run("sfm", cfg.sfm, do_sfm, lambda: None)
        cameras = read_cameras_json(ws.cameras_json)

        def do_train():
            xyz, rgb = load_points(ws.points_npz)
            ws.update_report(**train(cameras, xyz, rgb, ws, cfg.train, device, renderer, events))

        stages.run("train", cfg.train, do_train, lambda: None)
        stages.run("isolate", cfg.isolate,
                   lambda: ws.update_report(**isolate_head(
                       ws, cfg.isolate, lambda: load_views(ws.root, cameras, device), renderer, device, events)),
                   lambda: None)
        atomic_write_bytes(output, ws.head_ply.read_bytes())
    except KeyboardInterrupt:
        err = Cancelled("interrupted; the workspace keeps every finished stage: run the same command again to resume")
        events.emit("error", 0.0, str(err))
        raise err from None
    except torch.cuda.OutOfMemoryError:
        err = DeviceError("the GPU ran out of memory; try a smaller --height or --num-frames, or --device cpu")
        events.emit("error", 0.0, str(err))
        raise err from None
    except FaceSplatError as err:
        events.emit("error", 0.0, str(err))
        raise
    report = ws.update_report(output=str(Path(output).resolve()))
    events.emit("done", 1.0, f"wrote {output} ({report.get('gaussians_after_isolation', '?')} Gaussians)",
                output=str(Path(output).resolve()))
    return report


def reisolate(ws: Workspace, output: Path, cfg: Config, events: EventWriter, device_name: str | None = None) -> dict:
    """Re-run only the isolation on a finished workspace (cached visibility: seconds)."""
    from .core.cameras import read_cameras_json
    from .device import renderer_for, resolve_device
    from .isolate import isolate_head
    from .views import load_views

    if not ws.scene_ply.exists() or not ws.cameras_json.exists():
        raise InputError(f"{ws.root} has no trained scene (scene.ply, cameras.json); run 'facesplat run' first")
    check_writable(output)
    device = resolve_device(device_name or "cpu", say=lambda msg: None)
    cameras = read_cameras_json(ws.cameras_json)
    try:
        summary = isolate_head(ws, cfg.isolate, lambda: load_views(ws.root, cameras, device),
                               renderer_for(device), device, events)
        atomic_write_bytes(output, ws.head_ply.read_bytes())
    except KeyboardInterrupt:
        events.emit("error", 0.0, "isolation interrupted")
        raise Cancelled("isolation interrupted; head.ply is unchanged") from None
    except FaceSplatError as err:
        events.emit("error", 0.0, str(err))
        raise
    ws.update_report(**summary)
    events.emit("done", 1.0, f"wrote {output} ({summary['gaussians_after_isolation']} Gaussians)",
                output=str(Path(output).resolve()))
    return summary
