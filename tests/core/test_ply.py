"""core.ply: Inria-layout round trips, cross-checked with plyfile, and every way a file can be bad."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "backend"))

from facesplat.core.ply import (PlyFormatError, Splats, property_names, read_splat_ply,  # noqa: E402
                                rgb_to_sh0, sh0_to_rgb, write_splat_ply)


def random_splats(n: int, degree: int, seed: int = 0) -> Splats:
    rng = np.random.default_rng(seed)
    k = (degree + 1) ** 2 - 1
    return Splats(means=rng.normal(size=(n, 3)), sh0=rng.normal(size=(n, 3)), shN=rng.normal(size=(n, k, 3)),
                  opacities=rng.normal(size=n), scales=rng.normal(-4, 1, size=(n, 3)),
                  quats=rng.normal(size=(n, 4)))


def header(names, n, fmt="binary_little_endian", kind="float") -> bytes:
    lines = ["ply", f"format {fmt} 1.0", f"element vertex {n}", *(f"property {kind} {p}" for p in names), "end_header"]
    return ("\n".join(lines) + "\n").encode()


def assert_same(a: Splats, b: Splats):
    for name in ("means", "sh0", "shN", "opacities", "scales", "quats"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_is_exact(tmp_path, degree):
    splats = random_splats(257, degree)
    path = write_splat_ply(tmp_path / "s.ply", splats)
    back = read_splat_ply(path)
    assert back.sh_degree == degree
    assert_same(splats, back)
    assert not list(tmp_path.glob(".*.tmp")), "atomic write left a temp file"


def test_layout_matches_plyfile(tmp_path):
    """An independent reader sees the Inria property order and channel-major f_rest."""
    plyfile = pytest.importorskip("plyfile")
    splats = random_splats(50, 3)
    path = write_splat_ply(tmp_path / "s.ply", splats)
    vertex = plyfile.PlyData.read(str(path))["vertex"]
    assert [p.name for p in vertex.properties] == property_names(3)
    data = vertex.data
    np.testing.assert_array_equal(data["f_rest_0"], splats.shN[:, 0, 0])   # R, coefficient 0
    np.testing.assert_array_equal(data["f_rest_1"], splats.shN[:, 1, 0])   # R, coefficient 1
    np.testing.assert_array_equal(data["f_rest_15"], splats.shN[:, 0, 1])  # G, coefficient 0
    np.testing.assert_array_equal(data["rot_0"], splats.quats[:, 0])       # w first
    for p in ("nx", "ny", "nz"):
        assert not data[p].any()


def test_reads_files_written_by_others(tmp_path):
    """plyfile-written file with normals, an extra property and double positions."""
    plyfile = pytest.importorskip("plyfile")
    n = 20
    rng = np.random.default_rng(1)
    names = property_names(1) + ["extra"]
    dtype = [(p, "f8" if p in "xyz" else "f4") for p in names]
    arr = np.zeros(n, dtype=dtype)
    for p in names:
        arr[p] = rng.normal(size=n)
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "o.ply"))
    s = read_splat_ply(tmp_path / "o.ply")
    np.testing.assert_array_equal(s.means[:, 0], arr["x"].astype(np.float32))
    np.testing.assert_array_equal(s.shN[:, 2, 2], arr["f_rest_8"])
    np.testing.assert_array_equal(s.quats[:, 3], arr["rot_3"])


def test_dc_colour():
    rgb = np.array([[0.0, 0.5, 1.0]])
    np.testing.assert_allclose(sh0_to_rgb(rgb_to_sh0(rgb)), rgb, atol=1e-6)
    assert sh0_to_rgb(np.array([[100.0, -100.0, 0.0]])).tolist() == [[1.0, 0.0, 0.5]]


BAD_FILES = {
    "not_ply": (b"hello world\n" * 10, "not a PLY"),
    "no_end_header": (b"ply\nformat binary_little_endian 1.0\nelement vertex 3\n" + b"comment x\n" * 8000,
                      "no end_header"),
    "ascii": (header(property_names(0), 1, fmt="ascii") + b"0 " * 17, "not supported"),
    "missing_props": (header(["x", "y", "z", "opacity"], 2) + bytes(32), "missing properties"),
    "absurd_count": (header(property_names(0), 10 ** 15) + bytes(17 * 4 * 3), "truncated"),
    "truncated": (header(property_names(0), 100) + bytes(17 * 4 * 99 + 3), "truncated"),
    "list_property": (header(property_names(0), 1) .replace(b"end_header", b"property list uchar int idx\nend_header"),
                      "unsupported vertex property"),
    "bad_count": (header(property_names(0), 1).replace(b"vertex 1", b"vertex -1"), "malformed element"),
    "duplicate_property": (header(property_names(0) + ["x"], 1) + bytes(18 * 4), "declared twice"),
    "bad_rest_name": (header(property_names(0) + ["f_rest_x"], 1) + bytes(18 * 4), "malformed SH"),
    "odd_rest_count": (header(property_names(0) + ["f_rest_0", "f_rest_1"], 1) + bytes(19 * 4), "f_rest"),
    "no_vertex": (b"ply\nformat binary_little_endian 1.0\nelement face 0\nend_header\n", "no vertex element"),
    "empty": (b"", "not a PLY"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_raise_one_line_format_error(tmp_path, case):
    data, expected = BAD_FILES[case]
    path = tmp_path / f"{case}.ply"
    path.write_bytes(data)
    with pytest.raises(PlyFormatError) as info:
        read_splat_ply(path)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message and str(path) in message


def test_missing_file(tmp_path):
    with pytest.raises(PlyFormatError, match="cannot open"):
        read_splat_ply(tmp_path / "nope.ply")


@pytest.mark.parametrize("degree", [0, 3])
def test_attribute_columns_round_trip(degree):
    from facesplat.core.ply import attribute_columns, splats_from_columns

    splats = random_splats(40, degree)
    columns = attribute_columns(splats)
    assert list(columns) == property_names(degree)[6:]
    assert all(c.dtype == np.float32 and c.flags.c_contiguous and c.shape == (40,) for c in columns.values())
    assert_same(splats_from_columns(splats.means, columns), splats)
    del columns["opacity"]
    with pytest.raises(ValueError, match="missing 3DGS attributes: opacity"):
        splats_from_columns(splats.means, columns)


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_empty_splats_round_trip(tmp_path, degree):
    """Isolation can keep nothing: an empty selection and its file must still work."""
    splats = random_splats(10, degree).subset(np.zeros(10, bool))
    assert len(splats) == 0 and splats.sh_degree == degree
    back = read_splat_ply(write_splat_ply(tmp_path / "empty.ply", splats))
    assert len(back) == 0 and back.sh_degree == degree
