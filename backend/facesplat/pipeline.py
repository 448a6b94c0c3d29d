"""The pipeline: the stage table, run in order over one workspace, skipping finished stages.

Every stage is `stage(inputs, cfg, ctx) -> outputs` (plain data; ctx carries events, device and
cancellation). The pipeline owns the workspace: for each stage in `STAGES` it reads the inputs,
calls the stage, writes the artefacts, merges the stage's figures into report.json and writes
the stage's marker last. A marker holds the stage's config hash chained with the previous
stage's, so a changed knob re-runs its stage and everything after it; running a stage first
removes the markers of it and every later stage, so an interrupted run never trusts stale
results. `reisolate` is the same machinery re-running one stage.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import interrupt
from .config import Config, config_hash
from .core import events as events_module
from .core.files import atomic_write_bytes
from .errors import Cancelled, DeviceError, FaceSplatError, InputError, StageError
from .provenance import source_record, write_sidecar
from .stage import StageContext
from .workspace import Workspace, atomic_write_json, check_writable, is_disk_full


@dataclass
class Run:
    """One pipeline run's inputs and its lazily read workspace inputs."""

    ws: Workspace
    cfg: Config
    ctx: StageContext
    source: Path | None = None
    is_images: bool = False
    _views: dict = field(default_factory=dict, repr=False)

    def frames(self) -> list[dict]:
        return read_workspace_file(self.ws.frames_json, _read_json_list)

    def faces(self) -> list[dict]:
        return read_workspace_file(self.ws.faces_json, _read_json_list)

    def masks(self) -> list[dict]:
        return read_workspace_file(self.ws.masks_json, _read_json_list)

    def cameras(self, trained: bool = False):
        """SfM's cameras (cameras.json); with `trained`, those the splat was trained with
        (cameras_refined.json where the train stage wrote it, else cameras.json)."""
        from .core.cameras import read_cameras_json, trained_cameras_path

        return read_workspace_file(trained_cameras_path(self.ws.root) if trained else self.ws.cameras_json,
                                   read_cameras_json)

    def views(self, trained: bool = False):
        """Undistorted frames and masks as tensors on the run's device, with SfM's cameras or (with
        `trained`) the trained ones. The pixels are read once per run: only the poses differ."""
        from .views import load_views, with_cameras

        if trained not in self._views:
            cameras = self.cameras(trained)
            if self._views:
                self._views[trained] = with_cameras(next(iter(self._views.values())), cameras)
            else:
                self._views[trained] = load_views(self.ws.root, cameras, self.ctx.device, self.cfg.train.crop_margin)
        return self._views[trained]


# --- the stages: read inputs, call the stage function, write its artefacts -------------------

def _frames(run: Run) -> dict:
    from . import frames

    out_dir = run.ws.fresh_dir(run.ws.frames_dir)
    sfm_dir = run.ws.fresh_dir(run.ws.sfm_frames_dir)
    extract = frames.load_image_folder if run.is_images else frames.extract_video_frames
    records = extract(Path(run.source), out_dir, run.cfg.frames, run.ctx, sfm_dir=sfm_dir)
    atomic_write_json(run.ws.frames_json, records)
    return {"frames_sampled": len(records)}


def _faces(run: Run) -> dict:
    from .faces import detect_faces

    records = detect_faces(run.frames(), run.ws.root, run.cfg.faces, run.ctx)
    atomic_write_json(run.ws.faces_json, records)
    return {"frames_with_face": sum(r["head"] is not None for r in records)}


# SfM's database: descriptors and keypoints of every frame, matches of every pair. COLMAP aborts
# the whole process (SIGABRT, nothing to catch) when SQLite finds the disk full, so check first.
SFM_BASE_BYTES = 32_000_000
SFM_BYTES_PER_FRAME = 3_000_000


def _sfm(run: Run) -> dict:
    from .core.cameras import write_cameras_json
    from .sfm import reconstruct

    frames = run.frames()
    run.ws.require_free_space(SFM_BASE_BYTES + SFM_BYTES_PER_FRAME * len(frames), "structure from motion")
    work_dir = run.ws.fresh_dir(run.ws.sfm_dir)
    result = reconstruct(frames, run.faces(), run.ws.root, work_dir, run.cfg.sfm, run.ctx)
    write_cameras_json(run.ws.cameras_json, result.cameras, sfm_to_world=result.sfm_to_world)
    write_npz(run.ws.points_npz, xyz=result.xyz, rgb=result.rgb)
    return result.summary


def _masks(run: Run) -> dict:
    from .faces import ellipse_from_record
    from .head3d import estimate_head_volume
    from .masks import masks_from_head_volume

    ws, cfg = run.ws, run.cfg.masks
    cameras = run.cameras()
    points = read_workspace_file(ws.points_npz, lambda p: read_npz(p, "xyz"))
    heads = {f["frame_index"]: ellipse_from_record(f.get("head")) for f in run.faces()}
    run.ctx.emit("masks", 0.0, "placing the head in 3D")
    volume = estimate_head_volume(cameras, points["xyz"], [heads.get(c.frame_index) for c in cameras], cfg.head)
    atomic_write_json(ws.head_volume_json, {
        "center": volume.center.tolist(), "rotation": volume.rotation.tolist(),
        "semi_axes": volume.semi_axes.tolist(), "center_from": volume.center_source,
        "size_from": volume.extent_source})
    records = masks_from_head_volume(cameras, volume, ws.root, ws.fresh_dir(ws.masks_dir), cfg, run.ctx)
    atomic_write_json(ws.masks_json, records)
    return {"head_center_from": volume.center_source, "head_size_from": volume.extent_source,
            "head_semi_axes_m": [round(float(a), 4) for a in volume.semi_axes],
            "masks_cut_to_silhouette": sum(r["cut"] for r in records),
            "masks_from_hull": sum(r["shape"] == "hull" for r in records)}


def _train(run: Run) -> dict:
    from . import report
    from .core.cameras import CAMERAS_JSON, write_cameras_json
    from .core.ply import write_splat_ply
    from .render.device import backend_for
    from .train import train

    views = run.views()
    points = read_workspace_file(run.ws.points_npz, lambda p: read_npz(p, "xyz", "rgb"))
    result = train(views, points["xyz"], points["rgb"], run.cfg.train, run.ctx)
    write_splat_ply(run.ws.scene_ply, result.splats)
    # The cameras trained with (refined, or SfM's as they were): what isolation and the add-on use.
    write_cameras_json(run.ws.cameras_refined_json, result.cameras, refined_from=CAMERAS_JSON,
                       pose_lr=run.cfg.train.pose_lr)
    run._views.pop(True, None)
    views = run.views(trained=True)
    figures = report.train_figures(result.params, views, run.cfg.train.sh_degree)
    png = report.preview_png(result.params, views, run.cfg.train.sh_degree)
    if png is not None:
        atomic_write_bytes(run.ws.preview_png, png)
    run.ctx.emit("train", 1.0, f"{len(result.splats)} Gaussians, PSNR in head mask {figures['psnr_in_mask_db']:.2f} dB")
    return {**result.summary, **figures, "renderer": backend_for(run.ctx.device)}


def _isolate(run: Run) -> dict:
    from .core.ply import read_splat_ply, splats_to_ply_bytes
    from .isolate import STAT_KEYS, isolate_head

    ws, cfg = run.ws, run.cfg.isolate
    splats = read_workspace_file(ws.scene_ply, read_splat_ply)
    # The visibility counts belong to one scene.ply, the cameras it is seen through and one rule.
    from .core.cameras import trained_cameras_path

    cache_key = (f"{_file_fingerprint(ws.scene_ply)}:{_file_fingerprint(trained_cameras_path(ws.root))}:"
                 f"{cfg.visible_weight}:{cfg.inside_mask_level}")
    cached = None
    if ws.isolation_npz.exists():
        with contextlib.suppress(OSError, KeyError, ValueError):
            stored = read_npz(ws.isolation_npz, "key", *STAT_KEYS)
            if str(stored.pop("key")) == cache_key:
                cached = stored
    result = isolate_head(splats, lambda: run.views(trained=True), cached, cfg, run.ctx)
    if result.stats is not cached:
        write_npz(ws.isolation_npz, key=np.array(cache_key), **result.stats)
    data = splats_to_ply_bytes(result.head)
    atomic_write_bytes(ws.isolation_ply(cfg.threshold, cfg.min_opacity), data)  # kept: re-isolating loses nothing
    atomic_write_bytes(ws.head_ply, data)
    return result.summary


# --- what a finished stage leaves: `facesplat check` reads it back -----------------------------

def _check_frames(run: Run) -> str:
    frames = run.frames()
    _require_files(run.ws, [f["image"] for f in frames] + [f["sfm_image"] for f in frames if "sfm_image" in f])
    return f"{len(frames)} frames"


def _check_faces(run: Run) -> str:
    faces = run.faces()
    return f"a face found in {sum(f.get('head') is not None for f in faces)} of {len(faces)} frames"


def _check_masks(run: Run) -> str:
    masks = run.masks()
    _require_files(run.ws, [m["mask"] for m in masks])
    read_workspace_file(run.ws.head_volume_json, lambda p: json.loads(p.read_text())["semi_axes"])
    return (f"{len(masks)} masks, {sum(bool(m.get('cut')) for m in masks)} cut to the head's silhouette, "
            f"{sum(m['shape'] == 'hull' for m in masks)} from the visual hull")


def _check_sfm(run: Run) -> str:
    cameras = run.cameras()
    points = read_workspace_file(run.ws.points_npz, lambda p: read_npz(p, "xyz", "rgb"))
    _require_files(run.ws, [c.image for c in cameras])
    return f"{len(cameras)} cameras registered, {len(points['xyz'])} sparse points"


def _check_train(run: Run) -> str:
    from .core.ply import read_splat_ply

    line = f"{len(read_workspace_file(run.ws.scene_ply, read_splat_ply))} Gaussians in scene.ply"
    if run.ws.cameras_refined_json.exists():  # older workspaces have none: cameras.json serves
        line += f", {len(run.cameras(trained=True))} trained cameras"
    return line


def _check_isolate(run: Run) -> str:
    from .core.ply import read_splat_ply

    return f"{len(read_workspace_file(run.ws.head_ply, read_splat_ply))} Gaussians in head.ply"


def _require_files(ws: Workspace, names: list[str]) -> None:
    missing = [n for n in names if not (ws.root / n).is_file()]
    if missing:
        raise StageError(f"{len(missing)} of {len(names)} files are missing (first: {missing[0]})")


@dataclass(frozen=True)
class Stage:
    name: str
    config: Callable[[Run], object]  # what is hashed into the stage's marker
    run: Callable[[Run], dict]  # returns figures for report.json
    check: Callable[[Run], str]  # reads back what the stage left; a one-line summary


STAGES = (
    Stage("frames", lambda r: {"source": source_identity(r.source, r.is_images), "cfg": r.cfg.frames},
          _frames, _check_frames),
    Stage("faces", lambda r: r.cfg.faces, _faces, _check_faces),
    Stage("sfm", lambda r: r.cfg.sfm, _sfm, _check_sfm),
    Stage("masks", lambda r: r.cfg.masks, _masks, _check_masks),
    Stage("train", lambda r: r.cfg.train, _train, _check_train),
    Stage("isolate", lambda r: r.cfg.isolate, _isolate, _check_isolate),
)
assert tuple(s.name for s in STAGES) == events_module.STAGES  # the events' contract names them too
STAGE_BY_NAME = {s.name: s for s in STAGES}


def stage_chain(run: Run, stages=STAGES, chain: str = ""):
    """(stage, its marker's hash) in order: each hash chains the stage's config with the hash of
    the stage before (`chain` is the one before the first)."""
    for stage in stages:
        chain = config_hash(chain, stage.name, stage.config(run))
        yield stage, chain


def run_stages(run: Run, stages=STAGES, chain: str = "") -> dict:
    """Run `stages` in order (each unless its marker matches); `chain` is the hash of the stage
    before the first one. Returns the report."""
    ws = run.ws
    for stage, chain in stage_chain(run, stages, chain):
        if ws.is_done(stage.name, chain):
            run.ctx.emit(stage.name, 1.0, f"{stage.name}: already done, reusing the workspace")
            continue
        ws.invalidate_from(stage.name)
        started = time.time()
        with stage_errors(stage.name):
            figures = stage.run(run)
        seconds = round(time.time() - started, 2)
        report = ws.read_report()
        ws.update_report(**figures, stage_seconds={**report.get("stage_seconds", {}), stage.name: seconds})
        ws.mark_done(stage.name, chain, seconds=seconds)
    return ws.read_report()


INTERRUPTED = "interrupted; the workspace keeps every finished stage: run the same command again to resume"


@contextlib.contextmanager
def stage_errors(stage: str):
    """The one place where what a stage may raise becomes a FaceSplatError (one line, exit code)."""
    try:
        yield
    except FaceSplatError:
        raise
    except KeyboardInterrupt:
        raise Cancelled(INTERRUPTED) from None
    except MemoryError:
        raise DeviceError(f"{stage} ran out of memory; try a smaller --height or --num-frames") from None
    except OSError as err:
        if is_disk_full(err):
            raise InputError(f"the disk is full ({err.filename or 'writing ' + stage}); free some space or choose "
                             "another --workspace / --output, then run the same command again") from None
        # Permissions, a vanished folder, an I/O error: the machine's, not the pipeline's.
        raise InputError(f"{stage}: {err.strerror or err} ({err.filename or 'a workspace file'}); check the "
                         "folder's permissions and the disk, then run the same command again") from None
    except Exception as err:
        if type(err).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
            raise DeviceError("the GPU ran out of memory; try a smaller --height or --num-frames, or --device cpu") from None
        if _caused_by_interrupt(err) or interrupt.requested():  # after Ctrl-C, its consequence
            raise Cancelled(INTERRUPTED) from None
        raise


def _caused_by_interrupt(err: BaseException) -> bool:
    """Ctrl-C / SIGTERM that a library turned into its own error: pycolmap's import, interrupted,
    raises "Cannot import the C++ backend" chained from the KeyboardInterrupt."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def read_workspace_file(path: Path, reader):
    """Read a workspace artefact; a missing or damaged one is the workspace's fault, said in one line."""
    try:
        return reader(path)
    except FaceSplatError:
        raise
    except FileNotFoundError:
        raise StageError(f"{path} is missing; the workspace is incomplete: run 'facesplat check --workspace "
                         f"{path.parent}', or run the same command again") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise StageError(f"{path.name} in the workspace is damaged ({_first_line(err)}); delete it (or the "
                         "workspace) and run the same command again") from None


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _read_json_list(path: Path) -> list:
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise ValueError("expected a list of records")
    return data


def write_npz(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_npz(path: Path, *keys: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in keys}


def _file_fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def source_identity(source: Path, is_images: bool) -> dict:
    """What the frames stage depends on: the video's path, size and modification time, or those
    of the photos a folder holds (only the photos: an output written into the folder is not input)."""
    from .frames import list_images

    source = Path(source)
    if not source.exists():
        raise InputError(f"{source} does not exist; check the path")
    if is_images:
        files = list_images(source)
        return {"path": str(source.resolve()), "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]}
    st = source.stat()
    return {"path": str(source.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns}


def check_output(output: Path, ws: Workspace, source: Path | None = None) -> None:
    """Refuse an --output that would overwrite the input video or a file of the workspace, and one
    that cannot be written (before the long work, not after it)."""
    output = Path(output)
    resolved = output.resolve()
    if source is not None and Path(source).is_file() and resolved.exists() and os.path.samefile(resolved, source):
        raise InputError(f"--output {output} is the input video; choose another file name, e.g. head.ply")
    # The workspace's own head.ply is what --output gets anyway (the Blender add-on asks for it);
    # any other path inside the workspace would overwrite a stage's artefact.
    if resolved != ws.head_ply and (resolved == ws.root or ws.root in resolved.parents):
        raise InputError(f"--output {output} is inside the workspace {ws.root}, whose files the pipeline "
                         "manages; choose a path outside it (or the workspace's head.ply)")
    check_writable(output)


@contextlib.contextmanager
def _reported(ctx: StageContext):
    """Every failure also ends events.jsonl with an error line (what the Blender panel shows)."""
    try:
        yield
    except FaceSplatError as err:
        ctx.emit("error", 0.0, str(err))
        raise
    except KeyboardInterrupt:
        err = Cancelled("interrupted; run the same command again to resume")
        ctx.emit("error", 0.0, str(err))
        raise err from None


def run(source: Path, is_images: bool, output: Path, ws: Workspace, cfg: Config, ctx: StageContext) -> dict:
    """Video (or image folder) -> head.ply at `output`. Returns the report."""
    check_output(output, ws, source)
    ws.prepare()
    with ws.locked(), _reported(ctx):  # locked first: a refused run must not write the other's events
        run_ = Run(ws, cfg, ctx, Path(source), is_images)
        report = run_stages(run_)
        with stage_errors("export"):
            atomic_write_bytes(output, ws.head_ply.read_bytes())
            report = ws.update_report(output=str(Path(output).resolve()), source=source_record(source, is_images))
            write_sidecar(output, report, cfg, ctx.device)  # head.ply -> head.json
            write_report_html(run_)
    ctx.emit("done", 1.0, f"wrote {output} ({report.get('gaussians_after_isolation', '?')} Gaussians)",
             output=str(Path(output).resolve()))
    return report


def reisolate(ws: Workspace, output: Path, cfg: Config, ctx: StageContext) -> dict:
    """Re-run only the isolation stage on a trained workspace (cached visibility: seconds)."""
    with ws.locked(), _reported(ctx):
        chain = _marker_hash(ws, "train")
        if chain is None or not ws.scene_ply.exists():
            raise InputError(f"{ws.root} has no trained scene yet (the train stage has not finished); "
                             "run 'facesplat run' on it first")
        check_output(output, ws)
        run_ = Run(ws, cfg, ctx)
        report = run_stages(run_, [STAGE_BY_NAME["isolate"]], chain=chain)
        with stage_errors("export"):
            atomic_write_bytes(output, ws.head_ply.read_bytes())
            write_sidecar(output, report, cfg, ctx.device)
            write_report_html(run_)
    ctx.emit("done", 1.0, f"wrote {output} ({report['gaussians_after_isolation']} Gaussians)",
             output=str(Path(output).resolve()))
    return report


def write_report_html(run: Run) -> None:
    """report.html in the workspace (report.py): figures, contact sheet, training plot, warnings."""
    from . import report
    from .core.ply import read_splat_ply
    from .views import load_views

    ws = run.ws
    cameras = run.cameras(trained=True)
    picks = [cameras[i] for i in np.unique(np.linspace(0, len(cameras) - 1, min(report.CONTACT_VIEWS, len(cameras)))
                                           .round().astype(int))] if cameras else []
    views = load_views(ws.root, picks, run.ctx.device, run.cfg.train.crop_margin)
    scene, head = read_workspace_file(ws.scene_ply, read_splat_ply), read_workspace_file(ws.head_ply, read_splat_ply)
    tiles = report.contact_tiles(scene, head, views)
    atomic_write_bytes(ws.report_html, report.report_html(ws.read_report(), tiles))


def _marker_hash(ws: Workspace, stage: str) -> str | None:
    try:
        return json.loads(ws.marker(stage).read_text())["config_hash"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_workspace(ws: Workspace) -> tuple[list[str], list[str]]:
    """What state a workspace is in: (a line per stage, problems). A stage whose marker is there
    must have left readable artefacts; the first unfinished stage is where a run resumes."""
    lines, problems = [], []
    run = Run(ws, Config(), StageContext())
    resumes = None
    for stage in STAGES:
        if not ws.marker(stage.name).exists():
            resumes = resumes or stage.name
            lines.append(f"{stage.name:>8}: not done")
            continue
        if resumes is not None:
            problems.append(f"{stage.name} is marked done after the unfinished stage {resumes}")
        try:
            lines.append(f"{stage.name:>8}: done, {stage.check(run)}")
        except FaceSplatError as err:
            lines.append(f"{stage.name:>8}: DAMAGED, {err}")
            problems.append(f"{stage.name}: {err}")
    leftovers = sorted(p.name for p in ws.root.rglob(".*.tmp"))
    if leftovers:
        lines.append(f"leftover temporary files of an interrupted write (harmless): {', '.join(leftovers[:5])}")
    lines.append(f"a run resumes at: {resumes}" if resumes else "every stage is done")
    return lines, problems
