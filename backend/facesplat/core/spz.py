"""Read and write Niantic's SPZ splat format (versions 2 and 3; SH degree 0-3). Pure numpy + zlib.

Spec: github.com/nianticlabs/spz README and src/cc/load-spz.cc. An SPZ file is a gzip stream of
a 16-byte little-endian header (magic 0x5053474e "NGSP", version, numPoints u32, shDegree u8,
fractionalBits u8, flags u8, reserved u8 = 0) followed by the attributes, each for all points:
    positions  3 x 24-bit signed fixed point (fractionalBits fractional bits)
    alphas     u8, sigmoid(opacity) * 255
    colours    u8, f_dc * 0.15 * 255 + 127.5 (a "wide" RGB: DC values to +-3.3 survive)
    scales     u8, (log scale + 10) * 16
    rotations  v2: 3 u8, x y z of the normalised quaternion with w >= 0, (q + 1) * 127.5
               v3: u32, smallest three: index of the largest |component| (2 bits, order x y z w)
               then the other three in that order, 10 bits each (sign bit, 9-bit |q| / sqrt(1/2))
    sh         u8 per coefficient, (x * 128 + 128); coefficient-major, colour channel inner
SPZ stores RUB axes (x right, y up, z back), a 3DGS PLY RDF (x right, y down, z forward): the
conversion negates y and z of positions and of the quaternion's vector part, and the sign of
each SH basis function odd in y or z.

The writer keeps the reference's 12 fractional bits (0.24 mm) unless the points lie farther than
2048 units from the origin, and quantizes SH with all 8 bits (the reference's default keeps 5
bits for degree 1 and 4 beyond: FaceSplat's small view-dependent terms would all round to zero;
a decoder needs no flag for this, the bits are only a packing choice).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from .files import atomic_write_bytes, read_regular_file
from .ply import PlyFormatError, Splats

MAGIC = 0x5053474E
HEADER_BYTES = 16
# The reference loader refuses more points than this; so do we (a header cannot make us allocate).
MAX_POINTS = 10_000_000
COLOR_SCALE = 0.15
FLAG_ANTIALIASED = 0x1
FLAG_EXTENSIONS = 0x2
SQRT1_2 = np.float32(0.7071067811865476)
# Sign of each SH basis function (degrees 1-3, in the usual real-SH order) under y -> -y, z -> -z.
SH_FLIP_RDF_RUB = np.array([-1, -1, 1,  -1, 1, 1, -1, 1,  -1, 1, -1, -1, 1, -1, 1], np.float32)
_DECOMPRESS_STEP = 16 * 1024 * 1024


class SpzFormatError(PlyFormatError):
    """The file is not a readable SPZ file. One line: what is wrong, then advice."""


def rotation_bytes(version: int) -> int:
    return 4 if version >= 3 else 3


def _point_bytes(version: int, sh_coefficients: int) -> int:
    return 9 + 1 + 3 + 3 + rotation_bytes(version) + 3 * sh_coefficients


# --- shared by the compressed formats: from quantized values back to 3DGS parameters ----------

def alpha_to_logit(alpha: np.ndarray, levels: int = 255) -> np.ndarray:
    """Logit of a quantized alpha, with 0 and 1 moved half a step inwards so the logit is finite."""
    half = 0.5 / levels
    a = np.clip(np.asarray(alpha, np.float64), half, 1.0 - half)
    return np.log(a / (1.0 - a)).astype(np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))).astype(np.float32)


def normalised_quats(quats: np.ndarray) -> np.ndarray:
    """[N, 4] unit quaternions (any order); an all-zero one becomes the identity (w first)."""
    q = np.asarray(quats, np.float64)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    out = np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), np.array([1.0, 0, 0, 0]))
    return out


# --- writing -------------------------------------------------------------------------------

def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _pack_rotations(q_xyzw: np.ndarray, version: int) -> np.ndarray:
    n = len(q_xyzw)
    if version < 3:
        q = np.where(q_xyzw[:, 3:4] < 0, -q_xyzw, q_xyzw)
        return _to_u8(q[:, :3] * 127.5 + 127.5)
    largest = np.argmax(np.abs(q_xyzw), axis=1)
    q = np.where(np.take_along_axis(q_xyzw, largest[:, None], 1) < 0, -q_xyzw, q_xyzw)
    comp = largest.astype(np.uint32)
    for i in range(4):
        mag = np.minimum(np.floor(511.0 * np.abs(q[:, i]) / SQRT1_2 + 0.5), 511).astype(np.uint32)
        bits = ((q[:, i] < 0).astype(np.uint32) << 9) | mag
        comp = np.where(largest == i, comp, (comp << 10) | bits)
    return comp.astype("<u4").view(np.uint8).reshape(n, 4)


def splats_to_spz_bytes(splats: Splats, version: int = 3, antialiased: bool = False) -> bytes:
    """The gzip-compressed SPZ bytes of `splats` (PLY frame in, RUB in the file)."""
    if version not in (2, 3):
        raise ValueError(f"SPZ version {version}: only 2 and 3 can be written")
    n, k = len(splats), splats.shN.shape[1]
    if n > MAX_POINTS:
        raise ValueError(f"{n} Gaussians: SPZ readers accept at most {MAX_POINTS}")
    flip = np.array([1.0, -1.0, -1.0])
    means = splats.means.astype(np.float64) * flip
    extent = float(np.abs(means).max()) if n else 0.0
    fractional_bits = 12
    while fractional_bits > 0 and extent * (1 << fractional_bits) >= (1 << 23) - 1:
        fractional_bits -= 1
    if extent * (1 << fractional_bits) >= (1 << 23) - 1:
        raise ValueError(f"positions reach {extent:.0f} units from the origin; SPZ holds at most 8 million")
    fixed = np.round(means * (1 << fractional_bits)).astype(np.int32).reshape(-1)
    positions = fixed.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3]
    alphas = _to_u8(sigmoid(splats.opacities) * 255.0)
    colors = _to_u8(splats.sh0 * (COLOR_SCALE * 255.0) + 127.5)
    scales = _to_u8((splats.scales + 10.0) * 16.0)
    q = normalised_quats(splats.quats)  # w x y z
    q_xyzw = np.concatenate([q[:, 1:] * flip, q[:, :1]], axis=1)
    rotations = _pack_rotations(q_xyzw, version)
    sh = _to_u8(splats.shN * SH_FLIP_RDF_RUB[:k, None] * 128.0 + 128.0)  # [N, K, 3]: channel inner
    header = np.array([MAGIC, version, n], "<u4").tobytes() + bytes(
        [splats.sh_degree, fractional_bits, FLAG_ANTIALIASED if antialiased else 0, 0])
    body = b"".join(np.ascontiguousarray(a).tobytes() for a in (positions, alphas, colors, scales, rotations, sh))
    return zlib.compress(header + body, level=9, wbits=16 + zlib.MAX_WBITS)


def write_splat_spz(path, splats: Splats, version: int = 3) -> Path:
    """Write atomically (temp file, then rename)."""
    path = Path(path)
    atomic_write_bytes(path, splats_to_spz_bytes(splats, version))
    return path


# --- reading -------------------------------------------------------------------------------

def _unpack_rotations(raw: np.ndarray, version: int) -> np.ndarray:
    """[N, 4] x y z w (file frame)."""
    n = len(raw)
    if version < 3:
        xyz = raw.astype(np.float64) / 127.5 - 1.0
        w = np.sqrt(np.maximum(0.0, 1.0 - (xyz ** 2).sum(axis=1)))
        return np.concatenate([xyz, w[:, None]], axis=1)
    comp = raw.reshape(n, 4).copy().view("<u4").reshape(n).astype(np.uint32)
    largest = (comp >> 30).astype(np.int64)
    q = np.zeros((n, 4))
    for i in (3, 2, 1, 0):
        take = largest != i
        value = SQRT1_2 * (comp & 511).astype(np.float64) / 511.0
        value = np.where((comp >> 9) & 1, -value, value)
        q[:, i] = np.where(take, value, 0.0)
        comp = np.where(take, comp >> 10, comp)
    rest = 1.0 - (q ** 2).sum(axis=1)
    q[np.arange(n), largest] = np.sqrt(np.maximum(0.0, rest))
    return q


def spz_bytes_to_splats(data: bytes, path="SPZ data") -> Splats:
    """Parse SPZ bytes strictly: exact sizes, known version and flags, finite results."""
    if data[:2] != b"\x1f\x8b":
        raise SpzFormatError(f"{path} is not an SPZ file (it is not gzip-compressed); give a .spz file")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        head = inflater.decompress(data, HEADER_BYTES)
    except zlib.error as e:
        raise SpzFormatError(f"{path}: the gzip stream is corrupt ({e}); copy or export the file again") from None
    if len(head) < HEADER_BYTES:
        raise SpzFormatError(f"{path}: the file ends inside the SPZ header; it is truncated: copy or export it again")
    magic, version, n = np.frombuffer(head[:12], "<u4").tolist()
    degree, fractional_bits, flags, reserved = head[12:16]
    if magic != MAGIC:
        raise SpzFormatError(f"{path}: a gzip file but not SPZ (magic {magic:#010x}, expected {MAGIC:#010x})")
    if version not in (2, 3):
        raise SpzFormatError(f"{path}: SPZ version {version} is not supported (2 and 3 are); "
                             "convert it with the tool that wrote it")
    if n > MAX_POINTS:
        raise SpzFormatError(f"{path}: the header claims {n} Gaussians, more than SPZ allows ({MAX_POINTS}); "
                             "the file is corrupt")
    if degree > 3:
        raise SpzFormatError(f"{path}: SH degree {degree} is not supported (0-3 are)")
    if flags & FLAG_EXTENSIONS:
        raise SpzFormatError(f"{path}: the file uses SPZ extensions, which this reader does not support; "
                             "re-save it without them")
    if flags & ~(FLAG_ANTIALIASED | FLAG_EXTENSIONS) or reserved or fractional_bits > 24:
        raise SpzFormatError(f"{path}: malformed SPZ header (flags {flags:#04x}, reserved {reserved}, "
                             f"fractional bits {fractional_bits}); the file is corrupt")
    k = (degree + 1) ** 2 - 1
    expected = n * _point_bytes(version, k)
    # Inflate step by step: memory follows what the stream really holds, not what the header claims.
    pieces, got = [], 0
    chunk = inflater.unconsumed_tail
    try:
        while got <= expected:
            piece = inflater.decompress(chunk, min(_DECOMPRESS_STEP, expected + 1 - got))
            chunk = inflater.unconsumed_tail
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
    except zlib.error as e:
        raise SpzFormatError(f"{path}: the gzip stream is corrupt ({e}); copy or export the file again") from None
    if got > expected:
        raise SpzFormatError(f"{path}: more data than the header's {n} Gaussians; the file is corrupt")
    if got < expected or not inflater.eof:
        raise SpzFormatError(f"{path}: the header promises {n} Gaussians ({expected} bytes) but the stream "
                             f"{'holds ' + str(got) if got < expected else 'does not end'}; the file is truncated "
                             "or corrupt: copy or export it again")
    if inflater.unused_data:
        raise SpzFormatError(f"{path}: {len(inflater.unused_data)} bytes follow the SPZ stream; the file is corrupt")
    body = np.frombuffer(b"".join(pieces), np.uint8)
    del pieces
    sizes = [9 * n, n, 3 * n, 3 * n, rotation_bytes(version) * n, 3 * k * n]
    parts = np.split(body, np.cumsum(sizes)[:-1])
    p = parts[0].reshape(n * 3, 3).astype(np.int32)
    fixed = p[:, 0] | (p[:, 1] << 8) | (p[:, 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    flip = np.array([1.0, -1.0, -1.0])
    means = fixed.reshape(n, 3).astype(np.float64) / (1 << fractional_bits) * flip
    opacities = alpha_to_logit(parts[1] / 255.0)
    sh0 = (parts[2].reshape(n, 3) / 255.0 - 0.5) / COLOR_SCALE
    scales = parts[3].reshape(n, 3) / 16.0 - 10.0
    q = _unpack_rotations(parts[4].reshape(n, rotation_bytes(version)), version)  # x y z w
    quats = np.concatenate([q[:, 3:], q[:, :3] * flip], axis=1)
    shN = (parts[5].reshape(n, k, 3).astype(np.float32) - 128.0) / 128.0 * SH_FLIP_RDF_RUB[:k, None]
    # Every value is decoded from bounded integers: all are finite by construction.
    return Splats(means=means, sh0=sh0, shN=shN, opacities=opacities, scales=scales, quats=quats)


def read_splat_spz(path) -> Splats:
    """Read an SPZ file (v2 or v3) into PLY-frame Splats. Raises SpzFormatError (one line)."""
    return spz_bytes_to_splats(read_regular_file(path, SpzFormatError, "a .spz file"), Path(path))
