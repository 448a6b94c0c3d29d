"""The captures of a `facesplat batch` output folder, read from its batch.json. Blender-free.

batch.json (written by backend/facesplat/batch.py, see docs/batch.md) lists every capture with
its status (done, failed, interrupted, pending), one-line cause, figures and paths. The file may
come from another machine or a cluster whose shared folder is mounted elsewhere, so paths are
resolved against the folder it is in (see `_resolve`), and everything in it is checked: a bad or
hostile file gives one ValueError line, never a traceback or a half-filled list.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

BATCH_FILE = "batch.json"
MAX_BYTES = 64 * 2**20  # a batch.json of 100 000 captures is ~60 MB; anything bigger is not one
STATUSES = ("done", "failed", "interrupted", "pending")
FIGURES = ("frames_registered", "frames_sampled", "gaussians", "psnr_in_mask_db", "seconds")


@dataclass(frozen=True)
class BatchCapture:
    name: str
    status: str
    cause: str
    frames_registered: int | None
    frames_sampled: int | None
    gaussians: int | None
    psnr_in_mask_db: float | None
    seconds: float | None
    workspace: Path  # resolved: <batch folder>/<name>/workspace for a batch made here

    @property
    def figures(self) -> str:
        """'4100 Gaussians · 12/12 frames · PSNR 21.3 dB · 95 s', what is known of it."""
        parts = []
        if self.gaussians is not None:
            parts.append(f"{self.gaussians} Gaussians")
        if self.frames_registered is not None and self.frames_sampled is not None:
            parts.append(f"{self.frames_registered}/{self.frames_sampled} frames")
        if self.psnr_in_mask_db is not None:
            parts.append(f"PSNR {self.psnr_in_mask_db:.1f} dB")
        if self.seconds is not None:
            parts.append(f"{self.seconds:.0f} s")
        return " · ".join(parts)

    def why_not_importable(self) -> str:
        """'' when the capture can be imported as a finished run, else why not (one line)."""
        if self.status != "done":
            cause = f": {self.cause}" if self.cause else ""
            advice = {"failed": "fix it and run the same batch again",
                      "interrupted": "run the same batch again to finish it",
                      "pending": "wait until the batch has finished it"}[self.status]
            state = "failed" if self.status == "failed" else f"is {self.status}"
            return f"capture {self.name} {state}{cause}; {advice}"
        for needed in ("head.ply", "cameras.json"):
            if not (self.workspace / needed).is_file():
                return (f"capture {self.name} is done but {self.workspace / needed} is missing; run the same "
                        "batch again to restore it")
        return ""


def batch_file(folder) -> Path:
    return Path(folder) / BATCH_FILE


def read_batch(folder) -> list[BatchCapture]:
    """The captures listed in `folder`/batch.json, in its order. Raises ValueError (one line)."""
    path = batch_file(folder)
    where = f"{path}: not a FaceSplat batch.json"
    advice = "choose the --output-dir of a 'facesplat batch' run"
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ValueError(f"{where} ({size / 2**20:.0f} MB is far too big for one); {advice}")
        text = path.read_bytes().decode("utf-8")
        doc = json.loads(text, parse_constant=_refuse_constant)
    except FileNotFoundError:
        raise ValueError(f"no {BATCH_FILE} in {folder}; {advice}") from None
    except OSError as err:
        raise ValueError(f"cannot read {path} ({err.strerror or err}); check the folder's permissions") from None
    except RecursionError:
        raise ValueError(f"{where} (nested too deeply); {advice}") from None
    except ValueError as err:  # bad UTF-8, bad JSON, NaN/Infinity
        raise ValueError(f"{where} ({str(err).splitlines()[0][:200]}); {advice}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("captures"), list):
        raise ValueError(f"{where} (no 'captures' list); {advice}")
    recorded = doc.get("output_dir")
    recorded = Path(recorded) if isinstance(recorded, str) and recorded and "\0" not in recorded else None
    captures, seen = [], set()
    for i, entry in enumerate(doc["captures"]):
        capture = _capture(entry, f"{where} (capture {i + 1}", advice, Path(folder), recorded)
        if capture.name in seen:
            raise ValueError(f"{where} (two captures are named {capture.name!r}); {advice}")
        seen.add(capture.name)
        captures.append(capture)
    return captures


def find_capture(folder, name: str) -> BatchCapture:
    """The capture called `name` in `folder`/batch.json. Raises ValueError (one line)."""
    for capture in read_batch(folder):
        if capture.name == name:
            return capture
    raise ValueError(f"{batch_file(folder)} has no capture named {name!r}; press Refresh and pick one from the list")


def _refuse_constant(constant: str):
    raise ValueError(f"{constant} is not a number batch.json can hold")


def _capture(entry, where: str, advice: str, folder: Path, recorded: Path | None) -> BatchCapture:
    def bad(what: str) -> ValueError:
        return ValueError(f"{where}: {what}); {advice}")

    if not isinstance(entry, dict):
        raise bad("not an object")
    name = entry.get("name")
    # A folder name of the batch: the capture's files are <folder>/<name>/...
    if not isinstance(name, str) or not name or name in (".", "..") or any(c in name for c in "/\\\0") \
            or len(name) > 255:
        raise bad(f"name {str(name)[:80]!r} is not a folder name")
    status = entry.get("status")
    if status not in STATUSES:
        raise bad(f"{name}: status {str(status)[:40]!r} is not one of {', '.join(STATUSES)}")
    cause = entry.get("cause") or ""
    if not isinstance(cause, str):
        raise bad(f"{name}: cause is not text")
    figures = {}
    for key in FIGURES:
        value = entry.get(key)
        integral = key in ("frames_registered", "frames_sampled", "gaussians")
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool)) or \
            (not integral and isinstance(value, float) and math.isfinite(value))
        if not ok or (value is not None and value < 0 and key != "psnr_in_mask_db"):
            raise bad(f"{name}: {key} {repr(value)[:40]} is not a {'count' if integral else 'number'}")
        figures[key] = value
    workspace = entry.get("workspace") or ""
    if not isinstance(workspace, str) or "\0" in workspace:
        raise bad(f"{name}: workspace is not a path")
    resolved = _resolve(workspace, folder, recorded, folder / name / "workspace")
    if resolved is None:
        raise bad(f"{name}: workspace {workspace[:200]!r} is outside the batch folder")
    cause = " ".join(cause.split())[:500]  # one line, whatever the file holds
    return BatchCapture(name, status, cause, **figures,
                        workspace=resolved)


def _resolve(stored: str, folder: Path, recorded: Path | None, default: Path) -> Path | None:
    """Where a stored path is now, inside the batch folder (None: it points outside it). A relative
    path is read from the batch folder; an absolute one under the folder the batch was written in
    (its output_dir) is moved to this folder, so a batch copied or mounted elsewhere still finds
    its captures. `facesplat batch` writes every path inside its output_dir; one elsewhere is not
    followed (Re-isolate writes into the workspace)."""
    if not stored:
        return default
    path = Path(stored)
    if path.is_absolute():
        if recorded is None or not recorded.is_absolute():
            return None
        try:
            path = path.relative_to(recorded)
        except ValueError:
            return None
    if ".." in path.parts:
        return None
    return folder / path
