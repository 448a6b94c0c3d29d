"""The provenance sidecar: `head.ply` -> `head.json`, what an archive needs to know about a head.

Written next to every head.ply the CLI writes (pipeline.run and reisolate); its JSON Schema is
docs/provenance.schema.json.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import platform
import struct
from importlib import metadata
from pathlib import Path

from . import __version__
from .config import Config
from .core.provenance import COORDINATE_FRAME, FORMAT, file_record, now_utc, sidecar_path, write_sidecar_json
from .core.provenance import sha256_of as _sha256

__all__ = ["COORDINATE_FRAME", "FORMAT", "sidecar_path", "source_record", "provenance", "write_sidecar"]
PACKAGES = ("torch", "pycolmap", "numba", "numpy", "gsplat")
REPORT_FIGURES = ("frames_sampled", "frames_with_face", "frames_registered", "mean_reprojection_error_px",
                  "gaussians_trained", "gaussians_before_isolation", "psnr_in_mask_db")


def source_record(source: Path, is_images: bool) -> dict:
    """Name, size and SHA-256 of the input video, or of an image folder (its photos' total size; the
    hash of their names and hashes, in sorted order)."""
    from .frames import list_images

    source = Path(source)
    if not is_images:
        return {"kind": "video", "name": source.name, "size": source.stat().st_size, "sha256": _sha256(source),
                "capture_date": capture_date(source)}
    files = list_images(source)
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"{p.name}\0{_sha256(p)}\n".encode())
    return {"kind": "images", "name": source.name, "size": sum(p.stat().st_size for p in files),
            "files": len(files), "sha256": digest.hexdigest()}


MP4_EPOCH = datetime.datetime(1904, 1, 1, tzinfo=datetime.timezone.utc)
MAX_BOXES = 10_000  # a hostile file of tiny boxes ends the walk, not the run


def capture_date(video: Path) -> str | None:
    """When an MP4 / MOV video was recorded: its movie header's (moov/mvhd) creation time, UTC,
    as ISO 8601; None when the container has none (0, as our sample's encoder writes), is no
    ISO-BMFF file, or is damaged. Reads only box headers, no dependency."""
    try:
        with open(video, "rb") as f:
            size = f.seek(0, 2)
            end, offset = size, 0
            for _ in range(MAX_BOXES):
                if offset + 8 > end:
                    return None
                f.seek(offset)
                box_size, kind = struct.unpack(">I4s", f.read(8))
                header = 8
                if box_size == 1:
                    box_size, header = struct.unpack(">Q", f.read(8))[0], 16
                elif box_size == 0:
                    box_size = end - offset
                if box_size < header or offset + box_size > end:
                    return None
                if kind == b"moov":  # descend: mvhd is one of its children
                    offset, end = offset + header, offset + box_size
                    continue
                if kind == b"mvhd":
                    version = f.read(1)[0]
                    f.read(3)  # flags
                    seconds = struct.unpack(">Q" if version == 1 else ">I", f.read(8 if version == 1 else 4))[0]
                    if seconds == 0:
                        return None
                    return (MP4_EPOCH + datetime.timedelta(seconds=seconds)).isoformat()
                offset += box_size
    except (OSError, struct.error, IndexError, OverflowError):
        return None
    return None


def _versions() -> dict:
    versions = {"facesplat": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _ply_sh_degree(path: Path) -> int:
    from .core.ply import read_splat_ply

    return read_splat_ply(path).sh_degree


def provenance(output: Path, report: dict, cfg: Config, device) -> dict:
    output = Path(output)
    return {
        "facesplat_provenance": FORMAT,
        "created": now_utc(),
        "file": file_record(output, _ply_sh_degree(output)),
        "source": report.get("source"),
        "parameters": dataclasses.asdict(cfg),
        "software": _versions(),
        "device": str(device),
        "renderer": report.get("renderer"),
        "stage_seconds": report.get("stage_seconds", {}),
        **{key: report.get(key) for key in REPORT_FIGURES},
        "gaussians_kept": report.get("gaussians_after_isolation"),
        "coordinate_frame": COORDINATE_FRAME,
    }


def write_sidecar(output: Path, report: dict, cfg: Config, device) -> Path:
    """Write `output`'s provenance next to it, atomically; returns the sidecar's path."""
    return write_sidecar_json(output, provenance(output, report, cfg, device))
