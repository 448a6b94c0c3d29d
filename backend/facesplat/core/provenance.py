"""The provenance sidecar's Blender-free, torch-free part: `head.ply` -> `head.json`, what an
archive needs to know about a splat file. The backend's provenance.py adds a run's figures; the
add-on's Export (facesplat_blender/exporter.py) adds what Blender did. Schema: docs/provenance.schema.json.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
from pathlib import Path

import numpy as np

from .files import atomic_write_bytes

FORMAT = 1
COORDINATE_FRAME = {
    "axes": "right-handed; +Z up, the face towards -Y, the head near the origin",
    "units": "metres, approximate (scaled so the median camera distance is 0.5 m)",
    "up": "+Z", "face_towards": "-Y", "scale_basis": "median camera distance = 0.5"}
FILE_FORMATS = {"ply": "3DGS PLY (binary little-endian, Inria property order)",
                "html": "FaceSplat HTML viewer (the splat inside as SPZ version 2, base64)"}


def sidecar_path(output: Path) -> Path:
    """head.ply -> head.json; any other file (head.html) -> head.html.json, so that a PLY and a
    page exported side by side keep one sidecar each; never the output itself."""
    output = Path(output)
    if output.suffix.lower() == ".ply":
        return output.with_suffix(".json")
    return output.with_name(output.name + (".provenance.json" if output.suffix.lower() == ".json" else ".json"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def file_record(path: Path, sh_degree: int, file_format: str = "ply") -> dict:
    path = Path(path)
    return {"name": path.name, "size": path.stat().st_size, "sha256": sha256_of(path),
            "format": FILE_FORMATS[file_format], "sh_degree": int(sh_degree)}


def export_record(program: str, object_name: str, matrix_world, applied: bool) -> dict:
    """What an export from Blender did: the object's world matrix when it is not the identity,
    and whether it was baked into the file (else the file holds the object's local frame)."""
    matrix = np.asarray(matrix_world, dtype=np.float64)
    record = {"program": program, "object": object_name, "python": platform.python_version(),
              "numpy": np.__version__}
    if not np.allclose(matrix, np.eye(4), atol=1e-9):
        record["transform"] = {"matrix_world": [[round(float(v), 9) for v in row] for row in matrix],
                               "applied": bool(applied)}
    return record


def write_sidecar_json(output: Path, record: dict) -> Path:
    """Write `record` next to `output`, atomically; returns the sidecar's path."""
    path = sidecar_path(output)
    atomic_write_bytes(path, (json.dumps(record, indent=1) + "\n").encode("utf-8"))
    return path


def exported_provenance(output: Path, sh_degree: int, file_format: str, export: dict) -> dict:
    """The sidecar of a file exported outside a run (Blender): the file, the frame, the export."""
    return {"facesplat_provenance": FORMAT, "created": now_utc(),
            "file": file_record(output, sh_degree, file_format),
            "coordinate_frame": COORDINATE_FRAME, "export": export}
