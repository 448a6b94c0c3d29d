"""Read and write 3D Gaussian splat PLY files in the Inria layout (SH degree 0-3).

Layout (binary little-endian, one `vertex` element, float32 properties, this order):
    x y z nx ny nz f_dc_0..2 f_rest_0..f_rest_{3K-1} opacity scale_0..2 rot_0..3
`opacity` is a logit, `scale_*` are log scales, `rot_*` is a quaternion w,x,y,z (not necessarily
normalised), and f_rest is channel-major: all K coefficients of R, then G, then B.
Values are stored raw, so reading and writing a file reproduces it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import atomic_write_bytes

# A header larger than this is not a splat file (guards against reading a huge text file).
MAX_HEADER_BYTES = 64 * 1024
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
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


def _parse_header(f, path):
    first = f.readline(16)
    if first.rstrip(b"\r\n") != b"ply":
        raise PlyFormatError(f"{path} is not a PLY file (it does not start with 'ply')")
    fmt, vertex_count, props, elements_before = None, None, [], 0
    current = None
    size = len(first)
    while True:
        line = f.readline(1024)
        size += len(line)
        if not line or size > MAX_HEADER_BYTES:
            raise PlyFormatError(f"{path}: the PLY header has no end_header; the file is truncated or not a PLY")
        words = line.decode("ascii", "replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format":
            fmt = words[1] if len(words) > 1 else None
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise PlyFormatError(f"{path}: malformed element line {line.strip()!r}")
            current = words[1]
            if current == "vertex":
                vertex_count = int(words[2])
            elif vertex_count is None and int(words[2]) > 0:
                elements_before += 1
        elif words[0] == "property":
            if current != "vertex":
                continue
            if len(words) != 3 or words[1] == "list" or words[1] not in _PLY_TYPES:
                raise PlyFormatError(f"{path}: unsupported vertex property {line.decode('ascii', 'replace').strip()!r}")
            props.append((words[2], _PLY_TYPES[words[1]]))
    return fmt, vertex_count, props, elements_before, f.tell()


def read_splat_ply(path) -> Splats:
    """Read a 3DGS PLY. Raises PlyFormatError (one line) for anything it cannot trust."""
    path = Path(path)
    try:
        file_size = path.stat().st_size
        f = open(path, "rb")
    except OSError as e:
        raise PlyFormatError(f"cannot open {path}: {e.strerror}") from None
    with f:
        fmt, n, props, elements_before, data_start = _parse_header(f, path)
        if fmt != "binary_little_endian":
            raise PlyFormatError(f"{path}: format {fmt!r} is not supported; 3DGS files are binary_little_endian")
        if n is None:
            raise PlyFormatError(f"{path}: no vertex element; this is not a Gaussian splat file")
        if elements_before:
            raise PlyFormatError(f"{path}: elements before 'vertex' are not supported in a splat file")
        names = [p[0] for p in props]
        duplicates = sorted({nm for nm in names if names.count(nm) > 1})
        if duplicates:
            raise PlyFormatError(f"{path}: vertex properties declared twice: {', '.join(duplicates)}")
        missing = [r for r in REQUIRED if r not in names]
        if missing:
            raise PlyFormatError(f"{path}: missing properties {', '.join(missing)}; this is not a 3DGS splat file")
        dtype = np.dtype([(name, "<" + t) for name, t in props])
        expected = n * dtype.itemsize
        if file_size - data_start < expected:
            raise PlyFormatError(
                f"{path}: header promises {n} Gaussians ({expected} bytes) but only "
                f"{file_size - data_start} bytes follow; the file is truncated or corrupt")
        data = np.fromfile(f, dtype=dtype, count=n)
    rest = [nm for nm in names if nm.startswith("f_rest_")]
    if not all(nm[7:].isdigit() for nm in rest):
        raise PlyFormatError(f"{path}: malformed SH property names {', '.join(nm for nm in rest if not nm[7:].isdigit())}")
    rest.sort(key=lambda s: int(s[7:]))
    if len(rest) not in (0, 9, 24, 45) or rest != [f"f_rest_{i}" for i in range(len(rest))]:
        raise PlyFormatError(f"{path}: {len(rest)} f_rest properties; expected 0, 9, 24 or 45 (SH degree 0-3)")
    k = len(rest) // 3

    if all(t == "f4" for _, t in props):
        # The usual all-float32 file: one [N, P] table gathered row by row (much faster than
        # stacking strided fields).
        table = data.view("<f4").reshape(n, len(props))
        index = {name: i for i, name in enumerate(names)}

        def cols(*keys):
            return table[:, [index[key] for key in keys]] if keys else np.zeros((n, 0), np.float32)
    else:
        def cols(*keys):
            return np.stack([data[key] for key in keys], axis=1).astype(np.float32) if keys else np.zeros((n, 0), np.float32)

    shN = cols(*rest).reshape(n, 3, k).transpose(0, 2, 1) if k else np.zeros((n, 0, 3), np.float32)
    return Splats(
        means=cols("x", "y", "z"),
        sh0=cols("f_dc_0", "f_dc_1", "f_dc_2"),
        shN=shN,
        opacities=data["opacity"].astype(np.float32),
        scales=cols("scale_0", "scale_1", "scale_2"),
        quats=cols("rot_0", "rot_1", "rot_2", "rot_3"),
    )


SH_C0 = 0.28209479177387814


def sh0_to_rgb(sh0: np.ndarray) -> np.ndarray:
    """Display colour of the DC term, clipped to [0, 1]."""
    return np.clip(0.5 + SH_C0 * sh0, 0.0, 1.0)


def rgb_to_sh0(rgb: np.ndarray) -> np.ndarray:
    return (np.asarray(rgb, np.float32) - 0.5) / SH_C0
