"""The head isolations a workspace keeps, one file per setting. Blender-free.

The backend keeps every isolation it ran in `<workspace>/isolations/head_t{threshold:.2f}_o{min_opacity:.2f}.ply`
(head.ply stays the latest), so re-isolating never loses an earlier result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FOLDER = "isolations"
_NAME = re.compile(r"^head_t(\d+\.\d\d)_o(\d+\.\d\d)\.ply$")


@dataclass(frozen=True)
class KeptIsolation:
    path: Path
    threshold: float
    min_opacity: float

    @property
    def label(self) -> str:
        return f"Threshold {self.threshold:.2f} · Min Opacity {self.min_opacity:.2f}"


def isolation_path(workspace, threshold: float, min_opacity: float) -> Path:
    """Where the backend keeps the isolation made with these settings."""
    return Path(workspace) / FOLDER / f"head_t{threshold:.2f}_o{min_opacity:.2f}.ply"


def kept_isolations(workspace) -> list[KeptIsolation]:
    """The workspace's kept isolations, by threshold then min opacity ([] if none or no workspace)."""
    folder = Path(workspace) / FOLDER if workspace else None
    if folder is None or not folder.is_dir():
        return []
    kept = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_file():
            kept.append(KeptIsolation(path, float(match.group(1)), float(match.group(2))))
    return sorted(kept, key=lambda k: (k.threshold, k.min_opacity))
