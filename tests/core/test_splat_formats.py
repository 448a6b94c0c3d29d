"""SPZ and compressed PLY on a real head: round trips within the formats' quantization, sizes,
agreement with an independent implementation (gaussforge), and hostile files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from facesplat.core import compressed_ply, spz
from facesplat.core.formats import detect_format, read_splats, write_splats
from facesplat.core.ply import PlyFormatError, read_splat_ply

HEAD = Path(__file__).resolve().parents[1] / "data" / "head_small.ply"
FLIP = np.array([1.0, -1.0, -1.0])  # PLY (RDF) <-> SPZ (RUB)

# Documented tolerances (docs/benchmarks.md): the formats' quantization steps, half a step each.
SPZ_TOL = {"position": 0.5 / 4096 + 1e-6, "colour": 0.5 / (255 * spz.COLOR_SCALE) + 1e-5,
           "alpha": 0.5 / 255 + 1e-6, "log_scale": 0.5 / 16 + 1e-5, "rotation_deg": 0.3, "sh": 0.5 / 128 + 1e-6}
CPLY_TOL = {"alpha": 0.5 / 255 + 1e-6, "rotation_deg": 0.3, "sh": 4 / 255 + 1e-5}


@pytest.fixture(scope="module")
def head():
    return read_splat_ply(HEAD)


def rotation_error_deg(a, b):
    a = spz.normalised_quats(a)
    b = spz.normalised_quats(b)
    return float(np.degrees(2 * np.arccos(np.clip(np.abs((a * b).sum(1)), 0, 1))).max())


def errors(a, b):
    extent = a.means.max(0) - a.means.min(0)
    return {"position": float(np.abs(a.means - b.means).max()), "colour": float(np.abs(a.sh0 - b.sh0).max()),
            "alpha": float(np.abs(spz.sigmoid(a.opacities) - spz.sigmoid(b.opacities)).max()),
            "log_scale": float(np.abs(a.scales - b.scales).max()), "rotation_deg": rotation_error_deg(a.quats, b.quats),
            "sh": float(np.abs(a.shN - b.shN).max()), "extent": extent}


@pytest.mark.parametrize("version", [2, 3])
def test_spz_round_trip_within_quantization(head, tmp_path, version):
    path = spz.write_splat_spz(tmp_path / "head.spz", head, version=version)
    back = spz.read_splat_spz(path)
    assert len(back) == len(head) and back.sh_degree == head.sh_degree
    err = errors(head, back)
    tol = dict(SPZ_TOL, rotation_deg=1.0 if version == 2 else SPZ_TOL["rotation_deg"])
    for key, bound in tol.items():
        assert err[key] <= bound, (key, err[key], bound)
    assert path.stat().st_size <= HEAD.stat().st_size / 5


def test_spz_file_is_rub_as_the_spec_says(head, tmp_path):
    raw = gzip.decompress(spz.splats_to_spz_bytes(head))
    magic, version, n = struct.unpack("<3I", raw[:12])
    assert (magic, version, n) == (0x5053474E, 3, len(head)) and raw[12:16] == bytes([1, 12, 0, 0])
    b = np.frombuffer(raw[16:16 + 9], np.uint8).astype(np.int32)  # the first point's x y z
    fixed = [(b[3 * i] | b[3 * i + 1] << 8 | b[3 * i + 2] << 16) for i in range(3)]
    fixed = [f - (1 << 24) if f & 0x800000 else f for f in fixed]
    np.testing.assert_allclose(np.array(fixed) / 4096, head.means[0] * FLIP, atol=1 / 4096)


def test_compressed_ply_round_trip_within_quantization(head, tmp_path):
    path = compressed_ply.write_compressed_ply(tmp_path / "head.compressed.ply", head)
    back = compressed_ply.read_compressed_ply(path)
    err = errors(head, back)
    # Positions, scales and colours are quantized within each chunk's range: half a step of it.
    chunks = -(-len(head) // 256)
    for key, values, bits in (("position", head.means, (11, 10, 11)), ("log_scale", head.scales, (11, 10, 11)),
                              ("colour", head.sh0 * 0.28209479 + 0.5, (8, 8, 8))):
        padded = np.concatenate([values, np.repeat(values[-1:], chunks * 256 - len(values), 0)]).reshape(chunks, 256, 3)
        step = ((padded.max(1) - padded.min(1)) / (2.0 ** np.array(bits) - 1)).max()
        bound = 0.5 * step * (1 / 0.28209479 if key == "colour" else 1) + 1e-5
        assert err[key] <= bound, (key, err[key], bound)
    for key, bound in CPLY_TOL.items():
        assert err[key] <= bound, (key, err[key], bound)
    assert path.stat().st_size <= HEAD.stat().st_size / 3


def test_round_trip_through_every_format_and_back(head, tmp_path):
    write_splats(tmp_path / "a.spz", head)
    write_splats(tmp_path / "b.compressed.ply", read_splats(tmp_path / "a.spz"))
    write_splats(tmp_path / "c.ply", read_splats(tmp_path / "b.compressed.ply"))
    assert [detect_format(tmp_path / n) for n in ("a.spz", "b.compressed.ply", "c.ply")] == \
        ["spz", "compressed.ply", "ply"]
    err = errors(head, read_splat_ply(tmp_path / "c.ply"))
    assert err["position"] < 1e-3 and err["rotation_deg"] < 0.6 and err["alpha"] < 2 / 255


def _gf_arrays(result):
    data = result["data"]
    f = lambda key, width: np.frombuffer(data[key], np.float32).reshape(-1, width)  # noqa: E731
    return f("positions", 3), f("rotations", 4), f("colors", 3), f("alphas", 1)[:, 0], f("scales", 3), f("sh", 9)


def _gaussforge():
    return pytest.importorskip("gaussforge", reason="gaussforge (requirements.txt) cross-checks the formats")


def test_gaussforge_decodes_our_files_as_we_do(head, tmp_path):
    gf = _gaussforge().GaussForge()
    for name, fmt in (("h.spz", "spz"), ("h.compressed.ply", "compressed.ply")):
        write_splats(tmp_path / name, head)
        ours = read_splats(tmp_path / name)
        result = gf.read((tmp_path / name).read_bytes(), fmt)
        assert "error" not in result, result
        pos, rot, col, alpha, scale, sh = _gf_arrays(result)
        sh = sh.reshape(-1, 3, 3)
        if fmt == "spz":  # gaussforge hands SPZ's RUB values over unconverted
            pos, rot, sh = pos * FLIP, np.concatenate([rot[:, :1], rot[:, 1:] * FLIP], 1), sh * spz.SH_FLIP_RDF_RUB[:3, None]
        np.testing.assert_allclose(pos, ours.means, atol=1e-6)
        assert rotation_error_deg(rot, ours.quats) < 0.01
        np.testing.assert_allclose(col, ours.sh0, atol=1e-5)
        np.testing.assert_allclose(scale, ours.scales, atol=1e-5)
        np.testing.assert_allclose(spz.sigmoid(alpha), spz.sigmoid(ours.opacities), atol=1e-5)
        np.testing.assert_allclose(sh, ours.shN, atol=1e-3)


def test_we_read_gaussforge_files(head, tmp_path):
    gf = _gaussforge().GaussForge()
    ply = HEAD.read_bytes()
    for name, fmt in (("g.spz", "spz"), ("g.compressed.ply", "compressed.ply")):
        result = gf.convert(ply, "ply", fmt)
        assert "error" not in result, result
        (tmp_path / name).write_bytes(result["data"])
        back = read_splats(tmp_path / name)
        if fmt == "spz":  # gaussforge wrote the PLY's axes without converting them to RUB
            back.means *= FLIP
            back.quats[:, 1:] *= FLIP
        err = errors(head, back)
        assert err["position"] < 2e-4 and err["rotation_deg"] < 0.3 and err["alpha"] <= 0.5 / 255 + 1e-6
        assert err["log_scale"] < 0.04 and err["colour"] < 0.02


# --- hostile files ---------------------------------------------------------------------------

def _spz_raw(head):
    return bytearray(gzip.decompress(spz.splats_to_spz_bytes(head)))


@pytest.mark.parametrize("damage, message", [
    (lambda raw: gzip.compress(bytes(raw))[:-40], "corrupt|truncated|does not end"),
    (lambda raw: gzip.compress(bytes(raw[:-5])), "truncated"),
    (lambda raw: gzip.compress(bytes(raw) + b"\0" * 7), "more data"),
    (lambda raw: gzip.compress(b"XXXX" + bytes(raw[4:])), "not SPZ"),
    (lambda raw: gzip.compress(bytes(raw[:4]) + struct.pack("<I", 9) + bytes(raw[8:])), "version 9"),
    (lambda raw: gzip.compress(bytes(raw[:8]) + struct.pack("<I", 0xFFFFFFFF) + bytes(raw[12:])), "claims"),
    (lambda raw: gzip.compress(bytes(raw[:8]) + struct.pack("<I", 9_000_000) + bytes(raw[12:])), "truncated"),
    (lambda raw: gzip.compress(bytes(raw[:12]) + bytes([7]) + bytes(raw[13:])), "SH degree 7"),
    (lambda raw: gzip.compress(bytes(raw[:14]) + bytes([0x2]) + bytes(raw[15:])), "extensions"),
    (lambda raw: gzip.compress(bytes(raw[:15]) + bytes([1]) + bytes(raw[16:])), "malformed"),
    (lambda raw: b"not gzip at all", "not gzip"),
    (lambda raw: gzip.compress(bytes(raw[:10])), "header"),
])
def test_hostile_spz_is_refused_in_one_line(head, tmp_path, damage, message):
    path = tmp_path / "bad.spz"
    path.write_bytes(damage(_spz_raw(head)))
    with pytest.raises(PlyFormatError, match=message) as info:
        spz.read_splat_spz(path)
    assert "\n" not in str(info.value)


def _cply(head):
    data = compressed_ply.splats_to_compressed_ply_bytes(head)
    end = data.index(b"end_header\n") + len(b"end_header\n")
    return data[:end], data[end:]


@pytest.mark.parametrize("damage, message", [
    (lambda h, b: h + b[:-1], "truncated"),
    (lambda h, b: h + b + b"\0", "corrupt"),
    (lambda h, b: h.replace(b"element vertex 1049", b"element vertex 999999999999"), "chunks for"),
    (lambda h, b: h.replace(b"element chunk 5", b"element chunk 9999999999"), "chunks for"),
    (lambda h, b: h.replace(b"element vertex 1049", b"element vertex 1100")
     .replace(b"element sh 1049", b"element sh 1100") + b, "truncated"),
    (lambda h, b: h.replace(b"uint packed_rotation", b"float packed_rotation") + b, "vertex element"),
    (lambda h, b: h.replace(b"property float min_r\n", b"") + b, "chunk element"),
    (lambda h, b: h.replace(b"element sh 1049", b"element sh 1048") + b, "sh element"),
    (lambda h, b: h + np.float32(np.nan).tobytes() + b[4:], "non-finite"),
    (lambda h, b: h[:len(h) // 2], "truncated"),
])
def test_hostile_compressed_ply_is_refused_in_one_line(head, tmp_path, damage, message):
    path = tmp_path / "bad.compressed.ply"
    path.write_bytes(damage(*_cply(head)))
    with pytest.raises(PlyFormatError, match=message) as info:
        compressed_ply.read_compressed_ply(path)
    assert "\n" not in str(info.value)
