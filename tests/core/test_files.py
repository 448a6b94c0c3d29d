"""Atomic writes: whole files only, with the permissions of any other new file."""

from __future__ import annotations

import os
import stat

import pytest

from facesplat.core.files import atomic_write_bytes

def test_atomic_write_replaces_the_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "head.ply"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["head.ply"]

@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_atomic_write_gives_the_permissions_of_a_plain_new_file(tmp_path):
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    atomic = tmp_path / "atomic.bin"
    atomic_write_bytes(atomic, b"x")
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)

def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "cameras.json"
    target.write_bytes(b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # f.write() refuses str after the temp file exists
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["cameras.json"]
