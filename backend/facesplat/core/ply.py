"""Read and write 3D Gaussian splat PLY files in the Inria layout (SH degree 0-3).

Layout (binary little-endian, one `vertex` element, float32 properties; written in this order,
read by name in any order):
    x y z nx ny nz f_dc_0..2 f_rest_0..f_rest_{3K-1} opacity scale_0..2 rot_0..3
`opacity` is a logit, `scale_*` are log scales, `rot_*` is a quaternion w,x,y,z (not necessarily
normalised), and f_rest is channel-major: all K coefficients of R, then G, then B.
Values are stored raw, so reading and writing a file reproduces it exactly.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .files import atomic_write_bytes, open_regular_file
from .sh import SH_C0

# A header larger than this is not a splat file (guards against reading a huge text file).
MAX_HEADER_BYTES = 64 * 1024
# Vertex data is read and checked this many bytes at a time: memory follows what was read.
READ_CHUNK_BYTES = 64 * 1024 * 1024
_TYPE_CODES = {word.encode(): code for word, code in {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}.items()}
REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
            "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


class PlyFormatError(ValueError):
    """The file is not a readable 3DGS PLY. The message is one line: what is wrong and where."""


@dataclass
class Splats:
    """Raw 3DGS values, float32, named as in gsplat."""

    means: np.ndarray      # [N, 3]
    sh0: np.ndarray        # [N, 3]      f_dc (RGB)
    shN: np.ndarray        # [N, K, 3]   f_rest, K = (degree+1)^2 - 1 (0, 3, 8 or 15)
    opacities: np.ndarray  # [N]         logit
    scales: np.ndarray     # [N, 3]      log
    quats: np.ndarray      # [N, 4]      w, x, y, z

    def __post_init__(self):
        n = len(self.means)
        for name, shape in (("means", (n, 3)), ("sh0", (n, 3)), ("opacities", (n,)),
                            ("scales", (n, 3)), ("quats", (n, 4))):
            arr = np.ascontiguousarray(getattr(self, name), dtype=np.float32)
            if arr.shape != shape:
                raise ValueError(f"{name} has shape {arr.shape}, expected {shape}")
            setattr(self, name, arr)
        shN = np.ascontiguousarray(self.shN, dtype=np.float32)
        if shN.ndim != 3:  # [N, 3K] flat, (coefficient, channel) order
            # reshape(n, -1, 3) cannot infer K when N == 0; read it off the flat width instead.
            shN = shN.reshape(n, shN.size // (3 * n) if n else (shN.shape[-1] // 3 if shN.ndim == 2 else 0), 3)
        if shN.shape[0] != n or shN.shape[2] != 3:
            raise ValueError(f"shN has shape {shN.shape}, expected ({n}, K, 3)")
        if shN.shape[1] not in (0, 3, 8, 15):
            raise ValueError(f"shN has {shN.shape[1]} coefficients per channel; expected 0, 3, 8 or 15")
        self.shN = shN

    def __len__(self) -> int:
        return len(self.means)

    @property
    def sh_degree(self) -> int:
        return {0: 0, 3: 1, 8: 2, 15: 3}[self.shN.shape[1]]

    def subset(self, keep: np.ndarray) -> "Splats":
        """The Gaussians selected by a boolean mask or an index array."""
        return Splats(self.means[keep], self.sh0[keep], self.shN[keep], self.opacities[keep],
                      self.scales[keep], self.quats[keep])


def sh_rest_names(degree: int) -> list[str]:
    return [f"f_rest_{i}" for i in range(3 * ((degree + 1) ** 2 - 1))]


def property_names(degree: int) -> list[str]:
    """The Inria property order for an SH degree."""
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + sh_rest_names(degree)
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def _property_rows(splats: Splats) -> np.ndarray:
    """[P, N] float32: one contiguous row per property after x y z nx ny nz, in file order."""
    n, k = len(splats), splats.shN.shape[1]
    rows = np.empty((3 + 3 * k + 8, n), dtype=np.float32)
    rows[0:3] = splats.sh0.T
    rows[3:3 + 3 * k] = splats.shN.transpose(2, 1, 0).reshape(3 * k, n)  # channel-major, as in the file
    base = 3 + 3 * k
    rows[base] = splats.opacities
    rows[base + 1:base + 4] = splats.scales.T
    rows[base + 4:base + 8] = splats.quats.T
    return rows


def attribute_columns(splats: Splats) -> dict[str, np.ndarray]:
    """Every per-Gaussian property except positions and normals, as contiguous float32 [N]
    columns named and ordered as in the file (f_dc_*, f_rest_*, opacity, scale_*, rot_*)."""
    rows = _property_rows(splats)
    return dict(zip(property_names(splats.sh_degree)[6:], rows))


def splats_from_columns(means: np.ndarray, columns: dict) -> Splats:
    """Inverse of attribute_columns: the SH degree follows from the f_rest_* columns present.
    Raises ValueError naming the missing columns."""
    k = len([c for c in columns if c.startswith("f_rest_")]) // 3
    degree = {0: 0, 3: 1, 8: 2, 15: 3}.get(k)
    if degree is None:
        raise ValueError(f"{3 * k} f_rest columns; expected 0, 9, 24 or 45 (SH degree 0-3)")
    names = property_names(degree)[6:]
    missing = [name for name in names if name not in columns]
    if missing:
        raise ValueError(f"missing 3DGS attributes: {', '.join(missing)}")
    n = len(means)
    rows = np.stack([np.asarray(columns[name], np.float32).reshape(n) for name in names])  # [P, N]
    base = 3 + 3 * k
    return Splats(means=means, sh0=rows[0:3].T, shN=rows[3:base].reshape(3, k, n).transpose(2, 1, 0),
                  opacities=rows[base], scales=rows[base + 1:base + 4].T, quats=rows[base + 4:base + 8].T)


def splats_to_ply_bytes(splats: Splats) -> bytes:
    names = property_names(splats.sh_degree)
    n = len(splats)
    table = np.zeros((n, len(names)), dtype="<f4")
    table[:, 0:3] = splats.means
    table[:, 6:9] = splats.sh0
    k = splats.shN.shape[1]
    # [N, K, 3] -> channel-major [N, 3, K] -> [N, 3K]
    table[:, 9:9 + 3 * k] = splats.shN.transpose(0, 2, 1).reshape(n, 3 * k)
    base = 9 + 3 * k
    table[:, base] = splats.opacities
    table[:, base + 1:base + 4] = splats.scales
    table[:, base + 4:base + 8] = splats.quats
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {name}" for name in names]
    header.append("end_header")
    return ("\n".join(header) + "\n").encode("ascii") + table.tobytes()


def write_splat_ply(path, splats: Splats) -> Path:
    """Write atomically: a temp file in the same folder, then a rename."""
    path = Path(path)
    data = splats_to_ply_bytes(splats)
    atomic_write_bytes(path, data)
    return path


@dataclass
class _Element:
    """One `element` of a PLY header with its properties (name, type word, numpy code); a list
    property has code None and its count's type in `list_counts`."""

    name: str
    count: int
    properties: list = field(default_factory=list)
    list_counts: list = field(default_factory=list)

    @property
    def min_row_bytes(self) -> int:
        """Bytes per row: exact without list properties, a lower bound (empty lists) with them."""
        return (sum(np.dtype(code).itemsize for _, _, code in self.properties if code)
                + sum(np.dtype(code).itemsize for code in self.list_counts))


def _show(raw: bytes) -> str:
    """A header fragment quoted for a one-line message (control and non-ASCII bytes escaped)."""
    return "'" + repr(bytes(raw[:80]))[2:-1] + "'"


def _read_header(f, path) -> tuple[list[_Element], int]:
    """The elements the header declares, and the offset where the data begins."""
    head = f.read(MAX_HEADER_BYTES)
    if not (head.startswith(b"ply\n") or head.startswith(b"ply\r\n")):
        raise PlyFormatError(f"{path} is not a PLY file (it does not start with 'ply')")
    lines = head.split(b"\n")
    elements: list[_Element] = []
    fmt_seen = False
    offset = 0
    for number, raw in enumerate(lines[:-1]):  # the last piece has no newline: not a whole line
        offset += len(raw) + 1
        line = raw[:-1] if raw.endswith(b"\r") else raw
        words = line.split()
        where = f"{path}: header line {number + 1} {_show(line)}"
        if number == 0 or (words and words[0] in (b"comment", b"obj_info")):
            continue
        if words == [b"end_header"]:
            if not fmt_seen:
                raise PlyFormatError(f"{path}: the PLY header has no format line; the file is corrupt")
            return elements, offset
        if not words:
            raise PlyFormatError(f"{where} is blank; a PLY header has none: the file is corrupt or was edited")
        if words[0] == b"format":
            if fmt_seen or elements:
                raise PlyFormatError(f"{where}: a second or late format line; the file is corrupt")
            if len(words) != 3 or words[2] != b"1.0":
                raise PlyFormatError(f"{where} is malformed (expected 'format binary_little_endian 1.0')")
            if words[1] != b"binary_little_endian":
                raise PlyFormatError(f"{path}: format {_show(words[1])} is not supported; 3DGS files are "
                                     f"binary_little_endian: convert it with the tool that wrote it")
            fmt_seen = True
        elif words[0] == b"element":
            if not fmt_seen:
                raise PlyFormatError(f"{where} comes before the format line; the file is corrupt")
            # A count of more than 18 digits describes no real file (and int() refuses 4300+ digits).
            if len(words) != 3 or not re.fullmatch(rb"[0-9]{1,18}", words[2]):
                raise PlyFormatError(f"{path}: malformed element line {_show(line)}; the file is corrupt")
            elements.append(_Element(words[1].decode("latin-1"), int(words[2])))
        elif words[0] == b"property":
            if not elements:
                raise PlyFormatError(f"{where} comes before any element; the file is corrupt")
            element = elements[-1]
            if len(words) == 3 and words[1] in _TYPE_CODES:
                element.properties.append((words[2].decode("latin-1"), words[1].decode(), _TYPE_CODES[words[1]]))
            elif (len(words) == 5 and words[1] == b"list" and words[2] in _TYPE_CODES
                  and _TYPE_CODES[words[2]][0] in "iu" and words[3] in _TYPE_CODES):
                element.properties.append((words[4].decode("latin-1"), "list", None))
                element.list_counts.append(_TYPE_CODES[words[2]])
            else:
                raise PlyFormatError(f"{path}: unsupported {_printable(element.name)} property {_show(line)} "
                                     f"(unknown type or malformed line); the file is corrupt")
        else:
            raise PlyFormatError(f"{where} is not a PLY header line; the file is corrupt")
    last = lines[-2] if len(lines) > 1 and not lines[-1] else lines[-1]
    if len(head) < MAX_HEADER_BYTES:
        raise PlyFormatError(f"{path}: the PLY header is truncated (the file ends after {_show(last.rstrip())}, "
                             f"before end_header); the file was cut short: copy or export it again")
    raise PlyFormatError(f"{path}: no end_header in the first {MAX_HEADER_BYTES // 1024} KiB; "
                         f"this is not a splat PLY (or its header is corrupt)")


def _printable(name: str) -> str:
    """A name from a header, escaped if needed so a message stays on one line."""
    return name if name.isascii() and name.isprintable() else _show(name.encode("latin-1"))


def _names(names: list[str], most: int = 6) -> str:
    shown = ", ".join(_printable(name) for name in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _vertex_layout(elements: list[_Element], path) -> tuple[_Element, list[str], int]:
    """The vertex element, the names the splat is read from (in Splats order), and K (SH rest
    coefficients per channel). Raises PlyFormatError unless the vertex properties form a 3DGS splat."""
    vertex_at = [i for i, e in enumerate(elements) if e.name == "vertex"]
    if not vertex_at:
        raise PlyFormatError(f"{path}: no vertex element; this is not a Gaussian splat file")
    if len(vertex_at) > 1:
        raise PlyFormatError(f"{path}: the header has {len(vertex_at)} 'element vertex' lines; a splat file has "
                             f"one: the file is corrupt or was edited")
    vertex = elements[vertex_at[0]]
    if any(e.count for e in elements[:vertex_at[0]]):
        raise PlyFormatError(f"{path}: elements before 'vertex' are not supported in a splat file")
    names = [name for name, _, _ in vertex.properties]
    lists = [name for name, word, _ in vertex.properties if word == "list"]
    if lists:
        raise PlyFormatError(f"{path}: unsupported vertex property: list {_names(lists)}; "
                             f"splat properties are float32 scalars")
    duplicates = sorted({nm for nm in names if names.count(nm) > 1})
    if duplicates:
        raise PlyFormatError(f"{path}: vertex properties declared twice: {_names(duplicates)}; the file is corrupt")
    missing = [r for r in REQUIRED if r not in names]
    if missing:
        raise PlyFormatError(f"{path}: missing properties {_names(missing)}; this is not a 3DGS splat file")
    rest = [nm for nm in names if nm.startswith("f_rest_")]
    if not all(nm[7:].isdigit() for nm in rest):
        raise PlyFormatError(f"{path}: malformed SH property names {_names([nm for nm in rest if not nm[7:].isdigit()])}")
    rest.sort(key=lambda s: int(s[7:]))
    if len(rest) not in (0, 9, 24, 45) or rest != [f"f_rest_{i}" for i in range(len(rest))]:
        raise PlyFormatError(f"{path}: {len(rest)} f_rest properties; expected 0, 9, 24 or 45 (SH degree 0-3)")
    used = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", *rest, "opacity",
            "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    # Properties the splat is made of must be float32: another type cannot hold a logit or a log
    # scale, and reading it as one would give garbage. Others (normals, extras) are only skipped.
    words = {name: word for name, word, _ in vertex.properties}
    not_float = [f"{words[nm]} {nm}" for nm in used if words[nm] not in ("float", "float32")]
    if not_float:
        raise PlyFormatError(f"{path}: vertex properties not float32: {_names(not_float)}; 3DGS properties are "
                             f"'property float NAME': the file was written by an incompatible tool or edited")
    return vertex, used, len(rest) // 3


def _check_size(path, vertex: _Element, row_bytes: int, trailing: list[_Element], available: int):
    """The bytes after the header must be exactly what the header describes (at least, where a
    trailing element has list properties, whose length only its data tells)."""
    vertex_bytes = vertex.count * row_bytes
    if available < vertex_bytes:
        raise PlyFormatError(f"{path}: the header promises {vertex.count} Gaussians ({vertex_bytes} bytes) but only "
                             f"{available} bytes follow it; the file is truncated or corrupt: copy or export it again")
    other = sum(e.count * e.min_row_bytes for e in trailing)
    exact = not any(e.list_counts for e in trailing)
    described = f"{vertex.count} Gaussians ({vertex_bytes} bytes)" + (
        f" and {_names([e.name for e in trailing])} ({other} bytes{'' if exact else ' or more'})" if trailing else "")
    if available < vertex_bytes + other:
        raise PlyFormatError(f"{path}: the header describes {described} but only {available} bytes follow it; "
                             f"the file is truncated or corrupt: copy or export it again")
    if exact and available > vertex_bytes + other:
        raise PlyFormatError(f"{path}: {available - vertex_bytes - other} more bytes than the header describes "
                             f"({described}) follow it; the header does not match the data: the file is corrupt "
                             f"or was edited, export it again")


def _check_values(path, block: np.ndarray, used: list[str], first: int, n: int):
    """Reject rows that cannot render: non-finite values, or a rotation of all zeros (it cannot be
    normalised; it is also what a zero-filled hole in a file reads as)."""
    which = f"{{}} of {n} Gaussians" if len(block) == n else f"{{}} of Gaussians {first + 1}-{first + len(block)} (of {n})"
    finite = np.isfinite(block)
    bad = ~finite.all(axis=1)
    if bad.any():
        columns = [used[j] for j in np.flatnonzero(~finite.all(axis=0))]
        raise PlyFormatError(f"{path}: {which.format(int(bad.sum()))} have non-finite values "
                             f"({_names(columns)}); the file is corrupt: export it again")
    zero_rotation = ~block[:, -4:].any(axis=1)
    if zero_rotation.any():
        raise PlyFormatError(f"{path}: {which.format(int(zero_rotation.sum()))} have an all-zero rotation "
                             f"(rot_0..rot_3), which cannot be normalised; the file is corrupt: export it again")


def _read_vertex_columns(f, path, vertex: _Element, used: list[str]) -> np.ndarray:
    """[N, len(used)] float32, read and checked READ_CHUNK_BYTES at a time, so memory follows the
    bytes actually read and checked, never the count a header claims."""
    dtype = np.dtype([(name, "<" + code) for name, _, code in vertex.properties])
    all_float = all(code == "f4" for _, _, code in vertex.properties)
    index = [dtype.names.index(name) for name in used]
    rows_per_chunk = max(1, READ_CHUNK_BYTES // dtype.itemsize)
    n, blocks = vertex.count, []
    for first in range(0, n, rows_per_chunk):
        count = min(rows_per_chunk, n - first)
        try:
            buf = f.read(count * dtype.itemsize)
        except OSError as e:
            raise PlyFormatError(f"cannot read {path}: {e.strerror}") from None
        if len(buf) != count * dtype.itemsize:  # the file shrank while being read
            raise PlyFormatError(f"{path}: the file ended early while reading; it is truncated or being written")
        raw = np.frombuffer(buf, dtype=dtype)
        if all_float:  # the usual file: gather columns from one [rows, P] table (much faster than fields)
            block = raw.view("<f4").reshape(count, len(dtype))[:, index]
        else:
            block = np.stack([raw[name] for name in used], axis=1)
        del buf, raw
        _check_values(path, block, used, first, n)
        blocks.append(block)
    if not blocks:
        return np.zeros((0, len(used)), np.float32)
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def read_splat_ply(path) -> Splats:
    """Read a 3DGS PLY whose header exactly describes its data. Raises PlyFormatError (one line:
    cause, then advice) for anything it cannot trust: a bad or truncated header, data of another
    size than the header describes, non-float32 splat properties, non-finite values."""
    path = Path(path)
    with open_regular_file(path, PlyFormatError, "a .ply file") as f:
        try:
            elements, data_start = _read_header(f, path)
            file_size = os.fstat(f.fileno()).st_size
            f.seek(data_start)
        except OSError as e:
            raise PlyFormatError(f"cannot read {path}: {e.strerror}") from None
        vertex, used, k = _vertex_layout(elements, path)
        row_bytes = sum(np.dtype(code).itemsize for _, _, code in vertex.properties)
        trailing = elements[elements.index(vertex) + 1:]
        _check_size(path, vertex, row_bytes, trailing, file_size - data_start)
        table = _read_vertex_columns(f, path, vertex, used)
    n = len(table)
    base = 6 + 3 * k
    return Splats(
        means=table[:, 0:3],
        sh0=table[:, 3:6],
        shN=table[:, 6:base].reshape(n, 3, k).transpose(0, 2, 1),  # channel-major in the file
        opacities=table[:, base],
        scales=table[:, base + 1:base + 4],
        quats=table[:, base + 4:base + 8],
    )




def sh0_to_rgb(sh0: np.ndarray) -> np.ndarray:
    """Display colour of the DC term, clipped to [0, 1]."""
    return np.clip(0.5 + SH_C0 * sh0, 0.0, 1.0)


def rgb_to_sh0(rgb: np.ndarray) -> np.ndarray:
    return (np.asarray(rgb, np.float32) - 0.5) / SH_C0
