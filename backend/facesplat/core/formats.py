"""One entry point for every splat format: read by content, write by the output's suffix."""

from __future__ import annotations

from pathlib import Path

from .compressed_ply import SUFFIX as COMPRESSED_SUFFIX
from .compressed_ply import is_compressed_ply_header, read_compressed_ply, write_compressed_ply
from .ply import PlyFormatError, Splats, read_splat_ply, write_splat_ply
from .spz import read_splat_spz, write_splat_spz
from .viewer_html import is_viewer_html, read_viewer_html, write_viewer_html

FORMATS = {"ply": "3DGS PLY", "compressed.ply": "PlayCanvas compressed PLY", "spz": "Niantic SPZ",
           "html": "self-contained HTML viewer (the splat inside as SPZ)"}


def format_for_output(path) -> str:
    """The format a file name asks for (`.compressed.ply`, `.spz`, `.ply`, `.html`); ValueError otherwise."""
    name = Path(path).name.lower()
    if name.endswith(COMPRESSED_SUFFIX):
        return "compressed.ply"
    if name.endswith(".spz"):
        return "spz"
    if name.endswith(".ply"):
        return "ply"
    if name.endswith((".html", ".htm")):
        return "html"
    raise ValueError(f"{path}: unknown output format; end the name with .ply, .spz, {COMPRESSED_SUFFIX} or .html")


def detect_format(path) -> str:
    """The format of an existing file, from its first bytes (the suffix may lie)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise PlyFormatError(f"cannot open {path}: {e.strerror}") from None
    if head[:2] == b"\x1f\x8b":
        return "spz"
    if is_compressed_ply_header(head):
        return "compressed.ply"
    if head.startswith(b"ply"):
        return "ply"
    if is_viewer_html(head):
        return "html"
    raise PlyFormatError(f"{path} is not a splat file (neither PLY nor SPZ); give a .ply, .spz, "
                         f"{COMPRESSED_SUFFIX} or FaceSplat .html file")


def read_splats(path) -> Splats:
    """Read any supported splat file; raises PlyFormatError (or a subclass), one line."""
    return {"spz": read_splat_spz, "compressed.ply": read_compressed_ply, "ply": read_splat_ply,
            "html": read_viewer_html}[detect_format(path)](path)


def write_splats(path, splats: Splats) -> str:
    """Write atomically in the format the suffix names; returns the format."""
    fmt = format_for_output(path)
    {"spz": write_splat_spz, "compressed.ply": write_compressed_ply, "ply": write_splat_ply,
     "html": write_viewer_html}[fmt](path, splats)
    return fmt
