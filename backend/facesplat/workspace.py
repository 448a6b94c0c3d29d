"""The workspace folder: every path of a run, atomic writes and stage markers.

Layout (also documented in docs/workspace.md):

    events.jsonl            progress, one JSON object per line (read by the Blender add-on)
    frames/NNNNNN.png       sampled frames; NNNNNN is the 0-based frame index in the source
    frames.json             [{frame_index, image, width, height, sharpness}]
    masks/NNNNNN.png        soft head masks (uint8, 255 = head), same names as frames/
    masks.json              per frame: detected or interpolated, ellipse parameters
    sfm/                    COLMAP database and the kept sparse model (binary)
    cameras.json            registered frames: intrinsics + world_to_camera (OpenCV)
    points.npz              sparse points in the same world frame: xyz [P,3], rgb [P,3] uint8
    scene.ply               every trained Gaussian (3DGS PLY)
    isolation.npz           per-Gaussian visibility statistics (re-isolation needs no re-render)
    head.ply                the isolated head (3DGS PLY)
    report.json             per-stage wall time, counts, reprojection error, loss, PSNR
    stages/<stage>.done.json  written last by each stage: its config hash; a match skips the stage
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .core.events import STAGES
from .core.files import atomic_write_bytes
from .errors import InputError


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
    """All paths of one run. Creating it creates the folder."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "stages").mkdir(exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create workspace {self.root}: {e.strerror}; choose another --workspace") from None

    # files
    events = property(lambda self: self.root / "events.jsonl")
    frames_dir = property(lambda self: self.root / "frames")
    frames_json = property(lambda self: self.root / "frames.json")
    masks_dir = property(lambda self: self.root / "masks")
    masks_json = property(lambda self: self.root / "masks.json")
    sfm_dir = property(lambda self: self.root / "sfm")
    cameras_json = property(lambda self: self.root / "cameras.json")
    points_npz = property(lambda self: self.root / "points.npz")
    scene_ply = property(lambda self: self.root / "scene.ply")
    isolation_npz = property(lambda self: self.root / "isolation.npz")
    head_ply = property(lambda self: self.root / "head.ply")
    report_json = property(lambda self: self.root / "report.json")
    preview_png = property(lambda self: self.root / "preview.png")

    def frame_name(self, frame_index: int) -> str:
        return f"{frame_index:06d}.png"

    # stage markers
    def marker(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.done.json"

    def is_done(self, stage: str, config_hash: str) -> bool:
        m = self.marker(stage)
        if not m.exists():
            return False
        try:
            return json.loads(m.read_text()).get("config_hash") == config_hash
        except (OSError, ValueError):
            return False

    def mark_done(self, stage: str, config_hash: str, **info) -> None:
        atomic_write_json(self.marker(stage), {"stage": stage, "config_hash": config_hash, **info})

    def invalidate_from(self, stage: str) -> None:
        """Remove the markers of `stage` and every later stage."""
        for s in STAGES[STAGES.index(stage):]:
            self.marker(s).unlink(missing_ok=True)

    # report
    def read_report(self) -> dict:
        try:
            return json.loads(self.report_json.read_text())
        except (OSError, ValueError):
            return {}

    def update_report(self, **fields) -> dict:
        report = self.read_report()
        report.update(fields)
        atomic_write_json(self.report_json, report)
        return report
