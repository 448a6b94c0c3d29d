"""The workspace folder: every path of a run, atomic writes and stage markers.

Layout (also documented in docs/workspace.md):

    events.jsonl            progress, one JSON object per line (read by the Blender add-on)
    frames/NNNNNN.png       sampled frames; NNNNNN is the 0-based frame index in the source
    frames.json             [{frame_index, image, width, height, sharpness}]
    faces.json              per frame: the face a detector found (or null) and its head ellipse
    head_volume.json        the head's ellipsoid in the world frame: centre, axes, what placed and sized it
    masks/NNNNNN.png        soft head masks (uint8, 255 = head), same names as frames/
    masks.json              per registered frame: the projected head ellipse, the mask's shape (hull, ...)
    sfm/                    COLMAP database and the kept sparse model (binary)
    cameras.json            registered frames: intrinsics + world_to_camera (OpenCV), as SfM placed them
    cameras_refined.json    the same cameras as the train stage left them (pose refinement); what
                            isolation, the report and the Blender import use when it is there
    points.npz              sparse points in the same world frame: xyz [P,3], rgb [P,3] uint8
    scene.ply               every trained Gaussian (3DGS PLY)
    isolation.npz           per-Gaussian visibility statistics (re-isolation needs no re-render)
    head.ply                the isolated head (3DGS PLY)
    isolations/head_t0.30_o0.05.ply  every isolation run on this scene, by threshold and min opacity
    report.json             per-stage wall time, counts, reprojection error, loss, PSNR
    stages/<stage>.done.json  written last by each stage: its config hash; a match skips the stage
    facesplat-workspace.json  says the folder is a FaceSplat workspace (we never write into others)
    .lock                   held (flock) by the run using the workspace; the kernel frees it if that run dies
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .core.cameras import CAMERAS_JSON, REFINED_CAMERAS_JSON
from .core.events import STAGES
from .core.files import atomic_write_bytes
from .errors import InputError

WORKSPACE_MARKER = "facesplat-workspace.json"
WORKSPACE_FORMAT = 2  # 2: sfm before masks; stage markers of format 1 re-run from the masks stage


def frame_name(frame_index: int) -> str:
    """File name of a frame and of its mask: the 0-based frame index in the source."""
    return f"{frame_index:06d}.png"


def is_disk_full(err: OSError) -> bool:
    return getattr(err, "errno", None) in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def check_writable(path: Path) -> None:
    """Fail early (before the long work) if `path` cannot be created."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.exists() and path.is_dir():
        raise InputError(f"output {path} is a folder; give a file name such as {path / 'head.ply'}")
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create the folder for {path}: {e.strerror}; choose another --output") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".facesplat-check-", dir=parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise InputError(f"cannot write to {parent}: {e.strerror}; choose another --output") from None


class Workspace:
    """All paths of one run. `Workspace(root).prepare()` before a run writes (makes the folder, or
    accepts one of ours); `Workspace.open(root)` for commands that need an existing one (creates
    nothing)."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    def prepare(self) -> "Workspace":
        ws = self
        if ws.root.exists() and not ws.root.is_dir():
            raise InputError(f"workspace {ws.root} is a file; choose a folder for --workspace")
        if ws.root.is_dir() and any(ws.root.iterdir()) and not ws.is_ours():
            raise InputError(f"{ws.root} is not empty and is not a FaceSplat workspace; FaceSplat never writes "
                             "into a folder of other files: choose a new or empty folder for --workspace")
        try:
            ws.root.mkdir(parents=True, exist_ok=True)
            (ws.root / "stages").mkdir(exist_ok=True)
            if not ws.marker_file.exists():
                atomic_write_json(ws.marker_file, {"facesplat_workspace": WORKSPACE_FORMAT,
                                                   "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        except OSError as e:
            raise InputError(f"cannot create workspace {ws.root}: {e.strerror}; choose another --workspace") from None
        return ws

    @classmethod
    def open(cls, root: Path) -> "Workspace":
        ws = cls(root)
        if not ws.root.exists():
            raise InputError(f"workspace {ws.root} does not exist; give the folder of a finished 'facesplat run'")
        if not ws.root.is_dir():
            raise InputError(f"workspace {ws.root} is a file, not a folder; give the folder of a 'facesplat run'")
        if not ws.is_ours():
            raise InputError(f"{ws.root} is not a FaceSplat workspace (no {WORKSPACE_MARKER}); "
                             "give the --workspace folder of a 'facesplat run'")
        return ws

    def is_ours(self) -> bool:
        """A workspace of ours: it has the marker file, or (made before the marker existed) a
        stages/ folder holding nothing but stage markers."""
        if self.marker_file.is_file():
            return True
        stages = self.root / "stages"
        return stages.is_dir() and all(p.name.endswith(".done.json") for p in stages.iterdir()) \
            and self.events.exists()

    @property
    def format(self) -> int:
        try:
            return int(json.loads(self.marker_file.read_text()).get("facesplat_workspace", 1))
        except (OSError, ValueError, TypeError, AttributeError):
            return 1

    def set_format(self, version: int) -> None:
        atomic_write_json(self.marker_file, {**_read_json_or_empty(self.marker_file), "facesplat_workspace": version})

    # files
    marker_file = property(lambda self: self.root / WORKSPACE_MARKER)
    lock_file = property(lambda self: self.root / ".lock")
    events = property(lambda self: self.root / "events.jsonl")
    frames_dir = property(lambda self: self.root / "frames")
    frames_json = property(lambda self: self.root / "frames.json")
    sfm_frames_dir = property(lambda self: self.root / "frames_sfm")
    faces_json = property(lambda self: self.root / "faces.json")
    masks_dir = property(lambda self: self.root / "masks")
    head_volume_json = property(lambda self: self.root / "head_volume.json")
    masks_json = property(lambda self: self.root / "masks.json")
    sfm_dir = property(lambda self: self.root / "sfm")
    cameras_json = property(lambda self: self.root / CAMERAS_JSON)
    cameras_refined_json = property(lambda self: self.root / REFINED_CAMERAS_JSON)
    points_npz = property(lambda self: self.root / "points.npz")
    scene_ply = property(lambda self: self.root / "scene.ply")
    isolation_npz = property(lambda self: self.root / "isolation.npz")
    head_ply = property(lambda self: self.root / "head.ply")
    isolations_dir = property(lambda self: self.root / "isolations")
    report_json = property(lambda self: self.root / "report.json")
    preview_png = property(lambda self: self.root / "preview.png")
    report_html = property(lambda self: self.root / "report.html")

    def isolation_ply(self, threshold: float, min_opacity: float) -> Path:
        """Where the isolation with these settings is kept (re-isolating never loses one)."""
        return self.isolations_dir / f"head_t{threshold:.2f}_o{min_opacity:.2f}.ply"

    def frame_name(self, frame_index: int) -> str:
        return frame_name(frame_index)

    def fresh_dir(self, path: Path) -> Path:
        """Empty `path` (a folder of this workspace that one stage owns) for a stage re-run."""
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    # locking
    @contextlib.contextmanager
    def locked(self):
        """Hold the workspace for one run. A second run on it is refused at once; a lock left by a
        killed run is no lock (the kernel drops a dead process's flock)."""
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise InputError(f"cannot use workspace {self.root}: {e.strerror}; check that it is writable, or "
                             "choose another --workspace") from None
        try:
            if not _try_lock(fd):
                holder = self.lock_file.read_text(errors="replace").strip() or "?"
                raise InputError(f"workspace {self.root} is in use by another facesplat run (pid {holder}); "
                                 "wait for it to finish, or choose another --workspace")
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield self
        finally:
            os.close(fd)  # closing drops the lock

    # free space
    def require_free_space(self, needed_bytes: int, before: str) -> None:
        free = shutil.disk_usage(self.root).free
        if free < needed_bytes:
            raise InputError(f"only {free / 1e6:.0f} MB free in {self.root}, {before} needs about "
                             f"{needed_bytes / 1e6:.0f} MB; free some disk space or choose another --workspace")

    # stage markers
    def marker(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.done.json"

    def is_done(self, stage: str, config_hash: str) -> bool:
        return _read_json_or_empty(self.marker(stage)).get("config_hash") == config_hash

    def mark_done(self, stage: str, config_hash: str, **info) -> None:
        atomic_write_json(self.marker(stage), {"stage": stage, "config_hash": config_hash, **info})

    def invalidate_from(self, stage: str) -> None:
        """Remove the markers of `stage` and every later stage, and the train stage's refined
        cameras when it is among them: they override cameras.json for their readers, so a stale
        copy must not outlive the training it came from."""
        later = STAGES[STAGES.index(stage):]
        for s in later:
            self.marker(s).unlink(missing_ok=True)
        if "train" in later:
            self.cameras_refined_json.unlink(missing_ok=True)

    def done_stages(self) -> list[str]:
        return [s for s in STAGES if self.marker(s).exists()]

    # report
    def read_report(self) -> dict:
        return _read_json_or_empty(self.report_json)

    def update_report(self, **fields) -> dict:
        report = self.read_report()
        report.update(fields)
        atomic_write_json(self.report_json, report)
        return report


def _read_json_or_empty(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
