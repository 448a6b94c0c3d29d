"""`facesplat convert` through the CLI, and the provenance sidecar built from a real report."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from facesplat.config import Config
from facesplat.core.ply import read_splat_ply
from facesplat.provenance import sidecar_path, source_record, write_sidecar
from helpers import REPO, run_cli

DATA = REPO / "tests" / "data"
HEAD = DATA / "head_small.ply"


def test_convert_through_every_format(tmp_path):
    for name in ("h.spz", "h.compressed.ply", "back.ply"):
        source = tmp_path / ("h.spz" if name == "h.compressed.ply" else "h.compressed.ply") if name != "h.spz" else HEAD
        result = run_cli("convert", source, tmp_path / name, timeout=120)
        assert result.returncode == 0, result.stderr
        assert f"wrote {tmp_path / name}" in result.stderr
    back = read_splat_ply(tmp_path / "back.ply")
    assert len(back) == len(read_splat_ply(HEAD)) and back.sh_degree == 1


@pytest.mark.parametrize("content, out, message", [
    (b"\x1f\x8b" + b"\0" * 50, "o.ply", "gzip|SPZ"),
    (HEAD.read_bytes()[:5000], "o.spz", "truncated"),
    (b"hello world", "o.spz", "not a splat file"),
    (None, "o.txt", "unknown output format"),
])
def test_convert_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, content, out, message):
    source = tmp_path / "in.spz"
    if content is None:
        source = HEAD
    else:
        source.write_bytes(content)
    result = run_cli("convert", source, tmp_path / out, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("facesplat: error:"), result.stderr
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not (tmp_path / out).exists() and not list(tmp_path.glob(".*.tmp"))


def test_sidecar_from_a_real_report_validates_against_the_schema(tmp_path):
    output = tmp_path / "head.ply"
    output.write_bytes(HEAD.read_bytes())
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0" * 1000)
    report = json.loads((DATA / "head_small_report.json").read_text())
    report["source"] = source_record(video, is_images=False)
    path = write_sidecar(output, report, Config(), "cpu")
    assert path == tmp_path / "head.json" == sidecar_path(output)
    sidecar = json.loads(path.read_text())
    schema = json.loads((REPO / "docs" / "provenance.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(sidecar, schema)
    assert sidecar["source"] == {"kind": "video", "name": "clip.mp4", "size": 1000, "sha256":
                                 "541b3e9daa09b20bf85fa273e5cbd3e80185aa4ec298e765db87742b70138a53",
                                 "capture_date": None}  # 1000 zero bytes: no container, no date
    assert sidecar["file"]["sh_degree"] == 1 and sidecar["file"]["size"] == HEAD.stat().st_size
    assert sidecar["gaussians_kept"] == 1049 == len(read_splat_ply(output))
    assert sidecar["frames_registered"] == 20 and sidecar["parameters"]["train"]["sh_degree"] == 1
    assert sidecar["coordinate_frame"]["up"] == "+Z" and sidecar["software"]["numpy"]
    bad = dict(sidecar, file=dict(sidecar["file"], sha256="nothex"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_capture_date_comes_from_the_mp4_movie_header(tmp_path):
    import datetime
    import struct

    import numpy as np

    from facesplat.provenance import capture_date
    from helpers import write_video

    video = write_video(tmp_path / "clip.mp4", [np.full((64, 64, 3), i * 20, np.uint8) for i in range(5)])
    data = bytearray(video.read_bytes())
    mvhd = data.find(b"mvhd")
    assert mvhd > 0 and data[mvhd + 4] == 0  # version 0: 32-bit seconds since 1904
    assert capture_date(video) is None  # OpenCV's muxer writes 0: no date
    taken = datetime.datetime(2026, 5, 17, 14, 3, 9, tzinfo=datetime.timezone.utc)
    seconds = int((taken - datetime.datetime(1904, 1, 1, tzinfo=datetime.timezone.utc)).total_seconds())
    data[mvhd + 8:mvhd + 12] = struct.pack(">I", seconds)
    video.write_bytes(bytes(data))
    assert capture_date(video) == "2026-05-17T14:03:09+00:00"
    assert source_record(video, is_images=False)["capture_date"] == "2026-05-17T14:03:09+00:00"
    # Damaged containers give no date and no error.
    for damaged in (bytes(data[:mvhd - 2]), b"\0\0\0\x01moov" + b"\xff" * 8, b"not a video"):
        (tmp_path / "bad.mp4").write_bytes(damaged)
        assert capture_date(tmp_path / "bad.mp4") is None
