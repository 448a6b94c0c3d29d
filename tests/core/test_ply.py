"""core.ply: Inria-layout round trips, cross-checked with plyfile, and every way a file can be bad."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "backend"))

from facesplat.core import ply  # noqa: E402
from facesplat.core.ply import (PlyFormatError, Splats, property_names, read_splat_ply,  # noqa: E402
                                rgb_to_sh0, sh0_to_rgb, splats_to_ply_bytes, write_splat_ply)


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
    """plyfile-written file: properties in another order, normals, extra properties of other types
    (skipped), and a trailing face element with a list property."""
    plyfile = pytest.importorskip("plyfile")
    n = 20
    rng = np.random.default_rng(1)
    names = property_names(1)[::-1] + ["extra"]
    dtype = [(p, "u1" if p == "extra" else "i4" if p == "nx" else "f4") for p in names]
    arr = np.zeros(n, dtype=dtype)
    for p in names:
        arr[p] = rng.normal(size=n) if arr.dtype[p].kind == "f" else rng.integers(0, 200, n)
    faces = np.array([([0, 1, 2],), ([3, 4, 5, 6],)], dtype=[("vertex_indices", "O")])
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex"),
                     plyfile.PlyElement.describe(faces, "face")]).write(str(tmp_path / "o.ply"))
    s = read_splat_ply(tmp_path / "o.ply")
    np.testing.assert_array_equal(s.means[:, 0], arr["x"])
    np.testing.assert_array_equal(s.shN[:, 2, 2], arr["f_rest_8"])
    np.testing.assert_array_equal(s.quats[:, 3], arr["rot_3"])
    np.testing.assert_array_equal(s.opacities, arr["opacity"])


def test_reads_the_real_head_and_writes_it_back_byte_for_byte():
    path = Path(__file__).resolve().parents[1] / "data" / "head_small.ply"
    splats = read_splat_ply(path)
    assert len(splats) == 1049 and splats.sh_degree == 1
    assert splats_to_ply_bytes(splats) == path.read_bytes()


def test_dc_colour():
    rgb = np.array([[0.0, 0.5, 1.0]])
    np.testing.assert_allclose(sh0_to_rgb(rgb_to_sh0(rgb)), rgb, atol=1e-6)
    assert sh0_to_rgb(np.array([[100.0, -100.0, 0.0]])).tolist() == [[1.0, 0.0, 0.5]]


def valid_file(n=4, degree=0, seed=0) -> bytes:
    return splats_to_ply_bytes(random_splats(n, degree, seed))


def with_value(name, row, value, n=4) -> bytes:
    """A valid degree-0 file with one property of one row replaced."""
    data = bytearray(valid_file(n))
    start = data.index(b"end_header\n") + 11
    column = property_names(0).index(name)
    at = start + 4 * (row * 17 + column)
    data[at:at + 4] = np.float32(value).tobytes()
    return bytes(data)


def edit_header(old: bytes, new: bytes, data: bytes = None) -> bytes:
    data = valid_file() if data is None else data
    assert old in data
    return data.replace(old, new, 1)


ROW = 17 * 4  # bytes per degree-0 row
BAD_FILES = {
    "not_ply": (b"hello world\n" * 10, "not a PLY"),
    "no_end_header": (b"ply\nformat binary_little_endian 1.0\nelement vertex 3\n" + b"comment x\n" * 8000,
                      "no end_header"),
    "header_cut_mid_word": (valid_file()[:valid_file().index(b"float y") + 4], "header is truncated"),
    "header_cut_at_line_end": (valid_file()[:valid_file().index(b"end_header")], "header is truncated"),
    "end_header_without_newline": (valid_file(0)[:-1], "header is truncated"),
    "ascii": (header(property_names(0), 1, fmt="ascii") + b"0 " * 17, "not supported"),
    "big_endian": (header(property_names(0), 1, fmt="binary_big_endian") + bytes(ROW), "not supported"),
    "format_version": (edit_header(b" 1.0", b" 2.0"), "malformed"),
    "two_formats": (edit_header(b"element", b"format binary_little_endian 1.0\nelement"), "second or late format"),
    "missing_props": (header(["x", "y", "z", "opacity"], 2) + bytes(32), "missing properties"),
    "absurd_count": (header(property_names(0), 10 ** 15) + bytes(17 * 4 * 3), "truncated"),
    "count_of_5000_digits": (header(property_names(0), 1).replace(b"vertex 1", b"vertex " + b"9" * 5000),
                             "malformed element"),
    "truncated": (header(property_names(0), 100) + bytes(17 * 4 * 99 + 3), "truncated"),
    "list_property": (header(property_names(0), 1) .replace(b"end_header", b"property list uchar int idx\nend_header"),
                      "unsupported vertex property"),
    "bad_count": (header(property_names(0), 1).replace(b"vertex 1", b"vertex -1"), "malformed element"),
    "duplicate_property": (header(property_names(0) + ["x"], 1) + bytes(18 * 4), "declared twice"),
    "bad_rest_name": (header(property_names(0) + ["f_rest_x"], 1) + bytes(18 * 4), "malformed SH"),
    "odd_rest_count": (header(property_names(0) + ["f_rest_0", "f_rest_1"], 1) + bytes(19 * 4), "f_rest"),
    "no_vertex": (b"ply\nformat binary_little_endian 1.0\nelement face 0\nend_header\n", "no vertex element"),
    "empty": (b"", "not a PLY"),
    # The header must describe the data exactly.
    "second_vertex_element": (edit_header(b"end_header", b"element vertex 3\nend_header"), "2 'element vertex'"),
    "uchar_opacity": (header(property_names(0), 2).replace(b"float opacity", b"uchar opacity") + bytes(2 * (ROW - 3)),
                      "not float32: uchar opacity"),
    "uchar_opacity_over_float_data": (edit_header(b"float opacity", b"uchar opacity"), "not float32"),
    "double_positions": (header(property_names(0), 1, kind="double") + bytes(17 * 8), "not float32: double x"),
    "blank_line_after_end_header": (edit_header(b"end_header\n", b"end_header\n\n"), "1 more bytes than"),
    "one_byte_appended": (valid_file() + b"\0", "1 more bytes than"),
    "one_row_appended": (valid_file() + valid_file(1)[-ROW:], f"{ROW} more bytes than"),
    "trailing_element_missing": (edit_header(b"end_header", b"element extra 2\nproperty int v\nend_header")
                                 + bytes(4), "truncated"),
    "trailing_element_too_long": (edit_header(b"end_header", b"element extra 2\nproperty int v\nend_header")
                                  + bytes(12), "4 more bytes than"),
    "trailing_list_element_missing": (edit_header(b"end_header", b"element face 2\nproperty list uchar int i\n"
                                                  b"end_header") + bytes(1), "truncated"),
    "blank_header_line": (edit_header(b"element", b"\nelement"), "is blank"),
    "property_before_element": (edit_header(b"element", b"property float q\nelement"), "before any element"),
    "unknown_header_line": (edit_header(b"element", b"elemenu face 0\nelement"), "not a PLY header line"),
    "unknown_type": (edit_header(b"float scale_0", b"floa scale_0"), "unsupported vertex property 'property floa"),
    "element_before_vertex": (edit_header(b"element vertex", b"element face 1\nproperty uchar a\nelement vertex"),
                              "before 'vertex'"),
    # Values that cannot render.
    "nan_x": (with_value("x", 2, np.nan), "1 of 4 Gaussians have non-finite values (x)"),
    "inf_scale": (with_value("scale_1", 0, np.inf), "1 of 4 Gaussians have non-finite values (scale_1)"),
    "nan_sh": (with_value("f_dc_2", 3, -np.inf), "non-finite values (f_dc_2)"),
    "zero_rotation": (valid_file(1)[:-16] + bytes(16),
                      "1 of 1 Gaussians have an all-zero rotation"),
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


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    os = pytest.importorskip("os")
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    os.mkfifo(tmp_path / "pipe.ply")
    with pytest.raises(PlyFormatError, match="not a regular file"):
        read_splat_ply(tmp_path / "pipe.ply")


def test_nan_count_names_rows_and_properties(tmp_path):
    data = bytearray(valid_file(4308, degree=1))
    start = data.index(b"end_header\n") + 11
    names = property_names(1)
    for row, name in [(0, "x"), (17, "scale_1"), (4307, "x"), (4307, "scale_1")] + [(99, "nx")]:
        at = start + 4 * (row * len(names) + names.index(name))
        data[at:at + 4] = np.float32(np.nan).tobytes()
    (tmp_path / "nan.ply").write_bytes(bytes(data))
    with pytest.raises(PlyFormatError, match=r"3 of 4308 Gaussians have non-finite values \(x, scale_1\); "
                                             r"the file is corrupt"):
        read_splat_ply(tmp_path / "nan.ply")  # the NaN normal is not part of the splat, so not counted


@pytest.mark.parametrize("trailing, extra", [
    (b"element extra 2\nproperty int v\nproperty uchar w\n", bytes(10)),
    (b"element face 2\nproperty list uchar int vertex_indices\n", b"\x03" + bytes(12) + b"\x01" + bytes(4)),
    (b"element face 0\nproperty list uchar int vertex_indices\n", b""),
])
def test_trailing_elements_of_the_right_size_are_accepted(tmp_path, trailing, extra):
    splats = random_splats(5, 0)
    data = splats_to_ply_bytes(splats).replace(b"end_header", trailing + b"end_header", 1) + extra
    (tmp_path / "t.ply").write_bytes(data)
    assert_same(read_splat_ply(tmp_path / "t.ply"), splats)


def test_crlf_header_and_comments_are_accepted(tmp_path):
    splats = random_splats(5, 2)
    data = splats_to_ply_bytes(splats)
    end = data.index(b"end_header\n") + 11
    head = data[:end].replace(b"element", b"comment made by hand\nobj_info x\nelement").replace(b"\n", b"\r\n")
    (tmp_path / "crlf.ply").write_bytes(head + data[end:])
    assert_same(read_splat_ply(tmp_path / "crlf.ply"), splats)


def test_chunked_read_is_the_same_and_names_the_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(ply, "READ_CHUNK_BYTES", 1000)  # a few rows per chunk
    splats = random_splats(301, 3)
    path = write_splat_ply(tmp_path / "s.ply", splats)
    assert_same(read_splat_ply(path), splats)
    splats.scales[250, 2] = np.inf
    write_splat_ply(path, splats)
    with pytest.raises(PlyFormatError, match=r"1 of Gaussians \d+-\d+ \(of 301\) have non-finite values \(scale_2\)"):
        read_splat_ply(path)


def test_huge_claimed_count_allocates_nothing(tmp_path):
    """2^28 Gaussians promised: on a small file it fails on the size check; on a sparse file of the
    promised size (18 GB of holes) it fails on the first chunk read, zero rotations, without
    allocating more than one chunk."""
    import time
    import tracemalloc

    n = 2 ** 28
    head = header(property_names(0), n)
    (tmp_path / "small.ply").write_bytes(head + bytes(10 * ROW))
    with pytest.raises(PlyFormatError, match="truncated"):
        read_splat_ply(tmp_path / "small.ply")
    sparse = tmp_path / "sparse.ply"
    with open(sparse, "wb") as f:
        f.write(head)
        f.truncate(len(head) + n * ROW)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(PlyFormatError, match=f"Gaussians 1-\\d+ \\(of {n}\\) have an all-zero rotation"):
            read_splat_ply(sparse)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * ply.READ_CHUNK_BYTES, f"peak {peak / 2 ** 20:.0f} MiB"
    assert time.perf_counter() - start < 10


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
