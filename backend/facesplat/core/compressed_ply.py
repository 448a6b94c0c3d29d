"""Read and write the PlayCanvas / SuperSplat compressed PLY (`*.compressed.ply`). Pure numpy.

Layout (binary little-endian PLY, as playcanvas/engine's gsplat-compressed-data.js reads it):
    element chunk C           C = ceil(N / 256); float min_x min_y min_z max_x max_y max_z,
                              min_scale_x..z max_scale_x..z, then (18-float form) min_r..b max_r..b
    element vertex N          uint packed_position  x 11 | y 10 | z 11 bits, unorm in the chunk's box
                              uint packed_rotation  2-bit index of the largest |q| (order rot_0..3 =
                                                    w x y z), then the other three in that order,
                                                    10 bits each: q / sqrt(2) + 0.5
                              uint packed_scale     log scales 11 | 10 | 11, unorm in the chunk's range
                              uint packed_color     r g b (SH_C0 f_dc + 0.5, in the chunk's range) and
                                                    sigmoid(opacity), 8 bits each
    element sh N (optional)   uchar f_rest_0..f_rest_{3K-1}, (f_rest / 8 + 0.5) * 255, PLY order
Splat i belongs to chunk i // 256. Same axes as a 3DGS PLY. The writer keeps the splats' order
(SuperSplat sorts them along a Morton curve first, which tightens the chunks' boxes).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .files import atomic_write_bytes, open_regular_file
from .ply import PlyFormatError, Splats, _read_header
from .sh import SH_C0
from .spz import alpha_to_logit, normalised_quats, sigmoid

CHUNK_SIZE = 256
CHUNK_BOUNDS = ["min_x", "min_y", "min_z", "max_x", "max_y", "max_z",
                "min_scale_x", "min_scale_y", "min_scale_z", "max_scale_x", "max_scale_y", "max_scale_z"]
CHUNK_COLOR = ["min_r", "min_g", "min_b", "max_r", "max_g", "max_b"]
PACKED = ["packed_position", "packed_rotation", "packed_scale", "packed_color"]
SUFFIX = ".compressed.ply"


class CompressedPlyFormatError(PlyFormatError):
    """The file is not a readable compressed PLY. One line: what is wrong, then advice."""


def is_compressed_ply_header(head: bytes) -> bool:
    """Whether the start of a PLY file declares the compressed layout (a chunk element first)."""
    return head.startswith(b"ply") and b"element chunk " in head and b"packed_position" in head


# --- writing -------------------------------------------------------------------------------

def _unorm(v: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return np.clip(np.floor(v * top + 0.5), 0, top).astype(np.uint32)


def _chunk_minmax(values: np.ndarray, chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-chunk min and max of [N, D] values (the last chunk may be short)."""
    n, d = values.shape
    padded = np.empty((chunks * CHUNK_SIZE, d), np.float32)
    padded[:n] = values
    padded[n:] = values[-1] if n else 0
    blocks = padded.reshape(chunks, CHUNK_SIZE, d)
    return blocks.min(axis=1), blocks.max(axis=1)


def _normalise(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(v - lo) / (hi - lo) per splat, with lo/hi broadcast from its chunk; 0 where the range is empty."""
    index = np.arange(len(values)) // CHUNK_SIZE
    lo, span = lo[index], (hi - lo)[index]
    return np.where(span > 0, (values - lo) / np.where(span > 0, span, 1), 0.0)


def _pack_111011(v: np.ndarray) -> np.ndarray:
    return (_unorm(v[:, 0], 11) << 21) | (_unorm(v[:, 1], 10) << 11) | _unorm(v[:, 2], 11)


def splats_to_compressed_ply_bytes(splats: Splats) -> bytes:
    n, k = len(splats), splats.shN.shape[1]
    chunks = -(-n // CHUNK_SIZE)
    scales = np.clip(splats.scales, -20, 20)
    rgb = splats.sh0 * SH_C0 + 0.5
    pos_lo, pos_hi = _chunk_minmax(splats.means, chunks)
    sc_lo, sc_hi = _chunk_minmax(scales, chunks)
    rgb_lo, rgb_hi = _chunk_minmax(rgb, chunks)
    chunk_table = np.concatenate([pos_lo, pos_hi, sc_lo, sc_hi, rgb_lo, rgb_hi], axis=1).astype("<f4")

    q = normalised_quats(splats.quats)  # w x y z = rot_0..3
    largest = np.argmax(np.abs(q), axis=1)
    q = np.where(np.take_along_axis(q, largest[:, None], 1) < 0, -q, q)
    rotation = largest.astype(np.uint32)
    for i in range(4):
        rotation = np.where(largest == i, rotation, (rotation << 10) | _unorm(q[:, i] / np.sqrt(2) + 0.5, 10))
    c = _normalise(rgb, rgb_lo, rgb_hi)
    color = ((_unorm(c[:, 0], 8) << 24) | (_unorm(c[:, 1], 8) << 16) | (_unorm(c[:, 2], 8) << 8)
             | _unorm(sigmoid(splats.opacities), 8))
    vertex = np.stack([_pack_111011(_normalise(splats.means, pos_lo, pos_hi)), rotation,
                       _pack_111011(_normalise(scales, sc_lo, sc_hi)), color], axis=1).astype("<u4")
    header = ["ply", "format binary_little_endian 1.0", "comment written by FaceSplat",
              f"element chunk {chunks}", *(f"property float {p}" for p in CHUNK_BOUNDS + CHUNK_COLOR),
              f"element vertex {n}", *(f"property uint {p}" for p in PACKED)]
    body = [chunk_table.tobytes(), vertex.tobytes()]
    if k:
        header += [f"element sh {n}", *(f"property uchar f_rest_{i}" for i in range(3 * k))]
        rest = splats.shN.transpose(0, 2, 1).reshape(n, 3 * k)  # channel-major, as in a 3DGS PLY
        body.append(_unorm(rest / 8.0 + 0.5, 8).astype(np.uint8).tobytes())
    header.append("end_header")
    return ("\n".join(header) + "\n").encode("ascii") + b"".join(body)


def write_compressed_ply(path, splats: Splats) -> Path:
    """Write atomically (temp file, then rename)."""
    path = Path(path)
    atomic_write_bytes(path, splats_to_compressed_ply_bytes(splats))
    return path


# --- reading -------------------------------------------------------------------------------

def _layout(elements, path) -> tuple[int, int, int]:
    """(splats, chunk floats per chunk, SH rest coefficients K); raises unless the header is exactly
    the compressed layout."""
    def props(e):
        return [(name, code) for name, _, code in e.properties]

    names = [e.name for e in elements]
    if names not in (["chunk", "vertex"], ["chunk", "vertex", "sh"]):
        raise CompressedPlyFormatError(f"{path}: elements {names}; a compressed PLY has chunk, vertex and "
                                       "optionally sh: the file is corrupt or of another kind")
    chunk, vertex = elements[0], elements[1]
    if props(chunk) not in ([(p, "f4") for p in CHUNK_BOUNDS], [(p, "f4") for p in CHUNK_BOUNDS + CHUNK_COLOR]):
        raise CompressedPlyFormatError(f"{path}: the chunk element's properties are not the 12 or 18 float "
                                       "bounds of a compressed PLY; the file is corrupt")
    if props(vertex) != [(p, "u4") for p in PACKED]:
        raise CompressedPlyFormatError(f"{path}: the vertex element is not uint {' '.join(PACKED)}; the file is "
                                       "corrupt or not a compressed PLY")
    n = vertex.count
    if chunk.count != -(-n // CHUNK_SIZE):
        raise CompressedPlyFormatError(f"{path}: {chunk.count} chunks for {n} splats (expected "
                                       f"{-(-n // CHUNK_SIZE)}); the file is corrupt")
    k = 0
    if len(elements) == 3:
        sh = elements[2]
        k = len(sh.properties) // 3
        if (sh.count != n or k not in (3, 8, 15)
                or props(sh) != [(f"f_rest_{i}", "u1") for i in range(3 * k)]):
            raise CompressedPlyFormatError(f"{path}: the sh element is not {n} rows of uchar f_rest_0..f_rest_8, "
                                           "_23 or _44; the file is corrupt")
    return n, len(chunk.properties), k


def read_compressed_ply(path) -> Splats:
    """Read a compressed PLY into Splats. Raises CompressedPlyFormatError (one line): the header must
    be exactly the layout above and the data exactly its size (checked before anything is read,
    so a header cannot make the reader allocate more than the file holds); bounds must be finite."""
    path = Path(path)
    with open_regular_file(path, CompressedPlyFormatError, f"a {SUFFIX} file") as f:
        try:
            elements, start = _read_header(f, path)
            size = os.fstat(f.fileno()).st_size
            n, chunk_floats, k = _layout(elements, path)
            chunks = -(-n // CHUNK_SIZE)
            expected = chunks * chunk_floats * 4 + n * 16 + n * 3 * k
            if size - start != expected:
                raise CompressedPlyFormatError(
                    f"{path}: the header describes {n} splats ({expected} bytes) but {size - start} bytes follow "
                    f"it; the file is {'truncated' if size - start < expected else 'corrupt'}: copy or export it again")
            f.seek(start)
            data = f.read(expected)
        except OSError as e:
            raise CompressedPlyFormatError(f"cannot read {path}: {e.strerror}") from None
    if len(data) != expected:
        raise CompressedPlyFormatError(f"{path}: the file ended early while reading; it is truncated or being written")
    table = np.frombuffer(data, "<f4", chunks * chunk_floats).reshape(chunks, chunk_floats).astype(np.float64)
    if not np.isfinite(table).all():
        raise CompressedPlyFormatError(f"{path}: non-finite chunk bounds; the file is corrupt: export it again")
    packed = np.frombuffer(data, "<u4", 4 * n, chunks * chunk_floats * 4).reshape(n, 4)
    index = np.arange(n) // CHUNK_SIZE

    def lerp(t, column):  # t in [0, 1] within splat i's chunk bounds (columns `column`, `column + 3`)
        lo, hi = table[index, column:column + 3], table[index, column + 3:column + 6]
        return lo + (hi - lo) * t

    def unpack_111011(v):
        return np.stack([(v >> 21) / 2047.0, ((v >> 11) & 1023) / 1023.0, (v & 2047) / 2047.0], axis=1)

    means = lerp(unpack_111011(packed[:, 0]), 0)
    scales = lerp(unpack_111011(packed[:, 2]), 6)
    c = packed[:, 3]
    rgb = np.stack([(c >> 24) & 255, (c >> 16) & 255, (c >> 8) & 255], axis=1) / 255.0
    if chunk_floats == 18:
        rgb = lerp(rgb, 12)
    opacities = alpha_to_logit((c & 255) / 255.0)
    r = packed[:, 1]
    largest = (r >> 30).astype(np.int64)
    three = np.stack([(r >> 20) & 1023, (r >> 10) & 1023, r & 1023], axis=1) / 1023.0
    three = (three - 0.5) * np.sqrt(2)
    m = np.sqrt(np.maximum(0.0, 1.0 - (three ** 2).sum(axis=1)))
    quats = np.empty((n, 4))
    slot = np.zeros(n, np.int64)
    for i in range(4):  # the stored three fill the other slots in ascending order
        is_largest = largest == i
        quats[:, i] = np.where(is_largest, m, three[np.arange(n), np.minimum(slot, 2)])
        slot += ~is_largest
    shN = np.zeros((n, 0, 3), np.float32)
    if k:
        rest = np.frombuffer(data, np.uint8, n * 3 * k, expected - n * 3 * k).reshape(n, 3, k)
        shN = (rest.astype(np.float32) * (8.0 / 255.0) - 4.0).transpose(0, 2, 1)
    splats = Splats(means=means, sh0=(rgb - 0.5) / SH_C0, shN=shN, opacities=opacities, scales=scales, quats=quats)
    if not all(np.isfinite(a).all() for a in (splats.means, splats.scales, splats.sh0)):  # float32 overflow
        raise CompressedPlyFormatError(f"{path}: chunk bounds too large for float32 splats; the file is corrupt")
    return splats
