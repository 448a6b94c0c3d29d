"""Ground truth of a rendered capture (samples/<name>/, or ../shared/data/captures/<name>/): the head's true silhouette.

Used by the benchmark and by the masks tests. The capture's own masks cover the whole bust
(shoulders included); FaceSplat keeps the head and neck, so comparisons cut the bust at the
capture's `neck_cut_z`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import cv2
import numpy as np


@functools.cache
def _head_triangles(capture_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    text = (capture_dir / "head_mesh.ply").read_text()
    header, body = text.split("end_header\n")
    counts = {line.split()[1]: int(line.split()[2]) for line in header.splitlines() if line.startswith("element")}
    numbers = np.array(body.split(), float)
    vertices = numbers[:3 * counts["vertex"]].reshape(-1, 3)  # [V, 3] metres, Z up
    faces = numbers[3 * counts["vertex"]:].reshape(-1, 4)[:, 1:].astype(int)  # [F, 3] (triangles)
    neck_cut_z = json.loads((capture_dir / "scene.json").read_text())["neck_cut_z"]
    return vertices, faces[(vertices[faces][:, :, 2] > neck_cut_z).all(axis=1)]


@functools.cache
def true_cameras(capture_dir: Path) -> dict[int, dict]:
    """The capture's cameras.json by frame: intrinsics and the true world->camera matrix."""
    return {c["frame"]: c for c in json.loads((capture_dir / "cameras.json").read_text())["frames"]}


def true_head_mask(capture_dir: Path, frame_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(head, bust) bool [H, W] at the capture's resolution: the scan's triangles above
    `neck_cut_z`, projected with the frame's camera, filled, and intersected with the true mask
    of the whole bust; and that whole-bust mask."""
    vertices, faces = _head_triangles(Path(capture_dir))
    cam = true_cameras(Path(capture_dir))[frame_index]
    w2c = np.array(cam["w2c"])  # [4, 4] world -> camera, OpenCV axes
    p = vertices @ w2c[:3, :3].T + w2c[:3, 3]
    uv = np.stack([cam["fx"] * p[:, 0] / p[:, 2] + cam["cx"], cam["fy"] * p[:, 1] / p[:, 2] + cam["cy"]], axis=1)
    outlines = np.zeros((cam["height"], cam["width"]), np.uint8)
    cv2.polylines(outlines, np.round(uv[faces] * 16).astype(np.int32), True, 255, shift=4)
    contours, _ = cv2.findContours(outlines, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    head = cv2.drawContours(np.zeros_like(outlines), contours, -1, 255, thickness=-1) > 0
    bust = cv2.imread(str(capture_dir / "masks" / f"{frame_index:04d}.png"), cv2.IMREAD_GRAYSCALE) > 127
    return head & bust, bust
